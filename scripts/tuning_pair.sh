#!/usr/bin/env bash
# Sampling speed of the GPU fast path with and without --tune-kernels (Inductor's coordinate-descent
# tuning) on one CUDA GPU, in about the time of the tuned compile alone (scripts/sampling_sweep.sh:
# both compile side by side, then the baseline is timed, then the tuned run).
# Writes OUT_DIR/baseline/timing.json and OUT_DIR/tuned/timing.json and OUT_DIR/*.log; prints both lines.
# Usage: [PRESET=seed] scripts/tuning_pair.sh OUT_DIR [BATCH (256)] [STEPS (40)] [WAIT_MAX seconds (900)]
set -uo pipefail
OUT=${1:?usage: scripts/tuning_pair.sh OUT_DIR [BATCH] [STEPS] [WAIT_MAX]}
BATCH=${2:-256}
exec bash "$(dirname "$0")/sampling_sweep.sh" "$OUT" "${3:-40}" "${4:-900}" \
    baseline="--batch $BATCH" tuned="--batch $BATCH --tune-kernels"
