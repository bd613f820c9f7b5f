"""Helpers of the speed suite: env knobs, random models/data, device facts, extra_info."""

from __future__ import annotations

import functools
import os
import statistics
from collections.abc import Callable, Mapping
from typing import Any

import pytest
import torch

from bench.profiling import cuda_ms_per_call
from bench.results import largest_costs
from bench.sampling import SampleResult

# FLOPs of one forward of the reference (``seed``) UNet on one 64x64 image (docs/iclevr.md).
SEED_GFLOP_PER_IMAGE = 31.0
# Nominal dense bf16 tensor-core peak (no sparsity): H100 SXM; the H200 has the same compute.
NOMINAL_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0}

CPU_SCHEDULERS = ("cosine", "ddim", "dpm++2m", "unipc", "euler", "heun")

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


# ---------------------------------------------------------------- environment knobs

# Every BENCH_* variable the suite, its scripts or bench itself reads: another name is a typo that
# would leave a default in place without a word (a run at sizes nobody asked for).
KNOWN_ENV = frozenset(
    {
        *(f"BENCH_CPU_{k}" for k in ("SCHEDULERS", "STEPS", "BATCH", "ROUNDS", "TRAIN_BATCH", "TRAIN_STEPS")),
        *(f"BENCH_SPEED_{k}" for k in ("PRESET", "BATCH", "STEPS", "MODES", "ROUNDS", "REF_IMAGES", "K")),
        *(f"BENCH_TRAIN_{k}" for k in ("BATCH", "MODES", "STEPS", "WARMUP", "LOSS_STEPS", "LOSS_TOL")),
        "BENCH_CACHE_DIR", "BENCH_DEBUG", "BENCH_STRICT_PLUGINS", "BENCH_RENDER_WORKERS",
    }
)  # fmt: skip


def unknown_env(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The BENCH_* names set in ``environ`` that nothing reads, each with its likely meaning."""
    import difflib

    out = []
    for name in sorted(n for n in environ if n.startswith("BENCH_") and n not in KNOWN_ENV):
        close = difflib.get_close_matches(name, sorted(KNOWN_ENV), n=1)
        out.append(f"{name} (did you mean {close[0]}?)" if close else name)
    return out


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def env_modes(name: str, known: list[str] | tuple[str, ...]) -> list[str]:
    """The modes ``$name`` selects (default: all ``known``), in ``known``'s order; unknown ones are an error."""
    asked = env_list(name, ",".join(known))
    unknown = sorted(set(asked) - set(known))
    if unknown:
        raise ValueError(f"{name}: unknown mode(s) {unknown}; known: {','.join(known)}")
    return [m for m in known if m in asked]


def _whole_number(name: str, text: str, minimum: int) -> int:
    """``text`` as an int of at least ``minimum``, or an error naming ``name`` (BENCH_TRAIN_STEPS=0
    timed nothing and failed on a loss never computed)."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name}: {text!r} is not a whole number") from None
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value


def env_ints(name: str, default: str, minimum: int = 1) -> list[int]:
    return [_whole_number(name, item, minimum) for item in env_list(name, default)]


def env_int(name: str, default: int, minimum: int = 1) -> int:
    return _whole_number(name, os.environ.get(name, str(default)).strip(), minimum)


# ---------------------------------------------------------------- models, data, conditions


def make_model(preset: str, seed: int = 0) -> torch.nn.Module:
    """A ``ddpm-unet`` with random (seeded) weights: speed does not depend on the weights."""
    from bench.plugins import get

    torch.manual_seed(seed)
    return get("models", "ddpm-unet").factory(preset=preset).eval()


def make_conditions(n: int, num_labels: int = 24, seed: int = 0) -> torch.Tensor:
    """(n, num_labels) multi-hot with 1-3 objects per row, like the i-CLEVR test sets."""
    g = torch.Generator().manual_seed(seed)
    conds = torch.zeros(n, num_labels)
    for row in range(n):
        k = int(torch.randint(1, 4, (1,), generator=g))
        conds[row, torch.randperm(num_labels, generator=g)[:k]] = 1.0
    return conds


# ---------------------------------------------------------------- device facts


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def nominal_bf16_tflops(name: str) -> float | None:
    """The data-sheet dense bf16 peak of a known card, else None (the measured one still counts)."""
    for key, value in NOMINAL_BF16_TFLOPS.items():
        if key in name:
            return value
    return None


def measure_matmul_tflops(n: int = 8192, warmup: int = 3, repeats: int = 10) -> float:
    """The median bf16 TFLOP/s of an n^3 matmul: the achievable dense peak of this card."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(warmup):  # clocks up, cuBLAS heuristics cached
        a @ b
    seconds = (
        statistics.median(cuda_ms_per_call(functools.partial(torch.matmul, a, b), repeats=repeats)) / 1e3
    )
    del a, b
    torch.cuda.empty_cache()
    return 2 * n**3 / seconds / 1e12


# ---------------------------------------------------------------- recording


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class RoundLog:
    """Wraps a sampling call; keeps each round's SampleResult (its seconds are synchronized)."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.call = call
        self.results: list[Any] = []

    def __call__(self) -> Any:
        result = self.call()
        self.results.append(result)
        return result


def record_sampling(
    benchmark: Any,
    results: list[Any],
    *,
    preset: str,
    variant: str,
    device: torch.device | str,
    compile_: bool,
    cuda_graphs: bool,
    dtype: str,
    batch_size: int,
    peak: dict[str, Any] | None = None,
    warmup: SampleResult | None = None,
) -> dict[str, Any]:
    """Fill ``benchmark.extra_info`` from the rounds' SampleResults (the figure is their median).
    ``warmup``: the SampleResult of the untimed call that compiled and captured at this shape; its
    compile time and peak memory count (a replayed CUDA graph allocates almost nothing)."""
    last = results[-1]
    every = [*results, *([warmup] if warmup is not None else [])]
    peak_memory, warmup_seconds = largest_costs((r.peak_memory_mb, r.warmup_seconds) for r in every)
    n = len(last.images)
    per_round = [len(r.images) / r.seconds for r in results if r.seconds > 0]
    # The median of the rounds: one round's figure made unipc at 25 steps read faster than at 10 on
    # a busy CPU. A round's seconds are the loop's (sample()'s untimed warm-up forwards excluded).
    ips = statistics.median(per_round)
    info: dict[str, Any] = {
        # the variant is part of the model label: `bench report` groups rows by model/scheduler/steps
        "model": f"ddpm-unet/{preset} {variant}",
        "preset": preset,
        "variant": variant,
        "scheduler": last.scheduler,
        "steps": last.steps,
        "nfe": last.nfe,
        "n_images": n,
        "batch_size": batch_size,
        "dtype": dtype,
        "device": device_name(device),
        "compile": compile_,
        "cuda_graphs": cuda_graphs,
        "images_per_s": ips,
        "images_per_s_last": n / last.seconds,
        "s_per_image": 1.0 / ips,
        "seconds_last_round": last.seconds,
        "warmup_seconds": warmup_seconds,
        "peak_memory_mb": peak_memory,
        "rounds": len(results),
    }
    if peak is not None and preset == "seed":
        # achieved model FLOP/s against the card's dense bf16 peak (fp32 variants included:
        # the fraction then shows how far from the bf16 roofline they are)
        tflops = SEED_GFLOP_PER_IMAGE * 1e9 * last.nfe * ips / 1e12
        info["achieved_tflops"] = tflops
        info["peak_tflops_measured"] = peak["measured_tflops"]
        info["peak_tflops_nominal"] = peak["nominal_tflops"]
        info["fraction_of_measured_peak"] = tflops / peak["measured_tflops"]
        info["fraction_of_nominal_peak"] = tflops / peak["nominal_tflops"] if peak["nominal_tflops"] else None
    benchmark.extra_info.update(info)
    print_figure(info)
    return info


def print_figure(info: dict[str, Any]) -> None:
    """One line per benchmark as soon as it is measured: pytest-benchmark writes its JSON only
    when the session ends, so a run cut short (a time limit) still leaves its figures in the log."""
    share = info.get("fraction_of_measured_peak")
    print(
        f"\n[speed] {info['model']} {info['scheduler']}/{info['steps']}: {info['images_per_s']:.2f} images/s"
        + (f", {100 * share:.1f} % of measured bf16 peak" if share else ""),
        flush=True,
    )
