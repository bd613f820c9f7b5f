#!/usr/bin/env bash
# Trains the weights bench ships and scores them, on any machine with one or two CUDA GPUs:
#   - the judge: ResNet18 on synthetic renders of 1-5 objects (bench train-judge);
#   - ddpm-unet `small` with the cosine schedule (the shipped CPU default), and with the linear
#     schedule beside it for the cosine-vs-linear comparison.
# Then samples and judges them: 5 seeds on both shipped condition sets, and the sampler matrix.
# Usage: scripts/train_defaults.sh OUT_DIR [TRAIN_MINUTES] [JUDGE_MINUTES]
set -uo pipefail
OUT=${1:?usage: scripts/train_defaults.sh OUT_DIR [TRAIN_MINUTES] [JUDGE_MINUTES]}
MIN=${2:-6}
JUDGE_MIN=${3:-3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
NGPU=$(python3 -c 'import torch; print(torch.cuda.device_count())')
SECOND=$(( NGPU > 1 ? 1 : 0 ))
echo "gpus: $NGPU; training ${MIN} min, judge ${JUDGE_MIN} min"

# The judge's learning rate follows its epoch count (JUDGE_EPOCHS; ~1.4 s an epoch on one H200):
# pick epochs that fit JUDGE_MIN, which is only a safety cap.
CUDA_VISIBLE_DEVICES=0 python3 -m bench train-judge --max-minutes "$JUDGE_MIN" --epochs "${JUDGE_EPOCHS:-30}" \
    --out "$OUT/judge-synthetic.safetensors" > "$OUT/judge.log" 2>&1 &
CUDA_VISIBLE_DEVICES=0 python3 -m bench train --preset small --scheduler cosine --max-minutes "$MIN" \
    --max-steps 1000000 --no-compile --out "$OUT/small-cosine" > "$OUT/small-cosine.log" 2>&1 &
CUDA_VISIBLE_DEVICES=$SECOND python3 -m bench train --preset small --scheduler linear --max-minutes "$MIN" \
    --max-steps 1000000 --no-compile --out "$OUT/small-linear" > "$OUT/small-linear.log" 2>&1 &
wait
tail -n 3 "$OUT"/*.log

for s in cosine linear; do
  python3 -m bench export "$OUT/small-$s/checkpoint" "$OUT/ddpm-unet-small-$s.safetensors" --dtype fp16
done

JUDGE=(--judge "$OUT/judge-synthetic.safetensors" --ref-n 2000)
# The shipped default at its reference setting, 5 seeds, guidance off and on.
CUDA_VISIBLE_DEVICES=0 python3 -m bench run --checkpoint "$OUT/ddpm-unet-small-cosine.safetensors" "${JUDGE[@]}" \
    --scheduler cosine --seeds 0-4 --guidance 1,2,3 --no-compile --out "$OUT/run-small-cosine" > "$OUT/run-cosine.log" 2>&1 &
CUDA_VISIBLE_DEVICES=$SECOND python3 -m bench run --checkpoint "$OUT/ddpm-unet-small-linear.safetensors" "${JUDGE[@]}" \
    --scheduler linear --seeds 0-4 --guidance 1,2,3 --no-compile --out "$OUT/run-small-linear" > "$OUT/run-linear.log" 2>&1 &
wait
# Few-step samplers on the cosine-trained schedule.
CUDA_VISIBLE_DEVICES=0 python3 -m bench run --checkpoint "$OUT/ddpm-unet-small-cosine.safetensors" "${JUDGE[@]}" \
    --scheduler ddim,dpm++2m,unipc --steps 10,25,50 --seeds 0-2 --guidance 1,2 --no-compile --no-denoising-figure \
    --out "$OUT/run-small-samplers" > "$OUT/run-samplers.log" 2>&1
tail -n 5 "$OUT"/run-*.log
