#!/usr/bin/env bash
# Everything the project trains on GPUs, in one go, on a machine with 1-4 CUDA GPUs (jobs are
# spread over GPU index mod the GPU count; with 4 GPUs GPU 3 stays free for the speed suite,
# scripts/speed.sh, run beside it):
#   GPU 0: ddpm-unet `small` (the shipped CPU default) trained further from the shipped weights,
#          two variants side by side (batch 256 and batch 128, lr 2e-4), each with a cosine lr
#          decay to 0 over the wall-time budget
#   GPU 1: ddpm-unet `seed`, our default recipe (v-prediction, batch 128, lr 2e-4, cosine decay)
#   GPU 2: ddpm-unet `seed`, the reference recipe (same wall time)
# then exports each small variant (fp16 safetensors, guidance 4 as its sampling default) and
# samples + judges every model with the shipped judge.
# Earlier sessions' versions of this script (TRAINING.md names the commits) trained the judge, the
# shipped `small` model's first two stages, and the cosine/linear and sampler comparisons.
# Usage: scripts/gpu_campaign.sh OUT_DIR [TRAIN_MINUTES]
# Writes OUT_DIR/DONE when every run is judged and OUT_DIR.bundle/ holds what should come back
# (scripts/bundle_results.sh); logs are OUT_DIR/*.log.
set -uo pipefail
OUT=${1:?usage: scripts/gpu_campaign.sh OUT_DIR [TRAIN_MINUTES]}
MIN=${2:-15}
SHIPPED_SMALL=${SHIPPED_SMALL:-plugins/bench_builtins/weights/ddpm-unet-small-synthetic.safetensors}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
NGPU=$(python3 -c 'import torch; print(max(torch.cuda.device_count(), 1))')
gpu() { echo $(( $1 % NGPU )); }
bench() { python3 -m bench "$@"; }
echo "$(date +%T) gpus: $NGPU; trainings ${MIN} min"

# Renders (a process per core), once: training set, FID reference.
bench data cache --max-objects 3 > "$OUT/render.log" 2>&1
bench data cache --split heldout --scenes 667 >> "$OUT/render.log" 2>&1
echo "$(date +%T) renders cached"

# Every training stops at its wall-time budget; the cosine lr decay follows that budget.
LONG=(--max-minutes "$MIN" --max-steps 100000000 --epochs 1000000)
TRAIN=()
for variant in b256:256 b128:128; do
  name=${variant%%:*}; batch=${variant##*:}
  CUDA_VISIBLE_DEVICES=$(gpu 0) bench train --preset small --scheduler cosine --ema 0.9995 --compile \
      --init-from "$SHIPPED_SMALL" --batch-size "$batch" --lr 2e-4 --lr-schedule cosine "${LONG[@]}" \
      --checkpoint-every 5000 --out "$OUT/small-$name" > "$OUT/train-small-$name.log" 2>&1 &
  TRAIN+=($!)
done
CUDA_VISIBLE_DEVICES=$(gpu 1) bench train --recipe default --preset seed --batch-size 128 --lr 2e-4 \
    --lr-schedule cosine --compile --checkpoint-every 5000 "${LONG[@]}" --out "$OUT/seed-default" \
    > "$OUT/train-seed-default.log" 2>&1 &
TRAIN+=($!)
CUDA_VISIBLE_DEVICES=$(gpu 2) bench train --recipe reference --preset seed --compile \
    --checkpoint-every 10000 "${LONG[@]}" --out "$OUT/seed-reference" > "$OUT/train-seed-reference.log" 2>&1 &
TRAIN+=($!)
wait "${TRAIN[@]}"
echo "$(date +%T) trainings done"
tail -n 3 "$OUT"/train-*.log

JUDGE=(--ref-n 2000 --no-compile)  # the shipped judge
EVAL=()
(
  for name in b256 b128; do
    bench export "$OUT/small-$name/checkpoint" "$OUT/small-$name.safetensors" --dtype fp16 --guidance 4
    CUDA_VISIBLE_DEVICES=$(gpu 0) bench run --checkpoint "$OUT/small-$name.safetensors" "${JUDGE[@]}" \
        --scheduler cosine --seeds 0-4 --guidance 3,4,5 --no-denoising-figure --out "$OUT/run-small-$name"
  done
  CUDA_VISIBLE_DEVICES=$(gpu 0) bench run --checkpoint "$SHIPPED_SMALL" "${JUDGE[@]}" \
      --scheduler cosine --seeds 0-4 --guidance 4 --no-denoising-figure --out "$OUT/run-small-shipped"
) > "$OUT/run-small.log" 2>&1 &
EVAL+=($!)
CUDA_VISIBLE_DEVICES=$(gpu 1) bench run --checkpoint "$OUT/seed-default/checkpoint" "${JUDGE[@]}" \
    --scheduler cosine --seeds 0-4 --guidance 1,2,3,4 --out "$OUT/run-seed-default" \
    > "$OUT/run-seed-default.log" 2>&1 &
EVAL+=($!)
CUDA_VISIBLE_DEVICES=$(gpu 2) bench run --checkpoint "$OUT/seed-reference/checkpoint" "${JUDGE[@]}" \
    --scheduler cosine --seeds 0-4 --out "$OUT/run-seed-reference" > "$OUT/run-seed-reference.log" 2>&1 &
EVAL+=($!)
wait "${EVAL[@]}"
echo "$(date +%T) evaluations done"
tail -n 12 "$OUT"/run-*.log
# What comes back: results, logs, grids and the exported small models, in 15 MB parts.
bash "$(dirname "$0")/bundle_results.sh" "$OUT" "$OUT.bundle"
touch "$OUT/DONE"
