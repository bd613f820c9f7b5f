#!/usr/bin/env bash
# Everything the project trains and measures on GPUs, in one go, on a machine with 1-4 CUDA GPUs
# (jobs are spread over GPU index mod the GPU count; with 4 GPUs each training has a card).
#   GPU 0: ddpm-unet `small`, cosine (the shipped CPU default), then its sampler matrix
#   GPU 1: ddpm-unet `small`, linear (cosine-vs-linear)
#   GPU 2: ddpm-unet `seed`, our default recipe
#   GPU 3: ddpm-unet `seed`, the reference recipe (same wall time), and the judge beside it;
#          then the speed benchmarks (scripts/speed.sh) and a kernel profile of the sampling loop
#          (scripts/profile_sampling.py) while the others evaluate
# then exports the small models (fp16 safetensors) and samples + judges everything with the new judge.
# The trainings follow the `default` recipe, v-prediction since the first run of this script (which
# trained epsilon models: TRAINING.md gives those exact commands).
# Usage: scripts/gpu_campaign.sh OUT_DIR [TRAIN_MINUTES] ; env JUDGE_EPOCHS (default 150).
# Env BENCH_SPEED_BATCH etc. pass through to scripts/speed.sh.
# Writes OUT_DIR/DONE at the end; logs are OUT_DIR/*.log.
set -uo pipefail
OUT=${1:?usage: scripts/gpu_campaign.sh OUT_DIR [TRAIN_MINUTES]}
MIN=${2:-15}
JUDGE_EPOCHS=${JUDGE_EPOCHS:-150}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
NGPU=$(python3 -c 'import torch; print(max(torch.cuda.device_count(), 1))')
gpu() { echo $(( $1 % NGPU )); }
bench() { python3 -m bench "$@"; }
echo "$(date +%T) gpus: $NGPU; trainings ${MIN} min; judge ${JUDGE_EPOCHS} epochs"

# Renders (a process per core), once: training set, judge set, FID reference, judge held-out.
bench data cache --max-objects 3 > "$OUT/render.log" 2>&1
bench data cache --max-objects 5 >> "$OUT/render.log" 2>&1
bench data cache --split heldout --scenes 667 >> "$OUT/render.log" 2>&1
bench data cache --split heldout --scenes 400 --max-objects 5 >> "$OUT/render.log" 2>&1
echo "$(date +%T) renders cached"

LONG=(--max-minutes "$MIN" --max-steps 100000000 --epochs 1000000)
CUDA_VISIBLE_DEVICES=$(gpu 0) bench train --preset small --scheduler cosine --ema 0.9995 --compile \
    "${LONG[@]}" --out "$OUT/small-cosine" > "$OUT/train-small-cosine.log" 2>&1 &
CUDA_VISIBLE_DEVICES=$(gpu 1) bench train --preset small --scheduler linear --ema 0.9995 --compile \
    "${LONG[@]}" --out "$OUT/small-linear" > "$OUT/train-small-linear.log" 2>&1 &
CUDA_VISIBLE_DEVICES=$(gpu 2) bench train --recipe default --preset seed --batch-size 128 --compile \
    --checkpoint-every 2000 "${LONG[@]}" --out "$OUT/seed-default" > "$OUT/train-seed-default.log" 2>&1 &
CUDA_VISIBLE_DEVICES=$(gpu 3) bench train --recipe reference --preset seed --compile \
    --checkpoint-every 10000 "${LONG[@]}" --out "$OUT/seed-reference" > "$OUT/train-seed-reference.log" 2>&1 &
CUDA_VISIBLE_DEVICES=$(gpu 3) bench train-judge --epochs "$JUDGE_EPOCHS" --max-minutes "$MIN" \
    --out "$OUT/judge-synthetic.safetensors" > "$OUT/train-judge.log" 2>&1 &
wait
echo "$(date +%T) trainings done"
tail -n 2 "$OUT"/train-*.log

for s in cosine linear; do
  bench export "$OUT/small-$s/checkpoint" "$OUT/ddpm-unet-small-$s.safetensors" --dtype fp16
done
JUDGE=(--judge "$OUT/judge-synthetic.safetensors" --ref-n 2000)
(
  CUDA_VISIBLE_DEVICES=$(gpu 0) bench run --checkpoint "$OUT/ddpm-unet-small-cosine.safetensors" "${JUDGE[@]}" \
      --scheduler cosine --seeds 0-4 --guidance 1,2,3,4 --no-compile --out "$OUT/run-small-cosine"
  CUDA_VISIBLE_DEVICES=$(gpu 0) bench run --checkpoint "$OUT/ddpm-unet-small-cosine.safetensors" "${JUDGE[@]}" \
      --scheduler ddim,dpm++2m,unipc --steps 10,25,50 --seeds 0-2 --guidance 1,3 --no-compile \
      --no-denoising-figure --out "$OUT/run-small-samplers"
) > "$OUT/run-small-cosine.log" 2>&1 &
(
  CUDA_VISIBLE_DEVICES=$(gpu 1) bench run --checkpoint "$OUT/ddpm-unet-small-linear.safetensors" "${JUDGE[@]}" \
      --scheduler linear --seeds 0-4 --guidance 1,2,3,4 --no-compile --out "$OUT/run-small-linear"
) > "$OUT/run-small-linear.log" 2>&1 &
CUDA_VISIBLE_DEVICES=$(gpu 2) bench run --checkpoint "$OUT/seed-default/checkpoint" "${JUDGE[@]}" \
    --scheduler cosine --seeds 0-4 --guidance 1,2,3,4 --no-compile --out "$OUT/run-seed-default" \
    > "$OUT/run-seed-default.log" 2>&1 &
(
  CUDA_VISIBLE_DEVICES=$(gpu 3) bench run --checkpoint "$OUT/seed-reference/checkpoint" "${JUDGE[@]}" \
      --scheduler cosine --seeds 0-4 --no-compile --out "$OUT/run-seed-reference"
  CUDA_VISIBLE_DEVICES=$(gpu 3) scripts/speed.sh "$OUT/speed"
  CUDA_VISIBLE_DEVICES=$(gpu 3) python3 scripts/profile_sampling.py "$OUT/profile"
) > "$OUT/run-seed-reference.log" 2>&1 &
wait
echo "$(date +%T) evaluations done"
tail -n 12 "$OUT"/run-*.log
touch "$OUT/DONE"
