#!/usr/bin/env bash
# The GPU speed set of benchmarks/ on any CUDA machine: sampling of the `seed` UNet (113.7 M
# parameters, 100 cosine steps) from the one-image reference loop to bf16 + compile + CUDA graphs,
# with the fraction of the card's dense bf16 peak; training images/s eager vs compiled, and the
# compiled-vs-eager loss-curve check. Writes OUT_DIR/speed.json (pytest-benchmark),
# OUT_DIR/speed.md (bench report, github tables) and OUT_DIR/speed.log; prints a summary.
#
# Usage: scripts/speed.sh OUT_DIR
# Each torch.compile mode of the seed UNet costs ~1-2 min, so the default set compiles twice
# (sampling with CUDA graphs, training at one batch size). Widen it with the variables of
# benchmarks/conftest.py, e.g.
#   BENCH_SPEED_MODES=reference,fp32,bf16,compile,graphs BENCH_SPEED_BATCH=256,512 \
#   BENCH_TRAIN_BATCH=128,256 scripts/speed.sh OUT_DIR
# BENCH_SPEED_K selects tests (pytest -k; default "gpu and not cpu": the CPU benchmarks are left out).
# BENCH_TRAIN_LOSS_STEPS=0 skips the loss-curve check (it builds a second compiled trainer).
set -euo pipefail
OUT=${1:?usage: scripts/speed.sh OUT_DIR}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
export BENCH_SPEED_MODES=${BENCH_SPEED_MODES:-reference,fp32,bf16,graphs}
export BENCH_SPEED_BATCH=${BENCH_SPEED_BATCH:-256}
export BENCH_SPEED_ROUNDS=${BENCH_SPEED_ROUNDS:-3}
export BENCH_TRAIN_BATCH=${BENCH_TRAIN_BATCH:-256}
export BENCH_TRAIN_MODES=${BENCH_TRAIN_MODES:-eager,compile}
SELECT=${BENCH_SPEED_K:-gpu and not cpu}

python3 - <<'EOF'
import importlib.util, sys
import torch
if not torch.cuda.is_available():
    sys.exit("scripts/speed.sh: no CUDA device visible (torch.cuda.is_available() is False)")
if importlib.util.find_spec("pytest_benchmark") is None:
    sys.exit("scripts/speed.sh: pytest-benchmark is not installed; pip install -e '.[dev]'")
print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
EOF
echo "sampling modes: $BENCH_SPEED_MODES (batch $BENCH_SPEED_BATCH); training: $BENCH_TRAIN_MODES (batch $BENCH_TRAIN_BATCH)"

start=$(date +%s)
status=0
python3 -m pytest benchmarks/ -k "$SELECT" --benchmark-only --benchmark-json="$OUT/speed.json" \
    -q -s -p no:cacheprovider 2>&1 | tee "$OUT/speed.log" || status=$?
echo "benchmarks took $(( $(date +%s) - start )) s (pytest exit $status)"
[ -s "$OUT/speed.json" ] || { echo "no $OUT/speed.json written"; exit 1; }

python3 -m bench report "$OUT/speed.json" --format github > "$OUT/speed.md"

python3 - "$OUT/speed.json" <<'EOF'
import json, sys

data = json.load(open(sys.argv[1]))


def fmt(value, spec):
    return format(value, spec) if isinstance(value, int | float) else "-"


rows = [("benchmark", "sampler", "images/s", "last round", "peak MB", "reserved MB", "TFLOP/s", "%meas", "%nominal", "loss diff")]
for bench in data["benchmarks"]:
    e = bench["extra_info"]
    rows.append(
        (
            e.get("model", bench["name"]).replace("ddpm-unet/", ""),
            f"{e.get('scheduler', '')}/{e.get('steps', '')}",
            fmt(e.get("images_per_s"), ".1f"),
            fmt(e.get("images_per_s_last"), ".1f"),
            fmt(e.get("peak_memory_mb"), ".0f"),
            fmt(e.get("peak_reserved_mb"), ".0f"),
            fmt(e.get("achieved_tflops"), ".1f"),
            fmt(100 * e["fraction_of_measured_peak"], ".1f") if e.get("fraction_of_measured_peak") else "-",
            fmt(100 * e["fraction_of_nominal_peak"], ".1f") if e.get("fraction_of_nominal_peak") else "-",
            fmt(e.get("loss_max_abs_diff"), ".2e"),
        )
    )
peaks = {
    (e.get("device"), e.get("peak_tflops_measured"))
    for b in data["benchmarks"]
    if (e := b["extra_info"]).get("peak_tflops_measured")
}
for device, peak in peaks:
    print(f"{device}: measured bf16 matmul peak {peak:.0f} TFLOP/s (8192^3)")
widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
for i, row in enumerate(rows):
    print("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))))
    if i == 0:
        print("  ".join("-" * w for w in widths))
EOF
echo "wrote $OUT/speed.json, $OUT/speed.md, $OUT/speed.log"
exit "$status"
