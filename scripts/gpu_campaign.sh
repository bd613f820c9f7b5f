#!/usr/bin/env bash
# Everything the project trains on GPUs, in one go, on a machine with 1-4 CUDA GPUs (jobs are
# spread over GPU index mod the GPU count):
#   GPU 0: ddpm-unet `seed`, our default recipe (v-prediction, batch 128, lr 2e-4, cosine decay over
#          the wall-time budget) with Min-SNR-5 loss weighting
#   GPU 1: the same without the weighting (the control)
#   GPU 2: ddpm-unet `seed`, the reference recipe (same wall time)
#   GPU 3 (4 GPUs only): first the sampling-speed points of scripts/profile_sampling.py (batch 512
#          and 1024, attention by torch's choice and by the math path), then the `small` model (the
#          shipped CPU default) trained further from the shipped weights with Min-SNR-5, batch 256,
#          cosine decay over what is left of the budget
# then exports the small model (fp16 safetensors, guidance 4 as its sampling default) and samples
# + judges every model with the shipped judge (the shipped small model beside the new one).
# Earlier sessions' versions of this script (TRAINING.md names the commits) trained the judge, the
# shipped `small` model's first two stages, and the cosine/linear and sampler comparisons.
# Usage: scripts/gpu_campaign.sh OUT_DIR [TRAIN_MINUTES]
# Writes OUT_DIR/DONE when every run is judged and OUT_DIR.bundle/ holds what should come back
# (scripts/bundle_results.sh); logs are OUT_DIR/*.log. scripts/gpu_wait.sh follows it.
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
LONG=(--max-steps 100000000 --epochs 1000000 --lr-schedule cosine)
SEED=(--recipe default --preset seed --batch-size 128 --lr 2e-4 --compile --checkpoint-every 5000)
TRAIN=()
CUDA_VISIBLE_DEVICES=$(gpu 0) bench train "${SEED[@]}" --min-snr-gamma 5 --max-minutes "$MIN" "${LONG[@]}" \
    --out "$OUT/seed-minsnr" > "$OUT/train-seed-minsnr.log" 2>&1 &
TRAIN+=($!)
CUDA_VISIBLE_DEVICES=$(gpu 1) bench train "${SEED[@]}" --max-minutes "$MIN" "${LONG[@]}" \
    --out "$OUT/seed-default" > "$OUT/train-seed-default.log" 2>&1 &
TRAIN+=($!)
CUDA_VISIBLE_DEVICES=$(gpu 2) bench train --recipe reference --preset seed --compile --checkpoint-every 10000 \
    --max-minutes "$MIN" --max-steps 100000000 --epochs 1000000 --out "$OUT/seed-reference" \
    > "$OUT/train-seed-reference.log" 2>&1 &
TRAIN+=($!)
(
  small_start=$(date +%s)
  if [ "$NGPU" -ge 4 ]; then
    # Sampling speed on a GPU of its own (the others train): 20 steps timed after a warm-up.
    for point in "b512 --batch 512" "b512-math --batch 512 --sdpa math" "b1024-math --batch 1024 --sdpa math"; do
      name=${point%% *}; flags=${point#* }
      CUDA_VISIBLE_DEVICES=3 python3 scripts/profile_sampling.py "$OUT/speed/$name" $flags \
          --steps 20 --cuda-graphs --no-profile
    done
  fi
  left=$(python3 -c "print(max(2.0, $MIN - ($(date +%s) - $small_start) / 60))")
  CUDA_VISIBLE_DEVICES=$(gpu 3) bench train --preset small --scheduler cosine --ema 0.9995 --compile \
      --init-from "$SHIPPED_SMALL" --batch-size 256 --lr 2e-4 --min-snr-gamma 5 --max-minutes "$left" \
      "${LONG[@]}" --checkpoint-every 5000 --out "$OUT/small-minsnr"
) > "$OUT/train-small-minsnr.log" 2>&1 &
TRAIN+=($!)
wait "${TRAIN[@]}"
echo "$(date +%T) trainings done"
tail -n 3 "$OUT"/train-*.log

JUDGE=(--ref-n 2000 --no-compile)  # the shipped judge
EVAL=()
(
  bench export "$OUT/small-minsnr/checkpoint" "$OUT/small-minsnr.safetensors" --dtype fp16 --guidance 4
  for model in "$OUT/small-minsnr.safetensors:small-minsnr" "$SHIPPED_SMALL:small-shipped"; do
    CUDA_VISIBLE_DEVICES=$(gpu 3) bench run --checkpoint "${model%%:*}" "${JUDGE[@]}" --scheduler cosine \
        --seeds 0-4 --guidance 3,4,5 --no-denoising-figure --out "$OUT/run-${model##*:}"
  done
) > "$OUT/run-small.log" 2>&1 &
EVAL+=($!)
for run in seed-minsnr:0 seed-default:1; do
  name=${run%%:*}
  CUDA_VISIBLE_DEVICES=$(gpu "${run##*:}") bench run \
      --checkpoint "$OUT/$name/checkpoint" "${JUDGE[@]}" --scheduler cosine --seeds 0-4 --guidance 1,2,3,4 \
      --out "$OUT/run-$name" > "$OUT/run-$name.log" 2>&1 &
  EVAL+=($!)
done
CUDA_VISIBLE_DEVICES=$(gpu 2) bench run --checkpoint "$OUT/seed-reference/checkpoint" "${JUDGE[@]}" \
    --scheduler cosine --seeds 0-4 --out "$OUT/run-seed-reference" > "$OUT/run-seed-reference.log" 2>&1 &
EVAL+=($!)
wait "${EVAL[@]}"
echo "$(date +%T) evaluations done"
tail -n 12 "$OUT"/run-*.log
# What comes back: results, logs, grids and the exported small model, in 15 MB parts.
bash "$(dirname "$0")/bundle_results.sh" "$OUT" "$OUT.bundle"
touch "$OUT/DONE"
