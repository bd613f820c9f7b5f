#!/usr/bin/env bash
# The speed measurements of one CUDA GPU in one go, each setting beside its baseline. Each stage is
# its own process with its own time limit, so a stage that overruns loses only itself:
#   1. training, `seed` preset, batch 256: eager bf16 and bench train's GPU default (compile + CUDA
#      graphs, Inductor's layout forced, GroupNorm from channel statistics since session 28: benchmark
#      mode compile-graphs-gn-stats; "compile-graphs" is the default before it, with nn.GroupNorm).
#      Session 15 timed two other GroupNorm variants on top of the default of then (benchmark modes
#      compile-graphs-views, compile-graphs-gn-cl): neither was faster on an H100 (BENCHMARKS.md)
#   2. sampling: the fast path with and without --tune-kernels, compiled side by side, timed one
#      after the other at BATCH (scripts/tuning_pair.sh, 20 steps)
#   3. sampling: the 100-step suite at BATCH, the one-image reference loop as its baseline (the
#      compiled graphs of stage 2 come from Inductor's cache); SUITE_MODES, the benchmark modes
#      (default reference,graphs-attn-gn-stats,graphs-attn-gn-stats-ends-ahead,
#      graphs-tuned-attn-gn-stats-frozen-ends-ahead: bench run's GPU default of sessions 27-35, the
#      default since session 36 (the Triton end convolutions, noise drawn ahead), and that tuned
#      with its weights frozen, the fastest; "graphs-attn" is session 26's, with nn.GroupNorm, and
#      "graphs" the default before it, with torch's attention kernel too); SUITE_LIMIT, its time
#      limit in seconds (default 420; each tuned mode compiles for minutes)
#   4. `bench run` itself, guided and unguided, compiled (its GPU default) beside --no-compile: the
#      `seed` preset with random weights on the 192 conditions that scripts/gpu_campaign.sh judges
#      (test, new_test and the two validation sets), one seed, 100 cosine steps, no evaluators;
#      images/s, compile time and peak memory (compile and capture included) per cell
#   5. sampling sweep (scripts/sampling_sweep.sh): SWEEP_IMAGES (default BATCH) images at 100 cosine
#      steps in chunks of each batch of SWEEP_BATCHES (default "BATCH 256 128 64 32"; does a chunk
#      small enough for its activations to stay in the GPU's L2 cache win?), then at BATCH once
#      per Inductor setting of SWEEP_INDUCTOR (default "freezing=true aggressive_fusion=true"), then
#      at BATCH once per variant of SWEEP_VARIANTS (default none): "NAME=ARGS;NAME=ARGS", ARGS
#      being scripts/profile_sampling.py's flags (e.g. "tuned=--tune-kernels;folded=--fold-upsample");
#      all compiled side by side, timed one at a time, the first batch as the baseline. An empty
#      SWEEP_BATCHES or SWEEP_INDUCTOR leaves those settings out
#   6. training with --tune-kernels (coordinate-descent tuning), loss curve checked: its compile is
#      the longest (11 minutes at batch 256 on an H100, session 17), so it comes last
# Usage: scripts/gpu_speed.sh OUT_DIR [BATCH (512)]
# STAGES="train-baseline train-tuned" runs only the stages it names (default: all six, in order);
# BASELINE_MODES: the first stage's benchmark modes (default eager,compile-graphs-gn-stats);
# TUNED_LIMIT sets the tuned training's time limit in seconds (default 1200); TRAIN_BATCH the
# batch of both training stages (default 256; the tuned compile at 512 took over 13 minutes).
# The last stage can differ: TUNED_BATCH (default TRAIN_BATCH), TUNED_MODES (default
# compile-graphs-tuned-gn-stats, bench train's default tuned; add compile-graphs-gn-stats to time
# the untuned default at that batch too) and
# TUNED_LOSS_STEPS (default 5; 0 skips the loss check. Where eager, the check's reference, does
# not fit in one pass (the `seed` preset's eager bf16 step took 62 GB at batch 512 on an H100), it
# trains in micro-batches of gradient accumulation, the same weights up to float rounding).
# Writes OUT_DIR/DONE when finished and OUT_DIR.bundle/ (scripts/bundle_results.sh; not with
# NO_BUNDLE=1); logs are
# OUT_DIR/*.log. Run it in the background and follow it with scripts/gpu_wait.sh OUT_DIR DEST.
set -uo pipefail
OUT=${1:?usage: scripts/gpu_speed.sh OUT_DIR [BATCH]}
BATCH=${2:-512}
OUT=$(realpath -m "$OUT")
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
ALL_STAGES="train-baseline sample-pair sample-suite run-guided sample-sweep train-tuned"
STAGES=${STAGES:-$ALL_STAGES}
for name in $STAGES; do  # a misspelt stage would run nothing and still end in DONE
  [[ " $ALL_STAGES " == *" $name "* ]] || { echo "unknown stage '$name'; known: $ALL_STAGES" >&2; exit 2; }
done
stage() {  # stage NAME SECONDS COMMAND...: run it with a time limit, log to OUT/NAME.log
  local name=$1 limit=$2
  shift 2
  [[ " $STAGES " == *" $name "* ]] || return 0
  echo "$(date +%T) $name (limit ${limit} s)"
  timeout --kill-after 10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?  # 124: stopped at its limit
  echo "$(date +%T) $name exit $rc"
}
nvidia-smi -L
stage train-baseline 600 env BENCH_TRAIN_MODES="${BASELINE_MODES:-eager,compile-graphs-gn-stats}" BENCH_TRAIN_BATCH="${TRAIN_BATCH:-256}" \
    BENCH_SPEED_K=test_training_gpu bash scripts/speed.sh "$OUT/train-baseline"
stage sample-pair 480 bash scripts/tuning_pair.sh "$OUT/sample-pair" "$BATCH" 20 420
stage sample-suite "${SUITE_LIMIT:-420}" env BENCH_SPEED_MODES="${SUITE_MODES:-reference,graphs-attn-gn-stats,graphs-attn-gn-stats-ends-ahead,graphs-tuned-attn-gn-stats-frozen-ends-ahead}" BENCH_SPEED_BATCH="$BATCH" \
    BENCH_SPEED_K="sampling and gpu" bash scripts/speed.sh "$OUT/sample-suite"
SETS=()
for set in plugins/bench_builtins/conditions/test.json plugins/bench_builtins/conditions/new_test.json \
    results/h100x4-session7/val-101.json results/h100x4-session7/val-102-shared.json; do
  SETS+=(--conditions "$set")
done
for mode in compile no-compile; do
  stage "run-guided" 300 python3 -m bench run --checkpoint random --preset seed --scheduler cosine --steps 100 \
      --seeds 0 --guidance 1,5 --evaluators none --no-denoising-figure "${SETS[@]}" --"$mode" \
      --out "$OUT/run-guided-$mode"
  mv "$OUT/run-guided.log" "$OUT/run-guided-$mode.log" 2>/dev/null
done
SWEEP=()
for batch in ${SWEEP_BATCHES-$BATCH 256 128 64 32}; do
  SWEEP+=("b$batch=--batch $batch --images ${SWEEP_IMAGES:-$BATCH}")
done
for setting in ${SWEEP_INDUCTOR-freezing=true aggressive_fusion=true}; do
  SWEEP+=("b$BATCH-${setting%%=*}=--batch $BATCH --images ${SWEEP_IMAGES:-$BATCH} --inductor $setting")
done
IFS=';' read -r -a VARIANTS <<< "${SWEEP_VARIANTS:-}"
for variant in "${VARIANTS[@]}"; do
  [ -n "$variant" ] && SWEEP+=("b$BATCH-${variant%%=*}=--batch $BATCH --images ${SWEEP_IMAGES:-$BATCH} ${variant#*=}")
done
# SWEEP_LIMIT (default 480 s): the stage's limit; the timings wait for the compiles up to 60 s less.
SWEEP_LIMIT=${SWEEP_LIMIT:-480}
stage sample-sweep "$SWEEP_LIMIT" bash scripts/sampling_sweep.sh "$OUT/sample-sweep" 100 $((SWEEP_LIMIT - 60)) "${SWEEP[@]}"
# Last: its compile and tuning took 649 s at batch 256 on an H100 (session 17).
stage train-tuned "${TUNED_LIMIT:-1200}" env BENCH_TRAIN_MODES="${TUNED_MODES:-compile-graphs-tuned-gn-stats}" \
    BENCH_TRAIN_BATCH="${TUNED_BATCH:-${TRAIN_BATCH:-256}}" BENCH_TRAIN_LOSS_STEPS="${TUNED_LOSS_STEPS:-5}" \
    BENCH_SPEED_K=test_training_gpu bash scripts/speed.sh "$OUT/train-tuned"
# NO_BUNDLE=1 (scripts/gpu_campaign.sh, which bundles its whole folder): no bundle of its own.
[ "${NO_BUNDLE:-0}" = 1 ] || bash scripts/bundle_results.sh "$OUT" "$OUT.bundle"
touch "$OUT/DONE"
