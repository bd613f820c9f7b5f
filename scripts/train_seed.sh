#!/usr/bin/env bash
# The reference architecture (ddpm-unet `seed`, 113.7 M parameters) on one CUDA GPU: our default
# recipe and the published reference recipe (cosine, 100 train timesteps, lr 1e-5, batch 32),
# each for the same wall time, then both sampled and judged (5 seeds, both shipped condition sets).
# Usage: scripts/train_seed.sh OUT_DIR [MINUTES_EACH] [JUDGE]
set -uo pipefail
OUT=${1:?usage: scripts/train_seed.sh OUT_DIR [MINUTES_EACH] [JUDGE]}
MIN=${2:-5}
JUDGE=${3:-}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
for recipe in default reference; do
  python3 -m bench train --recipe "$recipe" --preset seed --max-minutes "$MIN" --max-steps 10000000 \
      --epochs 100000 --checkpoint-every 100000 --no-compile --out "$OUT/seed-$recipe" > "$OUT/train-$recipe.log" 2>&1
  tail -n 4 "$OUT/train-$recipe.log"
done
JUDGE_ARGS=()
[ -n "$JUDGE" ] && JUDGE_ARGS=(--judge "$JUDGE")
for recipe in default reference; do
  G=1; [ "$recipe" = default ] && G=1,2,3
  python3 -m bench run --checkpoint "$OUT/seed-$recipe/checkpoint" "${JUDGE_ARGS[@]}" --ref-n 2000 \
      --scheduler cosine --seeds 0-4 --guidance "$G" --no-compile --out "$OUT/run-seed-$recipe" > "$OUT/run-$recipe.log" 2>&1
  tail -n 12 "$OUT/run-$recipe.log"
done
