#!/usr/bin/env bash
# Sampling at its fastest on one CUDA GPU, beside the one-image reference loop, in one go. Each
# step's winner carries into the next, so one call both tries new settings and times the best:
#   1. an untuned sweep at SWEEP_BATCH (default 512; scripts/sampling_sweep.sh): `bench run`'s GPU
#      default timed first and last (base, base-again), each of CANDIDATES between;
#   2. the candidate that beat the faster base timing by at least MIN_GAIN (default 1.01), if any
#      (scripts/sweep_pick.py; OUT_DIR/pick.log says how each compared);
#   3. the default with TUNE (default "--tune-kernels --freeze-weights") at TARGET_BATCH (default
#      2048), and the same with the picked candidate, compiled side by side, timed one after the
#      other (target, target-NAME);
#   4. the fp32 one-image reference loop, the baseline (scripts/speed.sh, mode reference);
#   5. last, sub-batches on streams of their own, 1024 x 2 (scripts/stream_overlap.py), cut at
#      OVERLAP_LIMIT seconds (default 300; 0 skips it).
# CANDIDATES: "NAME=ARGS;NAME=ARGS", ARGS being scripts/profile_sampling.py's flags. The default:
# reductions tiled in two dimensions, loads and stores through TMA descriptors, cuDNN's algorithms
# timed per shape, and the folded upsampling. Set but empty, CANDIDATES tries none and TUNE tunes
# nothing.
# Usage: scripts/sampling_target.sh OUT_DIR
# PRESET and STEPS (default seed, 100) pass to every stage. Writes OUT_DIR/DONE when finished and
# OUT_DIR.bundle/ (scripts/bundle_results.sh). Run it in the background and follow it with
# scripts/gpu_wait.sh OUT_DIR DEST.
set -uo pipefail
OUT=${1:?usage: scripts/sampling_target.sh OUT_DIR}
OUT=$(realpath -m "$OUT")
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PRESET=${PRESET:-seed}
STEPS=${STEPS:-100}
SWEEP_BATCH=${SWEEP_BATCH:-512}
TARGET_BATCH=${TARGET_BATCH:-2048}
TUNE=${TUNE---tune-kernels --freeze-weights}
CANDIDATES=${CANDIDATES-tiled=--inductor triton.tile_reductions=true --inductor triton.prefer_nd_tiling=true;tma=--inductor triton.use_tensor_descriptor=true --inductor assume_aligned_inputs=true;cudnn=--cudnn-benchmark;folded=--fold-upsample}
nvidia-smi --query-gpu=name --format=csv,noheader > "$OUT/card.log" 2>&1

sweep_args="--batch $SWEEP_BATCH --images $SWEEP_BATCH"
IFS=';' read -r -a candidates <<< "$CANDIDATES"
settings=("base=$sweep_args")
names=()
declare -A flags  # candidate name -> its flags
for candidate in "${candidates[@]}"; do
  [ -n "$candidate" ] || continue
  names+=("${candidate%%=*}")
  flags[${candidate%%=*}]=${candidate#*=}
  settings+=("${candidate%%=*}=$sweep_args ${candidate#*=}")
done
settings+=("base-again=$sweep_args")
echo "$(date +%T) untuned sweep: ${#names[@]} candidate(s)"
bash scripts/sampling_sweep.sh "$OUT/sweep" "$STEPS" "${SWEEP_WAIT:-420}" "${settings[@]}" > "$OUT/sweep.log" 2>&1

picked=""
if [ "${#names[@]}" -gt 0 ]; then
  picked=$(python3 scripts/sweep_pick.py "$OUT/sweep" "${names[@]}" --baseline base --baseline base-again \
      --min-gain "${MIN_GAIN:-1.01}" 2> "$OUT/pick.log")
fi
target_args="--batch $TARGET_BATCH --images $TARGET_BATCH $TUNE"
targets=("target=$target_args")
[ -n "$picked" ] && targets+=("target-$picked=$target_args ${flags[$picked]}")
echo "$(date +%T) tuned at $TARGET_BATCH: ${targets[*]%%=*}"
bash scripts/sampling_sweep.sh "$OUT/tuned" "$STEPS" "${TUNED_WAIT:-900}" "${targets[@]}" > "$OUT/tuned.log" 2>&1

echo "$(date +%T) the reference loop"
BENCH_SPEED_MODES=reference BENCH_SPEED_BATCH="$SWEEP_BATCH" BENCH_SPEED_K="sampling and gpu" \
    bash scripts/speed.sh "$OUT/reference" > "$OUT/reference.log" 2>&1

if [ "${OVERLAP_LIMIT:-300}" -gt 0 ]; then
  echo "$(date +%T) streams"
  timeout --kill-after 10 "${OVERLAP_LIMIT:-300}" python3 scripts/stream_overlap.py "$OUT/overlap" \
      --preset "$PRESET" --batches 1024 --streams 1,2 --calls 10 > "$OUT/overlap.log" 2>&1
fi
bash scripts/bundle_results.sh "$OUT" "$OUT.bundle"
touch "$OUT/DONE"
echo "$(date +%T) done"
