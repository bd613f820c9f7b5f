"""Reading a torch.profiler run: the busiest ops, time by op family, and how busy the device was.

``scripts/profile_sampling.py`` and ``scripts/profile_training.py`` profile a few steps of the
sampling loop and of the training step; both summarise their profiler run here.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from bench.atomic import atomic_write_json, atomic_write_text

# Op families, by substrings of profiler event names (first match wins; lower case).
FAMILIES = (
    # Inductor's generated kernels carry the names of every op they fused ("..._convolution_
    # native_group_norm_silu..."): a family of their own, before any op-name match.
    ("fused by inductor (norms, activations, adds)", ("triton_",)),
    ("attention", ("attention", "flash", "sdpa", "softmax", "fmha")),
    ("convolution", ("conv", "cudnn", "implicit_gemm", "winograd", "xmma_fprop", "sm90_xmma")),
    ("matmul", ("gemm", "mm", "matmul", "linear", "cutlass")),
    ("random numbers", ("normal_", "randn", "philox", "random")),  # before "norm": normal_ is RNG
    ("normalisation", ("norm", "welford", "var_mean")),
    ("copies", ("copy", "cat", "contiguous", "to_copy", "memcpy", "memset", "clone")),
    ("elementwise", ("elementwise", "add", "mul", "silu", "sigmoid", "div", "sub", "fused")),
)


def family(name: str) -> str:
    """The op family of a profiler event name ("other" when none matches)."""
    low = name.lower()
    for fam, keys in FAMILIES:
        if any(k in low for k in keys):
            return fam
    return "other"


def summarise(prof: Any, steps: int, wall_seconds: float, rows: int = 30) -> tuple[str, str, dict[str, Any]]:
    """``(device table, host table, summary)`` of a profiler run over ``steps`` steps.

    The device table lists the ops with the most self time on the GPU (on the CPU without one);
    the host table the ops with the most self CPU time, which is what the host spends a step on.
    The summary has the time per step by op family and ``device_busy_share``: device time over
    wall time. Well under 1 means the device waited, on the host or on a sync.
    """
    averages = prof.key_averages()
    # On CUDA an op row's self device time repeats the time of the kernels it launched, which have
    # rows of their own: sum the kernel rows only, so nothing is counted twice.
    kernels = [e for e in averages if getattr(e, "device_type", None) == DeviceType.CUDA]
    key = "self_device_time_total" if kernels else "self_cpu_time_total"
    events = [e for e in (kernels or averages) if getattr(e, key, 0) > 0]
    total_us = sum(getattr(e, key) for e in events) or 1.0
    by_family: dict[str, float] = {}
    for e in events:
        fam = family(e.key)
        by_family[fam] = by_family.get(fam, 0.0) + getattr(e, key)
    summary = {
        "time_basis": key,
        "wall_ms_per_step": 1e3 * wall_seconds / steps,
        "device_ms_per_step": total_us / 1e3 / steps,
        "device_busy_share": (total_us / 1e6) / wall_seconds if wall_seconds > 0 else None,
        "families": {
            fam: {"ms_per_step": t / 1e3 / steps, "share": t / total_us}
            for fam, t in sorted(by_family.items(), key=lambda kv: -kv[1])
        },
        # The busiest kernels (ops without a GPU) by their whole names, which the tables cut at 55
        # characters: an Inductor kernel's name lists the ops it fused, and its calls per step
        # tell which layers it serves (with --inductor-code, its source and its buffers' shapes).
        "kernels": [
            {
                "name": e.key,
                "family": family(e.key),
                "calls_per_step": e.count / steps,
                "us_per_call": getattr(e, key) / max(e.count, 1),
                "ms_per_step": getattr(e, key) / 1e3 / steps,
                "share": getattr(e, key) / total_us,
            }
            for e in sorted(events, key=lambda e: -getattr(e, key))[:rows]
        ],
    }
    device_table = averages.table(sort_by=key, row_limit=rows)
    host_table = averages.table(sort_by="self_cpu_time_total", row_limit=rows)
    return device_table, host_table, summary


def profile_arguments(
    description: str, *, batch: int, steps: int, steps_help: str
) -> argparse.ArgumentParser:
    """The arguments both profiling scripts take: OUT, --preset, --batch, --steps, --no-profile,
    --rows, --inductor-code."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--preset", default="seed")
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--steps", type=int, default=steps, help=steps_help)
    parser.add_argument("--no-profile", action="store_true", help="time only (no profiler run)")
    parser.add_argument("--rows", type=int, default=30, help="ops in the tables")
    parser.add_argument(
        "--inductor-code",
        action="store_true",
        help="write Inductor's generated code of the warm-up's graphs to OUT/inductor_code/ (with compile)",
    )
    return parser


@contextmanager
def inductor_code_to(out: Path, enabled: bool) -> Iterator[list[str]]:
    """With ``enabled`` (``--inductor-code``), Inductor's generated code of every graph compiled
    inside the block, or loaded from its cache, written to ``out/inductor_code/graph_N.py`` at the
    end: each file holds the graph's Triton (or C++) kernels and its ``call()``, the kernel sequence
    with every buffer's shape and stride, which a profile's kernel names alone do not give.

    It hooks ``GraphLowering.save_output_code``, the hook behind Inductor's own
    ``torch._inductor.utils.run_and_get_code``, which Inductor calls on a cache hit too."""
    codes: list[str] = []
    if not enabled:
        yield codes
        return
    from torch._inductor.graph import GraphLowering

    previous = GraphLowering.save_output_code
    GraphLowering.save_output_code = codes.append
    try:
        yield codes
    finally:
        GraphLowering.save_output_code = previous
        folder = out / "inductor_code"
        folder.mkdir(parents=True, exist_ok=True)
        for i, code in enumerate(codes):
            atomic_write_text(folder / f"graph_{i}.py", code)
        print(f"wrote {len(codes)} graph(s) of Inductor's code to {folder}")


def cuda_ms_per_call(call: Callable[[], Any], iters: int = 1, repeats: int = 10) -> list[float]:
    """Milliseconds per ``call()`` on the current CUDA device, one figure for each of ``repeats``
    rounds of ``iters`` calls, timed by CUDA events (the device's time, not the host's)."""
    rounds = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            call()
        end.record()
        end.synchronize()
        rounds.append(start.elapsed_time(end) / iters)
    return rounds


def run_setting(args: argparse.Namespace) -> dict[str, Any]:
    """The head of a profile's setting: the device, torch, and the shared arguments."""
    return {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "preset": args.preset,
        "batch": args.batch,
        "steps": args.steps,
    }


def profile_to(
    out: Path,
    setting: dict[str, Any],
    run: Callable[[], Any],
    steps: int,
    *,
    timing_only: bool,
    rows: int = 30,
) -> None:
    """Write ``out/timing.json`` (``setting``) when ``timing_only``; else run ``run`` (``steps``
    steps) once under torch.profiler and write ``profile.txt``, ``host.txt`` and ``profile.json``
    (``setting`` with the summary of ``summarise``)."""
    out.mkdir(parents=True, exist_ok=True)
    if timing_only:
        atomic_write_json(out / "timing.json", setting)
        return
    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        run()
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
    device_table, host_table, summary = summarise(prof, steps, wall, rows=rows)
    atomic_write_text(out / "profile.txt", device_table)
    atomic_write_text(out / "host.txt", host_table)
    written = {**setting, **summary}
    atomic_write_json(out / "profile.json", written)
    profile_figure(written, out / "profile.png")
    print_summary(summary)
    print(
        f"wrote {out / 'profile.txt'}, {out / 'host.txt'}, {out / 'profile.json'} and {out / 'profile.png'}"
    )


def profile_figure(profile: dict[str, Any], out_path: Path, *, target_ms: float | None = None) -> Path:
    """A bar per op family of a ``profile.json`` (ms per step) and one for the whole step's device
    time, to a PNG; ``target_ms`` marks the step time a target needs (e.g. 120 images/s)."""
    from bench.plotting import bar_chart

    families = profile.get("families", {})
    labels = [*families, "all kernels"]
    values = [v["ms_per_step"] for v in families.values()] + [profile.get("device_ms_per_step", float("nan"))]
    what = ", ".join(str(profile[k]) for k in ("device", "preset") if profile.get(k))
    batch = f", batch {profile['batch']}" if profile.get("batch") else ""
    marker = (target_ms, f"target: {target_ms:g} ms") if target_ms else None
    return bar_chart(
        labels, values, out_path, f"Where a step goes ({what}{batch})", "ms per step", marker=marker
    )


def print_summary(summary: dict[str, Any]) -> None:
    """The families and the busy share, one line each."""
    busy = summary["device_busy_share"]
    print(
        f"  {summary['wall_ms_per_step']:.1f} ms per step (profiled), device busy "
        f"{summary['device_ms_per_step']:.1f} ms ({100 * busy:.0f} %)"
    )
    for fam, v in summary["families"].items():
        print(f"  {fam:45s} {v['ms_per_step']:9.2f} ms/step  {100 * v['share']:5.1f} %")
