#!/usr/bin/env bash
# Everything the project trains and measures on GPUs, in one go, on a machine with 1-4 CUDA GPUs
# (jobs are spread over GPU index mod the GPU count; with 4 GPUs each line below has a card).
#   GPU 0: ddpm-unet `small` (the shipped CPU default) trained further from the shipped weights,
#          cosine lr decay; beside it judge B (12,000 scenes, 120 epochs)
#   GPU 1: ddpm-unet `seed`, our default recipe (v-prediction, batch 256, lr 3e-4)
#   GPU 2: ddpm-unet `seed`, the reference recipe (same wall time); beside it judge A (24,000
#          scenes, 80 epochs)
#   GPU 3: the speed suite (scripts/speed.sh) from the start: reference loop, bf16 eager with and
#          without cudnn.benchmark, the fast path, training eager/compiled; then a kernel profile
#          of the sampling loop; then max-autotune for sampling and training
# then keeps the judge with the higher held-out accuracy, exports the small model (fp16
# safetensors, guidance 3 as its sampling default) and samples + judges every model.
# Earlier sessions' versions of this script (TRAINING.md names the commits) trained the shipped
# `small` model from scratch and the cosine/linear and sampler comparisons.
# Usage: scripts/gpu_campaign.sh OUT_DIR [TRAIN_MINUTES]
# Writes OUT_DIR/EVALS_DONE when the quality runs are judged, OUT_DIR/DONE when the speed suite
# has finished too; logs are OUT_DIR/*.log.
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

# The speed suite first on its own card: cheap compiles first, max-autotune (long compiles) after.
(
  export CUDA_VISIBLE_DEVICES=$(gpu 3) BENCH_SPEED_BATCH=512 BENCH_SPEED_ROUNDS=2 BENCH_TRAIN_BATCH=256
  BENCH_SPEED_MODES=reference,bf16,bf16-cudnn,graphs BENCH_TRAIN_MODES=eager,compile scripts/speed.sh "$OUT/speed"
  echo "$(date +%T) speed done"
  python3 scripts/profile_sampling.py "$OUT/profile"
  echo "$(date +%T) profile done"
  # Last: its compiles took over 10 minutes in session 4 (sampling and training together).
  BENCH_SPEED_MODES=autotune BENCH_TRAIN_MODES=autotune scripts/speed.sh "$OUT/speed-autotune"
  echo "$(date +%T) speed-autotune done"
) > "$OUT/speed.log" 2>&1 &
SPEED=$!

# Renders (a process per core), once: training set, FID reference. The judges render their own.
bench data cache --max-objects 3 > "$OUT/render.log" 2>&1
bench data cache --split heldout --scenes 667 >> "$OUT/render.log" 2>&1
echo "$(date +%T) renders cached"

LONG=(--max-minutes "$MIN" --max-steps 100000000 --epochs 1000000)
TRAIN=()
CUDA_VISIBLE_DEVICES=$(gpu 0) bench train --preset small --scheduler cosine --ema 0.9995 --compile \
    --init-from "$SHIPPED_SMALL" --lr-schedule cosine --max-steps 11000 --max-minutes "$MIN" \
    --out "$OUT/small-cont" > "$OUT/train-small-cont.log" 2>&1 &
TRAIN+=($!)
CUDA_VISIBLE_DEVICES=$(gpu 0) bench train-judge --scenes 12000 --epochs 120 --max-minutes "$MIN" \
    --out "$OUT/judge-b.safetensors" > "$OUT/train-judge-b.log" 2>&1 &
TRAIN+=($!)
CUDA_VISIBLE_DEVICES=$(gpu 1) bench train --recipe default --preset seed --batch-size 256 --lr 3e-4 --compile \
    --checkpoint-every 2000 "${LONG[@]}" --out "$OUT/seed-default" > "$OUT/train-seed-default.log" 2>&1 &
TRAIN+=($!)
CUDA_VISIBLE_DEVICES=$(gpu 2) bench train --recipe reference --preset seed --compile \
    --checkpoint-every 10000 "${LONG[@]}" --out "$OUT/seed-reference" > "$OUT/train-seed-reference.log" 2>&1 &
TRAIN+=($!)
CUDA_VISIBLE_DEVICES=$(gpu 2) bench train-judge --scenes 24000 --epochs 80 --max-minutes "$MIN" \
    --out "$OUT/judge-a.safetensors" > "$OUT/train-judge-a.log" 2>&1 &
TRAIN+=($!)
wait "${TRAIN[@]}"
echo "$(date +%T) trainings done"
tail -n 3 "$OUT"/train-*.log

# The judge with the higher held-out accuracy (clean renders of 1-5 objects) judges everything.
BEST=$(python3 - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
scores = {}
for name in ("judge-a", "judge-b"):
    report = out / f"{name}.json"
    if report.exists():
        scores[name] = json.loads(report.read_text())["heldout_acc_clean"]
print(f"judges: {scores}", file=sys.stderr)
print(max(scores, key=scores.get) if scores else "")
EOF
)
[ -n "$BEST" ] || { echo "no judge trained"; exit 1; }
echo "$(date +%T) judge: $BEST"
cp "$OUT/$BEST.safetensors" "$OUT/judge-synthetic.safetensors"
cp "$OUT/$BEST.json" "$OUT/judge-synthetic.json"

bench export "$OUT/small-cont/checkpoint" "$OUT/ddpm-unet-small-synthetic.safetensors" --dtype fp16 --guidance 3
JUDGE=(--judge "$OUT/judge-synthetic.safetensors" --ref-n 2000 --no-compile)
(
  CUDA_VISIBLE_DEVICES=$(gpu 0) bench run --checkpoint "$OUT/ddpm-unet-small-synthetic.safetensors" "${JUDGE[@]}" \
      --scheduler cosine --seeds 0-4 --guidance 1,2,3,4 --out "$OUT/run-small-cont"
  CUDA_VISIBLE_DEVICES=$(gpu 0) bench run --checkpoint "$SHIPPED_SMALL" "${JUDGE[@]}" \
      --scheduler cosine --seeds 0-4 --guidance 3 --no-denoising-figure --out "$OUT/run-small-shipped"
) > "$OUT/run-small.log" 2>&1 &
EVAL=($!)
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
touch "$OUT/EVALS_DONE"
wait "$SPEED"
tail -n 30 "$OUT/speed.log"
touch "$OUT/DONE"
