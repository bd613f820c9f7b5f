#!/usr/bin/env bash
# Everything the project trains on GPUs, in one go, on a machine with 1-4 CUDA GPUs (jobs are
# spread over GPU index mod the GPU count):
#   GPU 0: ddpm-unet `seed`, our default recipe (v-prediction, Min-SNR-5 loss weighting, batch 128,
#          lr 2e-4, cosine decay over the wall-time budget)
#   GPU 1: ddpm-unet `seed`, the reference recipe (same wall time)
#   GPU 2: the `small` model (the shipped CPU default) trained on from the shipped weights: Min-SNR-5,
#          batch 256, lr 2e-4, cosine decay over the budget (candidate A)
#   GPU 3: the same at batch 512, lr 3e-4 (candidate B)
# then exports both small candidates (fp16 safetensors, guidance 5 as their sampling default) and
# samples + judges every model with the shipped judge, the shipped small model beside the candidates.
# The small models are also judged on two validation condition sets that no one has looked at
# (`bench data conditions`, seeds 101 and 102), on which the candidate to ship is chosen.
# Earlier sessions' versions of this script (TRAINING.md names the commits) trained the judge, the
# shipped `small` model's first three stages, and the cosine/linear and sampler comparisons.
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
CUDA_VISIBLE_DEVICES=$(gpu 1) bench train --recipe reference --preset seed --compile --checkpoint-every 10000 \
    --max-minutes "$MIN" --max-steps 100000000 --epochs 1000000 --out "$OUT/seed-reference" \
    > "$OUT/train-seed-reference.log" 2>&1 &
TRAIN+=($!)
SMALL=(--preset small --scheduler cosine --ema 0.9995 --compile --init-from "$SHIPPED_SMALL" --min-snr-gamma 5
       --max-minutes "$MIN" --checkpoint-every 5000 "${LONG[@]}")
CUDA_VISIBLE_DEVICES=$(gpu 2) bench train "${SMALL[@]}" --batch-size 256 --lr 2e-4 --out "$OUT/small-a" \
    > "$OUT/train-small-a.log" 2>&1 &
TRAIN+=($!)
CUDA_VISIBLE_DEVICES=$(gpu 3) bench train "${SMALL[@]}" --batch-size 512 --lr 3e-4 --out "$OUT/small-b" \
    > "$OUT/train-small-b.log" 2>&1 &
TRAIN+=($!)
wait "${TRAIN[@]}"
echo "$(date +%T) trainings done"
tail -n 3 "$OUT"/train-*.log

JUDGE=(--ref-n 2000 --no-compile)  # the shipped judge
SETS=()
for set in test new_test; do SETS+=(--conditions "plugins/bench_builtins/conditions/$set.json"); done
bench data conditions --out "$OUT/val-101.json" --n 64 --seed 101
bench data conditions --out "$OUT/val-102-shared.json" --n 64 --seed 102 --shared
EVAL=()
for run in small-a:2 small-b:3; do
  name=${run%%:*}
  (
    bench export "$OUT/$name/checkpoint" "$OUT/$name.safetensors" --dtype fp16 --guidance 5
    CUDA_VISIBLE_DEVICES=$(gpu "${run##*:}") bench run --checkpoint "$OUT/$name.safetensors" "${JUDGE[@]}" \
        --scheduler cosine --seeds 0-4 --guidance 3,4,5,6 --no-denoising-figure "${SETS[@]}" \
        --conditions "$OUT/val-101.json" --conditions "$OUT/val-102-shared.json" --out "$OUT/run-$name"
  ) > "$OUT/run-$name.log" 2>&1 &
  EVAL+=($!)
done
CUDA_VISIBLE_DEVICES=$(gpu 1) bench run --checkpoint "$SHIPPED_SMALL" "${JUDGE[@]}" --scheduler cosine \
    --seeds 0-4 --guidance 3,4,5,6 --no-denoising-figure "${SETS[@]}" --conditions "$OUT/val-101.json" \
    --conditions "$OUT/val-102-shared.json" --out "$OUT/run-small-shipped" > "$OUT/run-small-shipped.log" 2>&1 &
EVAL+=($!)
CUDA_VISIBLE_DEVICES=$(gpu 0) bench run --checkpoint "$OUT/seed-minsnr/checkpoint" "${JUDGE[@]}" \
    --scheduler cosine --seeds 0-4 --guidance 2,3,4,5 --out "$OUT/run-seed-minsnr" \
    > "$OUT/run-seed-minsnr.log" 2>&1 &
EVAL+=($!)
wait "${EVAL[@]}"
# The reference recipe after the small-model runs on its GPU (it trains no guidance: scale 1).
CUDA_VISIBLE_DEVICES=$(gpu 1) bench run --checkpoint "$OUT/seed-reference/checkpoint" "${JUDGE[@]}" \
    --scheduler cosine --seeds 0-4 --out "$OUT/run-seed-reference" > "$OUT/run-seed-reference.log" 2>&1
echo "$(date +%T) evaluations done"
tail -n 12 "$OUT"/run-*.log
# What comes back: results, logs, grids and the exported small model, in 15 MB parts.
bash "$(dirname "$0")/bundle_results.sh" "$OUT" "$OUT.bundle"
touch "$OUT/DONE"
