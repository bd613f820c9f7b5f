#!/usr/bin/env bash
# Sampling speed of the GPU fast path with and without --tune-kernels (Inductor's coordinate-descent
# tuning) on one CUDA GPU, in about the time of the tuned compile alone: both settings compile side
# by side, then the baseline is timed once the tuned run has compiled, and the tuned run once the
# baseline has finished, so the two timings never share the GPU.
# Writes OUT_DIR/baseline/timing.json and OUT_DIR/tuned/timing.json (scripts/profile_sampling.py,
# --no-profile) and OUT_DIR/*.log; prints both lines.
# Usage: [PRESET=seed] scripts/tuning_pair.sh OUT_DIR [BATCH (256)] [STEPS (40)] [WAIT_MAX seconds (900)]
set -uo pipefail
OUT=${1:?usage: scripts/tuning_pair.sh OUT_DIR [BATCH] [STEPS] [WAIT_MAX]}
BATCH=${2:-256}
STEPS=${3:-40}
WAIT=${4:-900}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
rm -f "$OUT/tuned.ready" "$OUT/baseline.done"
export PYTHONUNBUFFERED=1
common=(--preset "${PRESET:-seed}" --batch "$BATCH" --steps "$STEPS" --cuda-graphs --no-profile --wait-max "$WAIT")
# Each wait also ends when the other run exits, so a run that fails does not hold the GPU for WAIT.
(
  python3 scripts/profile_sampling.py "$OUT/baseline" "${common[@]}" --time-after "$OUT/tuned.ready"
  touch "$OUT/baseline.done"
) > "$OUT/baseline.log" 2>&1 &
(
  python3 scripts/profile_sampling.py "$OUT/tuned" "${common[@]}" --tune-kernels \
      --ready-file "$OUT/tuned.ready" --time-after "$OUT/baseline.done"
  [ -e "$OUT/tuned.ready" ] || touch "$OUT/tuned.ready"  # it failed before it compiled
) > "$OUT/tuned.log" 2>&1
wait
grep -h "images/s unprofiled" "$OUT/baseline.log" "$OUT/tuned.log"
