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


def test_the_sampling_profiler_splits_the_time_by_op_family(tmp_path: Path) -> None:
    """scripts/profile_sampling.py on the CPU, tiny preset: the table and the family shares exist."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")])}
    args = ["--preset", "tiny", "--batch", "4", "--steps", "2", "--guidance", "2"]
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "profile_sampling.py"), str(tmp_path), *args],
        check=True,
        env=env,
        capture_output=True,
        timeout=300,
    )
    summary = json.loads((tmp_path / "profile.json").read_text())
    shares = {name: family["share"] for name, family in summary["families"].items()}
    assert summary["device"] == "cpu" and summary["steps"] == 2 and summary["guidance"] == 2.0
    assert sum(shares.values()) == pytest.approx(1.0) and shares["convolution"] > 0
    assert "aten::" in (tmp_path / "profile.txt").read_text()
