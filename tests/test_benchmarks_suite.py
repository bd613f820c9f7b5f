"""The speed suite (benchmarks/) runs on the CPU and `bench report` renders its JSON.

The suite is kept out of the default run (it measures, it does not test); this runs its CPU
part once at the smallest sizes in a subprocess, so a broken benchmark is caught here. No
assertion on a time: only that figures exist and are positive.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCHEDULERS = ("cosine", "ddim", "dpm++2m", "unipc", "euler", "heun")

pytest.importorskip("pytest_benchmark")


@pytest.mark.slow
def test_cpu_benchmarks_run_and_report(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    env = {
        **os.environ,
        # the smallest sizes: 2 images, 2 steps, 1 round; one training step
        "BENCH_CPU_STEPS": "2",
        "BENCH_CPU_BATCH": "2",
        "BENCH_CPU_ROUNDS": "1",
        "BENCH_CPU_TRAIN_BATCH": "2",
        "BENCH_CPU_TRAIN_STEPS": "1",
    }
    command = [
        sys.executable,
        "-m",
        "pytest",
        "benchmarks/",
        "-k",
        "cpu and tiny",
        "--benchmark-only",
        f"--benchmark-json={out}",
        "-q",
        "-p",
        "no:cacheprovider",
    ]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    data = json.loads(out.read_text())
    benchmarks = data["benchmarks"]
    sampled = {b["extra_info"].get("scheduler") for b in benchmarks}
    assert set(SCHEDULERS) <= sampled, sampled
    assert any(b["extra_info"].get("scheduler", "").startswith("train") for b in benchmarks)
    for bench in benchmarks:
        extra = bench["extra_info"]
        assert extra["images_per_s"] > 0, bench["name"]
        assert extra["device"] == "cpu"
        assert extra["batch_size"] >= 1

    from bench.report import render_report

    table = render_report([out], "github")
    for name in SCHEDULERS:
        assert f"| {name} " in table, (name, table)
    assert "images/s" in table
