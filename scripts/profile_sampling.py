"""Where the sampling loop's time goes: torch.profiler over a few steps of the fast path.

Profiles ``bench.sampling.sample`` (the one loop every run uses) on a random-weight ``ddpm-unet``
after an untimed warm-up, and writes:

- ``OUT_DIR/profile.txt``: the ops with the most self time on the device (CUDA), or on the CPU
  without one, as torch.profiler's table;
- ``OUT_DIR/host.txt``: the ops with the most self CPU time (what the host spends a step on);
- ``OUT_DIR/profile.json``: the time per step summed by op family (convolution, matmul, attention,
  normalisation, elementwise, copies, random numbers, other), each with its share, the device's
  busy time per step against the wall time (``bench/profiling.py``), plus the setting.

CUDA graphs are off by default: a captured graph replays as one launch and hides its kernels from
the profiler; ``--cuda-graphs`` profiles the default fast path as it runs (then expect the kernels
to be missing and the host gaps between replays to be what is left).

The unprofiled time per step and images/s (a second, unprofiled run after the warm-up) are
reported beside the profiled time per step: the profiler itself slows the host side.

Two settings can compile side by side and still be timed one at a time on the same GPU: each
run's ``--ready-file`` appears once it has compiled, and ``--time-after FILE`` holds the timed
run until FILE exists (at most ``--wait-max`` seconds; the setting records whether it came).
``scripts/tuning_pair.sh`` pairs two runs that way.

Usage: python scripts/profile_sampling.py OUT_DIR [--preset seed] [--batch 256] [--steps 10]
       [--images N] [--scheduler cosine] [--guidance 1] [--no-compile] [--cuda-graphs] [--dtype bf16|fp32]
       [--no-channels-last] [--group-norm-by-views] [--[no-]group-norm-by-channel-stats] [--fold-upsample] [--pad-thin-convs] [--freeze-weights] [--[no-]noise-ahead] [--[no-]triton-end-convs]
       [--[no-]attention-by-sums] [--tune-kernels] [--autotune] [--cudnn-benchmark] [--inductor KEY=VALUE ...]
       [--no-profile] [--ready-file FILE] [--time-after FILE] [--wait-max SECONDS] [--inductor-code]

``--inductor-code`` also writes ``OUT_DIR/inductor_code/graph_N.py``: the code Inductor generated for
each compiled graph (its kernels, and the call sequence with each buffer's shape), to tell which
layer a fused kernel of ``profile.json``'s ``kernels`` serves.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from bench.conditions import load_condition_set, load_labels_spec, multi_hot
from bench.noise import noise_config
from bench.plugins import get
from bench.profiling import inductor_code_to, profile_arguments, profile_to, run_setting
from bench.runner import DEFAULT_CONDITION_FILES
from bench.sampling import SamplingOptions, sample


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


def wait_for(path: Path, seconds: float) -> bool:
    """Block until ``path`` exists or ``seconds`` have passed; whether it came."""
    deadline = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(1.0)
    return path.exists()


def main() -> None:
    parser = profile_arguments(
        __doc__.splitlines()[0], batch=256, steps=10, steps_help="sampling steps timed, then profiled"
    )
    parser.add_argument("--scheduler", default="cosine")
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument(
        "--images", type=int, default=None, help="images sampled, in chunks of --batch (default: one batch)"
    )
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default=None)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--cuda-graphs", action="store_true")
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--group-norm-by-views", action="store_true")
    parser.add_argument(
        "--group-norm-by-channel-stats",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bench/groupnorm.py (default: bench run's, on when compiling on CUDA without views)",
    )
    parser.add_argument("--fold-upsample", action="store_true", help="bench/upsample.py")
    parser.add_argument("--pad-thin-convs", action="store_true", help="bench/padded_conv.py")
    parser.add_argument("--freeze-weights", action="store_true", help="Inductor's freezing (needs compile)")
    parser.add_argument(
        "--triton-end-convs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bench/end_convs.py (default: bench run's, on when compiling on CUDA in bf16)",
    )
    parser.add_argument(
        "--noise-ahead",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bench/step_noise.py (default: bench run's, on when compiling on CUDA)",
    )
    parser.add_argument(
        "--attention-by-sums",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bench/attention.py (default: bench run's, on when compiling on CUDA)",
    )
    parser.add_argument("--tune-kernels", action="store_true", help="Inductor's coordinate-descent tuning")
    parser.add_argument(
        "--cudnn-benchmark", action="store_true", help="cuDNN's algorithms timed per shape (bench run's flag)"
    )
    parser.add_argument(
        "--autotune", action="store_true", help="max-autotune: Triton templates timed against cuDNN per shape"
    )
    parser.add_argument("--ready-file", type=Path, default=None, help="created once compiled")
    parser.add_argument("--time-after", type=Path, default=None, help="time only once this file exists")
    parser.add_argument("--wait-max", type=float, default=600.0, help="the longest wait for --time-after")
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
    compile_ = not args.no_compile and cuda
    options = SamplingOptions(
        dtype=args.dtype,
        compile=compile_,
        cuda_graphs=args.cuda_graphs and compile_,  # graphs capture the compiled forward
        batch_size=args.batch,
        channels_last=not args.no_channels_last,
        group_norm_by_views=args.group_norm_by_views,
        group_norm_by_channel_stats=args.group_norm_by_channel_stats,
        fold_upsample=args.fold_upsample,
        pad_thin_convs=args.pad_thin_convs,
        freeze_weights=args.freeze_weights and compile_,
        noise_ahead=args.noise_ahead,
        triton_end_convs=args.triton_end_convs,
        attention_by_sums=args.attention_by_sums,
        tune_kernels=args.tune_kernels and compile_,
        autotune=args.autotune and compile_,
        cudnn_benchmark=args.cudnn_benchmark,
    )
    images = args.images or args.batch
    if images % args.batch:  # a padded last chunk would time images that are thrown away
        parser.error(f"--images {images} is not a multiple of --batch {args.batch}")
    conds = conditions_for(images)
    train_config = noise_config(args.scheduler if args.scheduler in ("cosine", "linear") else "cosine")
    kwargs = dict(train_config=train_config, steps=args.steps, guidance=args.guidance, options=options)

    start = time.perf_counter()
    with inductor_code_to(args.out, args.inductor_code):
        sample(model, args.scheduler, conds, **kwargs)  # warm-up: compile, autotune, allocator
    warmup_seconds = time.perf_counter() - start
    if args.ready_file:
        args.ready_file.touch()
    waited = wait_for(args.time_after, args.wait_max) if args.time_after else None
    timed_at = time.time()
    unprofiled = sample(model, args.scheduler, conds, **kwargs)
    setting = {
        **run_setting(args),
        "scheduler": args.scheduler,
        "guidance": args.guidance,
        # every resolved switch (the batch is the setting's own)
        "options": {k: v for k, v in asdict(unprofiled.options).items() if k != "batch_size"},
        "warmup_seconds": warmup_seconds,
        # None: timed at once; True: after --time-after's file came; False: after --wait-max without it
        "timed_after_file": waited,
        "timed_at": timed_at,  # wall clock when the unprofiled run began
        "inductor": inductor,
        "sdpa": args.sdpa,
        "images_per_s_unprofiled": unprofiled.images_per_second,
        "images": images,
        # per step of one chunk (of --batch images)
        "ms_per_step_unprofiled": 1e3 * unprofiled.seconds / (args.steps * (images // args.batch)),
    }
    print(
        f"{setting['device']} {setting['options']} {inductor} sdpa {args.sdpa}: {unprofiled.images_per_second:.1f} images/s "
        f"unprofiled, {setting['ms_per_step_unprofiled']:.1f} ms/step"
    )
    # The profiled call compiles nothing but still runs sample()'s warm-up calls (three per batch
    # shape when compiling): counted with the steps, so "per step" is per model call of one chunk.
    # Until session 26 they were left out, and every ms per step was 8/5 of the truth at --steps 5.
    profile_to(
        args.out,
        setting,
        lambda: sample(model, args.scheduler, conds, **kwargs),
        args.steps * (images // args.batch) + unprofiled.extra["warmup_calls"],
        timing_only=args.no_profile,
        rows=args.rows,
    )


if __name__ == "__main__":
    main()
