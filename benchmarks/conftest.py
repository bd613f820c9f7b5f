"""Shared fixtures and helpers of the speed suite (pytest-benchmark; kept out of the default run).

Run: ``pytest benchmarks/ --benchmark-only --benchmark-json=OUT.json`` then ``bench report OUT.json``.
CPU benchmarks (names contain ``cpu`` and ``tiny``) always run; GPU ones are skipped without CUDA.
Sizes come from environment variables so a shorter set can be chosen without editing code:

| variable | default | what |
|---|---|---|
| ``BENCH_CPU_SCHEDULERS`` | cosine,ddim,dpm++2m,unipc,euler,heun | CPU sampling schedulers |
| ``BENCH_CPU_STEPS`` | 10,25 | CPU sampling step counts |
| ``BENCH_CPU_BATCH`` | 8 | CPU sampling images per round |
| ``BENCH_CPU_ROUNDS`` | 2 | measured rounds per CPU sampling benchmark (the figure: their median; CPU training measures its steps once) |
| ``BENCH_CPU_TRAIN_BATCH`` / ``_STEPS`` | 8 / 4 | CPU training batch and measured steps |
| ``BENCH_SPEED_PRESET`` | seed | GPU model preset |
| ``BENCH_SPEED_BATCH`` | 256 | GPU sampling batch sizes (comma list, e.g. 256,512) |
| ``BENCH_SPEED_STEPS`` | 100 | GPU sampling steps (cosine) |
| ``BENCH_SPEED_MODES`` | all known | GPU sampling variants: reference, fp32, bf16, bf16-cudnn, compile, graphs, graphs-nchw, graphs-views, autotune, graphs-tuned, graphs-folded, graphs-tuned-folded, graphs-attn, graphs-tuned-attn, graphs-attn-gn-stats, graphs-tuned-attn-gn-stats, graphs-tuned-folded-attn, and those two -attn-gn-stats modes with -padded, -frozen, -ends-ahead (today's default, untuned) or -frozen-ends-ahead (``scripts/speed.sh``: reference,fp32,bf16,graphs) |
| ``BENCH_SPEED_ROUNDS`` | 3 | measured rounds per GPU sampling benchmark (the reference loop, minutes a round: one fewer) |
| ``BENCH_SPEED_REF_IMAGES`` | 2 | images through the one-at-a-time reference loop |
| ``BENCH_TRAIN_BATCH`` | 128,256 | GPU training batch sizes |
| ``BENCH_TRAIN_MODES`` | all known | GPU training variants: eager, compile, compile-graphs, compile-graphs-no-layout-opt, compile-views, compile-graphs-views, compile-graphs-gn-cl, compile-graphs-gn-stats, autotune, compile-graphs-tuned, compile-graphs-folded, compile-graphs-tuned-folded, compile-graphs-attn, compile-graphs-tuned-attn, compile-graphs-tuned-gn-stats (every compiled one forces Inductor's layout except compile-graphs-no-layout-opt; ``scripts/speed.sh``: eager,compile) |
| ``BENCH_TRAIN_STEPS`` / ``_WARMUP`` | 20 / 5 | GPU measured / warm-up training steps |
| ``BENCH_TRAIN_LOSS_STEPS`` | 5 | steps of the compiled-vs-eager loss-curve check (0: off) |
| ``BENCH_TRAIN_LOSS_TOL`` | 0.05 | largest allowed loss difference, compiled vs eager bf16 |

Any other ``BENCH_*`` name in the environment stops the run (a typo would leave a default in place).
A sampling benchmark's images/s is the median of its rounds; a compiled round's seconds leave out
``sample()``'s three untimed warm-up forwards (about 3 % of a 100-step call), which ``bench run``
also pays once per cell.

``scripts/speed.sh OUT_DIR`` runs the GPU part with a shorter default set. Helpers live in
``speed_helpers.py`` (a module named ``conftest`` must not be imported by tests).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from speed_helpers import measure_matmul_tflops, nominal_bf16_tflops, unknown_env


def pytest_configure(config: pytest.Config) -> None:
    """A misspelt size variable (``BENCH_CPU_STPES``) stops the run before anything is measured."""
    typos = unknown_env()
    if typos:
        raise pytest.UsageError(f"unknown environment variable(s): {', '.join(typos)}")


@pytest.fixture(scope="session")
def cosine_noise() -> dict[str, Any]:
    """The training noise-schedule config every sampler is built from (1000 cosine timesteps)."""
    from bench.noise import noise_config

    return noise_config("cosine")


@pytest.fixture(scope="session")
def gpu_peak() -> dict[str, Any]:
    """Measured (8192^3 bf16 matmul) and nominal dense bf16 TFLOP/s of the CUDA card."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    name = torch.cuda.get_device_name()
    return {
        "device": name,
        "measured_tflops": measure_matmul_tflops(),
        "nominal_tflops": nominal_bf16_tflops(name),
    }
