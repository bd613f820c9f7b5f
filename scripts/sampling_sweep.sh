#!/usr/bin/env bash
# Sampling speed of several settings of scripts/profile_sampling.py on one GPU, in about the time of
# the slowest compile: every setting compiles side by side, then they are timed one at a time in
# the order given, the first once all have compiled and each next one once the one before it has
# finished, so no two timings (and no compile) share the GPU with a timing.
# Each SETTING is NAME=ARGS: profile_sampling.py's arguments for that run (--batch, --images,
# --tune-kernels, --inductor KEY=VALUE, ...), added to the common ones (--preset, --steps,
# --cuda-graphs, --no-profile). Writes OUT_DIR/NAME/timing.json and OUT_DIR/NAME.log; prints each
# run's line, flagged NOT COMPARABLE where it was timed before every compile had ended (WAIT_MAX
# ran out; OUT_DIR/NAME.not-comparable then marks it).
# Usage: [PRESET=seed] scripts/sampling_sweep.sh OUT_DIR STEPS WAIT_MAX NAME="ARGS" [NAME="ARGS" ...]
set -uo pipefail
OUT=${1:?usage: scripts/sampling_sweep.sh OUT_DIR STEPS WAIT_MAX NAME=ARGS...}
STEPS=${2:?steps}
WAIT=${3:?wait max in seconds}
shift 3
[ $# -ge 1 ] || { echo "no settings given" >&2; exit 2; }
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
names=()
for setting in "$@"; do
  name=${setting%%=*}
  [[ "$name" =~ ^[A-Za-z0-9_.-]+$ && "$setting" == *=* ]] || { echo "bad setting '$setting': NAME=ARGS" >&2; exit 2; }
  names+=("$name")
  rm -f "$OUT/$name.ready" "$OUT/$name.done" "$OUT/$name.not-comparable"
done
rm -f "$OUT/all.ready"
common=(--preset "${PRESET:-seed}" --steps "$STEPS" --cuda-graphs --no-profile --wait-max "$WAIT")
previous=all.ready
for setting in "$@"; do
  name=${setting%%=*}
  read -r -a args <<< "${setting#*=}"
  (
    python3 scripts/profile_sampling.py "$OUT/$name" "${common[@]}" "${args[@]}" \
        --ready-file "$OUT/$name.ready" --time-after "$OUT/$previous"
    [ -e "$OUT/$name.ready" ] || touch "$OUT/$name.ready"  # it failed before it compiled
    # Done also when it failed, so nothing waits on it forever; but never before the timing ahead
    # of it has finished, or the next timing would run beside that one (session 33: a setting that
    # failed at once let the next start beside the first, both read at half speed).
    while [ ! -e "$OUT/$previous" ]; do sleep 1; done
    touch "$OUT/$name.done"
  ) > "$OUT/$name.log" 2>&1 &
  previous=$name.done
done
# The first timing waits for every compile (or failure) to end.
deadline=$((SECONDS + WAIT))
for name in "${names[@]}"; do
  while [ ! -e "$OUT/$name.ready" ] && [ $SECONDS -lt $deadline ]; do sleep 1; done
done
touch "$OUT/all.ready"
wait
# A compile still running when the wait ended shares the GPU (kernel tuning times kernels on it)
# and the CPU with the timings that start before it ends: flag those timings (session 32's first
# sweep read 51.9 images/s for a setting that ran at 108.4 alone). A timing starts once the one
# before it is done and its own compile has ended, so the last compile to end times alone.
last_ready=$(stat -c %Y "$OUT"/*.ready | sort -n | tail -n 1)
previous_done=$(stat -c %Y "$OUT/all.ready")
for name in "${names[@]}"; do
  printf '%s: ' "$name"
  grep -h "images/s unprofiled" "$OUT/$name.log" || echo "no timing (see $OUT/$name.log)"
  own_ready=$(stat -c %Y "$OUT/$name.ready")
  started=$(( own_ready > previous_done ? own_ready : previous_done ))
  if [ "$started" -lt "$last_ready" ]; then
    echo "  ^ NOT COMPARABLE: timed while another setting was still compiling (raise WAIT_MAX)"
    touch "$OUT/$name.not-comparable"  # for scripts/sweep_pick.py
  fi
  previous_done=$(stat -c %Y "$OUT/$name.done")
done
