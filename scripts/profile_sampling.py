"""Where the sampling loop's time goes: torch.profiler over a few steps of the fast path.

Profiles ``bench.sampling.sample`` (the one loop every run uses) on a random-weight ``ddpm-unet``
after an untimed warm-up, and writes:

- ``OUT_DIR/profile.txt``: the ops with the most self time on the device (CUDA), or on the CPU
  without one, as torch.profiler's table;
- ``OUT_DIR/profile.json``: the same time summed by op family (convolution, matmul, attention,
  normalisation, elementwise, copies, random numbers, other), each with its share, plus the
  setting and the wall time per step.

CUDA graphs are off by default: a captured graph replays as one launch and hides its kernels from
the profiler; ``--cuda-graphs`` profiles the default fast path as it runs (then expect the kernels
to be missing and the host gaps between replays to be what is left).

The unprofiled images/s (a second, unprofiled run after the warm-up) is reported beside the
profiled one: the profiler itself slows the host side.

Usage: python scripts/profile_sampling.py OUT_DIR [--preset seed] [--batch 256] [--steps 10]
       [--scheduler cosine] [--guidance 1] [--no-compile] [--cuda-graphs] [--dtype bf16|fp32]
       [--no-channels-last] [--group-norm-by-views] [--inductor KEY=VALUE ...] [--no-profile]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from bench.atomic import atomic_write_json, atomic_write_text
from bench.conditions import load_condition_set, load_labels_spec, multi_hot
from bench.noise import noise_config
from bench.plugins import get
from bench.runner import DEFAULT_CONDITION_FILES
from bench.sampling import SamplingOptions, sample

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
    low = name.lower()
    for fam, keys in FAMILIES:
        if any(k in low for k in keys):
            return fam
    return "other"


def conditions_for(batch: int) -> torch.Tensor:
    """The shipped test + new_test conditions, repeated to ``batch`` rows (real label mixes)."""
    labels = load_labels_spec()
    rows = [c for f in DEFAULT_CONDITION_FILES for c in load_condition_set(f, labels).conditions]
    return multi_hot([rows[i % len(rows)] for i in range(batch)], labels)


# The attention kernels torch can run scaled_dot_product_attention with, by their switches. The
# seed UNet's attention (16 tokens at 4x4, 64 heads of 8 channels) took 5.1 ms of a 60 ms step
# through cuDNN's flash kernel on an H100 (session 5).
SDPA_BACKENDS = {
    "math": torch.backends.cuda.enable_math_sdp,
    "flash": torch.backends.cuda.enable_flash_sdp,
    "efficient": torch.backends.cuda.enable_mem_efficient_sdp,
    "cudnn": torch.backends.cuda.enable_cudnn_sdp,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--preset", default="seed")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10, help="sampling steps profiled")
    parser.add_argument("--scheduler", default="cosine")
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default=None)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--cuda-graphs", action="store_true")
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--group-norm-by-views", action="store_true")
    parser.add_argument(
        "--inductor",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a torch._inductor.config setting",
    )
    parser.add_argument(
        "--sdpa",
        choices=tuple(SDPA_BACKENDS),
        default="auto",
        help="the only attention backend torch may pick (auto: torch's choice)",
    )
    parser.add_argument("--no-profile", action="store_true", help="time only (no profiler run)")
    parser.add_argument("--rows", type=int, default=30, help="ops in profile.txt")
    args = parser.parse_args()
    inductor = {}
    for item in args.inductor:
        key, _, value = item.partition("=")
        inductor[key] = json.loads(value)
        setattr(torch._inductor.config, key, inductor[key])

    if args.sdpa != "auto":
        # Set before compiling: the backend is chosen when the graph is traced.
        for name, enable in SDPA_BACKENDS.items():
            enable(name == args.sdpa)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(0)
    model = get("models", "ddpm-unet").factory(preset=args.preset).eval().to(device)
    options = SamplingOptions(
        dtype=args.dtype,
        compile=not args.no_compile and cuda,
        cuda_graphs=args.cuda_graphs and cuda,
        batch_size=args.batch,
        channels_last=not args.no_channels_last,
        group_norm_by_views=args.group_norm_by_views,
    )
    conds = conditions_for(args.batch)
    train_config = noise_config(args.scheduler if args.scheduler in ("cosine", "linear") else "cosine")
    kwargs = dict(train_config=train_config, steps=args.steps, guidance=args.guidance, options=options)

    sample(model, args.scheduler, conds, **kwargs)  # warm-up: compile, autotune, allocator
    unprofiled = sample(model, args.scheduler, conds, **kwargs)
    setting = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
        "preset": args.preset,
        "batch": args.batch,
        "steps": args.steps,
        "scheduler": args.scheduler,
        "guidance": args.guidance,
        "options": {
            k: getattr(unprofiled.options, k)
            for k in ("dtype", "channels_last", "compile", "cuda_graphs", "group_norm_by_views")
        },
        "inductor": inductor,
        "sdpa": args.sdpa,
        "images_per_s_unprofiled": unprofiled.images_per_second,
        "ms_per_step_unprofiled": 1e3 * unprofiled.seconds / args.steps,
    }
    print(
        f"{setting['device']} {setting['options']} {inductor} sdpa {args.sdpa}: {unprofiled.images_per_second:.1f} images/s "
        f"unprofiled, {setting['ms_per_step_unprofiled']:.1f} ms/step"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    if args.no_profile:
        atomic_write_json(args.out / "timing.json", setting)
        return
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        result = sample(model, args.scheduler, conds, **kwargs)
        wall = time.perf_counter() - start

    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    averages = prof.key_averages()
    # On CUDA an op row's self device time repeats the time of the kernels it launched, which have
    # rows of their own: sum the kernel rows only, so nothing is counted twice.
    kernels = [e for e in averages if getattr(e, "device_type", None) == DeviceType.CUDA]
    events = [e for e in (kernels or averages) if getattr(e, key, 0) > 0]
    total = sum(getattr(e, key) for e in events) or 1.0
    by_family: dict[str, float] = {}
    for e in events:
        fam = family(e.key)
        by_family[fam] = by_family.get(fam, 0.0) + getattr(e, key)
    table = averages.table(sort_by=key, row_limit=args.rows)
    atomic_write_text(args.out / "profile.txt", table)
    summary = {
        **setting,
        "images_per_s": result.images_per_second,
        "wall_s_per_step": wall / args.steps,
        "time_basis": key,
        "total_ms": total / 1e3,
        "families": {
            fam: {"ms": t / 1e3, "share": t / total}
            for fam, t in sorted(by_family.items(), key=lambda kv: -kv[1])
        },
    }
    atomic_write_json(args.out / "profile.json", summary)
    print(
        f"{summary['device']}: {summary['images_per_s']:.1f} images/s, {1e3 * summary['wall_s_per_step']:.1f} ms/step"
    )
    for fam, v in summary["families"].items():
        print(f"  {fam:15s} {v['ms']:10.1f} ms  {100 * v['share']:5.1f} %")
    print(f"wrote {args.out / 'profile.txt'} and {args.out / 'profile.json'}")


if __name__ == "__main__":
    main()
