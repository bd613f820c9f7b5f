#!/usr/bin/env bash
# Everything the project trains and times on GPUs, in one go, on a machine with 1-4 CUDA GPUs
# (jobs are spread over GPU index mod the GPU count):
#   GPU 0: ddpm-unet `seed`, our default recipe (v-prediction, Min-SNR-5 loss weighting, batch 128,
#          lr 2e-4, cosine decay over the wall-time budget), torch.compile
#   GPU 1: ddpm-unet `seed`, the reference recipe (same wall time)
#   GPU 2: `seed`, the same recipe at batch 256, lr 3e-4, compiled with CUDA graphs (`--cuda-graphs`;
#          if that run fails, it starts again without them)
#   GPU 3: the speed suite: training images/s eager / compile / compile + CUDA graphs at batch 128 and
#          256 with the loss-curve check; the same compile mode from BASELINE_SRC (a checkout of an
#          older commit, if given) as the before-and-after baseline; a profile of a compiled training
#          step; sampling rows of scripts/profile_sampling.py (fast path, and with Inductor freezing)
# then samples + judges every `seed` model with the shipped judge (100 and 25 DDPM steps).
# Earlier sessions' versions of this script (TRAINING.md names the commits) trained the judge, the
# shipped `small` model's four stages, and the cosine/linear and sampler comparisons.
# Usage: [BASELINE_SRC=DIR] scripts/gpu_campaign.sh OUT_DIR [TRAIN_MINUTES]
# Writes OUT_DIR/DONE when every run is judged and OUT_DIR.bundle/ holds what should come back
# (scripts/bundle_results.sh); logs are OUT_DIR/*.log. scripts/gpu_wait.sh follows it.
set -uo pipefail
OUT=${1:?usage: scripts/gpu_campaign.sh OUT_DIR [TRAIN_MINUTES]}
MIN=${2:-15}
OUT=$(realpath -m "$OUT")
REPO=$(cd "$(dirname "$0")/.." && pwd)
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
LONG=(--max-steps 100000000 --epochs 1000000 --lr-schedule cosine --max-minutes "$MIN")
SEED=(--recipe default --preset seed --min-snr-gamma 5 --compile --checkpoint-every 5000 "${LONG[@]}")
TRAIN=()
CUDA_VISIBLE_DEVICES=$(gpu 0) bench train "${SEED[@]}" --batch-size 128 --lr 2e-4 --out "$OUT/seed-minsnr" \
    > "$OUT/train-seed-minsnr.log" 2>&1 &
TRAIN+=($!)
CUDA_VISIBLE_DEVICES=$(gpu 1) bench train --recipe reference --preset seed --compile --checkpoint-every 10000 \
    --max-minutes "$MIN" --max-steps 100000000 --epochs 1000000 --out "$OUT/seed-reference" \
    > "$OUT/train-seed-reference.log" 2>&1 &
TRAIN+=($!)
(
  CUDA_VISIBLE_DEVICES=$(gpu 2) bench train "${SEED[@]}" --batch-size 256 --lr 3e-4 --cuda-graphs \
      --out "$OUT/seed-b256-graphs" \
  || { echo "== --cuda-graphs failed: again without it"; rm -rf "$OUT/seed-b256-graphs"
       CUDA_VISIBLE_DEVICES=$(gpu 2) bench train "${SEED[@]}" --batch-size 256 --lr 3e-4 \
           --out "$OUT/seed-b256-graphs"; }
) > "$OUT/train-seed-b256-graphs.log" 2>&1 &
TRAIN+=($!)

# The speed suite, one job after another on GPU 3 (the other GPUs train meanwhile).
(
  export CUDA_VISIBLE_DEVICES=$(gpu 3)
  cd "$REPO"
  BENCH_TRAIN_MODES=eager,compile,compile-graphs BENCH_TRAIN_BATCH=128,256 BENCH_SPEED_K=test_training_gpu \
      bash scripts/speed.sh "$OUT/speed-train"
  if [ -n "${BASELINE_SRC:-}" ]; then
    (cd "$BASELINE_SRC" && PYTHONPATH="$BASELINE_SRC:$BASELINE_SRC/plugins:${PYTHONPATH:-}" \
        BENCH_TRAIN_MODES=compile BENCH_TRAIN_BATCH=128,256 BENCH_TRAIN_LOSS_STEPS=0 \
        BENCH_SPEED_K=test_training_gpu bash scripts/speed.sh "$OUT/speed-train-baseline")
  fi
  python3 scripts/profile_training.py "$OUT/profile-train" --batch 128
  python3 scripts/profile_sampling.py "$OUT/sample-fast" --batch 512 --steps 20 --cuda-graphs --no-profile
  python3 scripts/profile_sampling.py "$OUT/sample-freezing" --batch 512 --steps 20 --cuda-graphs --no-profile \
      --inductor freezing=true
) > "$OUT/speed.log" 2>&1 &
SPEED=$!

wait "${TRAIN[@]}"
echo "$(date +%T) trainings done"
tail -n 3 "$OUT"/train-*.log

JUDGE=(--ref-n 2000 --no-compile)  # the shipped judge; FID-judge against 2,000 renders; eager bf16 sampling (no compile wait)
EVAL=()
for run in seed-minsnr:0 seed-b256-graphs:2; do
  name=${run%%:*}
  CUDA_VISIBLE_DEVICES=$(gpu "${run##*:}") bench run --checkpoint "$OUT/$name/checkpoint" "${JUDGE[@]}" \
      --scheduler cosine --steps 100,25 --seeds 0-4 --guidance 3,4,5 --out "$OUT/run-$name" \
      > "$OUT/run-$name.log" 2>&1 &
  EVAL+=($!)
done
# The reference recipe trains no guidance: scale 1.
CUDA_VISIBLE_DEVICES=$(gpu 1) bench run --checkpoint "$OUT/seed-reference/checkpoint" "${JUDGE[@]}" \
    --scheduler cosine --seeds 0-4 --out "$OUT/run-seed-reference" > "$OUT/run-seed-reference.log" 2>&1 &
EVAL+=($!)
wait "${EVAL[@]}"
echo "$(date +%T) evaluations done"
tail -n 12 "$OUT"/run-*.log
# The speed suite gets until then; what it has not finished is stopped and left out.
if kill -0 "$SPEED" 2>/dev/null; then
  kill "$SPEED"; pkill -f 'pytest benchmarks/|scripts/profile_(training|sampling)\.py'
  echo "$(date +%T) speed suite stopped unfinished"
fi
tail -n 30 "$OUT/speed.log"
# What comes back: results, logs, grids, in 15 MB parts.
bash "$REPO/scripts/bundle_results.sh" "$OUT" "$OUT.bundle"
touch "$OUT/DONE"
