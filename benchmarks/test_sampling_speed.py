"""Sampling throughput: every scheduler on the CPU (tiny preset), and the fast path on the GPU.

CPU: ``tiny`` UNet (random weights), each scheduler at each step count, with the CPU default of
``SamplingOptions``: channels_last, and bf16 autocast on a CPU with AMX, else fp32.
GPU: the ``seed`` preset (113.7 M parameters, 31 GFLOP per image per forward) at 100 cosine
steps, from the one-image-at-a-time reference loop to bf16 + channels_last + compile + CUDA
graphs, with the fraction of the card's dense bf16 peak each variant reaches.

The figure of a benchmark is the LAST round's ``SampleResult.seconds`` (synchronized inside
``sample()``, compile and graph capture excluded); the median over rounds is kept beside it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from speed_helpers import (
    CPU_SCHEDULERS,
    RoundLog,
    env_int,
    env_ints,
    env_list,
    env_modes,
    make_conditions,
    make_model,
    record_sampling,
    requires_cuda,
    sync,
)

from bench.sampling import SamplingOptions, plain_reference_loop, sample

CPU_SCHEDULER_NAMES = env_list("BENCH_CPU_SCHEDULERS", ",".join(CPU_SCHEDULERS))
CPU_STEPS = env_ints("BENCH_CPU_STEPS", "10,25")
CPU_BATCH = env_int("BENCH_CPU_BATCH", 8)
CPU_ROUNDS = env_int("BENCH_CPU_ROUNDS", 2)
GPU_PRESET = os.environ.get("BENCH_SPEED_PRESET", "seed")
GPU_BATCHES = env_ints("BENCH_SPEED_BATCH", "256")
GPU_STEPS = env_int("BENCH_SPEED_STEPS", 100)
GPU_ROUNDS = env_int("BENCH_SPEED_ROUNDS", 3)
REF_IMAGES = env_int("BENCH_SPEED_REF_IMAGES", 2)
# mode -> (label, the SamplingOptions of that mode but its batch size). Only "bf16-cudnn" times
# cuDNN's algorithms (cudnn.benchmark); the others keep its heuristics, the default.
# The GPU default until session 26, with torch's attention kernel: the modes keep their meaning
# across sessions. Session 26's default adds attention by sums (the "-attn" modes), today's also
# GroupNorm from channel statistics (the "-attn-gn-stats" modes), session 36's also the Triton end
# convolutions and noise drawn ahead (the "-ends-ahead" modes).
_FAST = dict(
    dtype="bf16",
    channels_last=True,
    compile=True,
    cuda_graphs=True,
    attention_by_sums=False,
    group_norm_by_channel_stats=False,
    triton_end_convs=False,
    noise_ahead=False,
)
_GPU_OPTIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "fp32": ("fp32", dict(dtype="fp32", channels_last=False, compile=False, cuda_graphs=False)),
    "bf16": ("bf16 eager", dict(dtype="bf16", channels_last=False, compile=False, cuda_graphs=False)),
    "bf16-cudnn": (
        "bf16 eager+cudnn.benchmark",
        dict(dtype="bf16", channels_last=False, compile=False, cuda_graphs=False, cudnn_benchmark=True),
    ),
    "compile": ("bf16+cl+compile", {**_FAST, "cuda_graphs": False}),
    "graphs": ("bf16+cl+compile+graphs", _FAST),
    "graphs-nchw": ("bf16+compile+graphs (NCHW)", {**_FAST, "channels_last": False}),
    "graphs-views": ("bf16+cl+compile+graphs, GroupNorm by views", {**_FAST, "group_norm_by_views": True}),
    "autotune": ("bf16+cl+compile+graphs max-autotune", {**_FAST, "autotune": True}),
    "graphs-tuned": ("bf16+cl+compile+graphs, kernels tuned", {**_FAST, "tune_kernels": True}),
    "graphs-folded": ("bf16+cl+compile+graphs, upsampling folded", {**_FAST, "fold_upsample": True}),
    "graphs-tuned-folded": (
        "bf16+cl+compile+graphs, kernels tuned, upsampling folded",
        {**_FAST, "tune_kernels": True, "fold_upsample": True},
    ),
    "graphs-attn": ("bf16+cl+compile+graphs, attention by sums", {**_FAST, "attention_by_sums": True}),
    "graphs-tuned-attn": (
        "bf16+cl+compile+graphs, kernels tuned, attention by sums",
        {**_FAST, "tune_kernels": True, "attention_by_sums": True},
    ),
    "graphs-attn-gn-stats": (
        "bf16+cl+compile+graphs, attention by sums, GroupNorm from channel statistics",
        {**_FAST, "attention_by_sums": True, "group_norm_by_channel_stats": True},
    ),
    "graphs-tuned-attn-gn-stats": (
        "bf16+cl+compile+graphs, kernels tuned, attention by sums, GroupNorm from channel statistics",
        {**_FAST, "tune_kernels": True, "attention_by_sums": True, "group_norm_by_channel_stats": True},
    ),
    "graphs-tuned-folded-attn": (
        "bf16+cl+compile+graphs, kernels tuned, upsampling folded, attention by sums",
        {**_FAST, "tune_kernels": True, "fold_upsample": True, "attention_by_sums": True},
    ),
}
# Session 27's default, untuned and tuned, with more switches: mode suffix -> (label words, settings).
# "-ends-ahead" is session 36's default; "-frozen-ends-ahead" with --tune-kernels the fastest.
_ENDS_AHEAD = {"triton_end_convs": True, "noise_ahead": True}
_ON_TODAYS_DEFAULT = {
    "padded": ("thin convolutions padded", {"pad_thin_convs": True}),
    "frozen": ("weights frozen", {"freeze_weights": True}),
    "ends-ahead": ("end convolutions by Triton, noise drawn ahead", _ENDS_AHEAD),
    "frozen-ends-ahead": (
        "weights frozen, end convolutions by Triton, noise drawn ahead",
        {"freeze_weights": True, **_ENDS_AHEAD},
    ),
}
for _base in ("graphs-attn-gn-stats", "graphs-tuned-attn-gn-stats"):
    _label, _settings = _GPU_OPTIONS[_base]
    for _suffix, (_words, _extra) in _ON_TODAYS_DEFAULT.items():
        _GPU_OPTIONS[f"{_base}-{_suffix}"] = (f"{_label}, {_words}", {**_settings, **_extra})
# Every mode, in that order after the one-image reference loop; BENCH_SPEED_MODES picks some.
GPU_MODES = ("reference", *_GPU_OPTIONS)
_MODES = env_modes("BENCH_SPEED_MODES", GPU_MODES)
BATCHED_MODES = [m for m in _MODES if m != "reference"]


# ---------------------------------------------------------------- CPU, tiny preset


@pytest.fixture(scope="module")
def tiny_cpu() -> torch.nn.Module:
    model = make_model("tiny")
    with torch.inference_mode():  # first-call allocations and oneDNN primitive setup off the clock
        model(torch.zeros(1, 3, 64, 64), torch.zeros(1, dtype=torch.long), torch.zeros(1, 24))
    return model


@pytest.mark.parametrize("steps", CPU_STEPS)
@pytest.mark.parametrize("scheduler", CPU_SCHEDULER_NAMES)
def test_sampling_cpu_tiny(
    benchmark: Any, tiny_cpu: torch.nn.Module, cosine_noise: dict, scheduler: str, steps: int
) -> None:
    conds = make_conditions(CPU_BATCH)
    options = SamplingOptions(batch_size=CPU_BATCH).resolved("cpu")  # the CPU default: bf16 with AMX
    run = RoundLog(
        lambda: sample(
            tiny_cpu, scheduler, conds, train_config=cosine_noise, steps=steps, device="cpu", options=options
        )
    )
    benchmark.pedantic(run, rounds=CPU_ROUNDS, iterations=1, warmup_rounds=0)
    info = record_sampling(
        benchmark,
        run.results,
        preset="tiny",
        variant=f"{options.dtype}+cl b{CPU_BATCH}",
        device="cpu",
        compile_=False,
        cuda_graphs=False,
        dtype=options.dtype,
        batch_size=CPU_BATCH,
    )
    info["threads"] = torch.get_num_threads()
    benchmark.extra_info["threads"] = info["threads"]
    assert run.results[-1].images.shape == (CPU_BATCH, 3, 64, 64)
    assert torch.isfinite(run.results[-1].images).all()


# ---------------------------------------------------------------- GPU, seed preset


@pytest.fixture(scope="module")
def gpu_model() -> Iterator[torch.nn.Module]:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    model = make_model(GPU_PRESET).to("cuda")
    yield model
    # Free the compiled graphs and CUDA-graph pools before the training benchmarks need the memory.
    del model
    torch._dynamo.reset()
    torch.cuda.empty_cache()


@requires_cuda
def test_sampling_gpu_reference_loop(
    benchmark: Any, gpu_model: torch.nn.Module, cosine_noise: dict, gpu_peak: dict
) -> None:
    """(a) the course-style loop: one image at a time, fp32 eager (only a few images: it is slow)."""
    if "reference" not in _MODES:
        pytest.skip("BENCH_SPEED_MODES leaves out 'reference'")
    conds = make_conditions(REF_IMAGES).to("cuda")
    plain_reference_loop(gpu_model, "cosine", conds[:1], train_config=cosine_noise, steps=2, device="cuda")
    run = RoundLog(
        lambda: plain_reference_loop(
            gpu_model, "cosine", conds, train_config=cosine_noise, steps=GPU_STEPS, device="cuda"
        )
    )
    benchmark.pedantic(run, rounds=max(1, GPU_ROUNDS - 1), iterations=1, warmup_rounds=0)
    record_sampling(
        benchmark,
        run.results,
        preset=GPU_PRESET,
        variant="reference loop fp32 b1",
        device="cuda",
        compile_=False,
        cuda_graphs=False,
        dtype="fp32",
        batch_size=1,
        peak=gpu_peak,
    )


@requires_cuda
@pytest.mark.parametrize("batch", GPU_BATCHES)
@pytest.mark.parametrize("mode", BATCHED_MODES)
def test_sampling_gpu(
    benchmark: Any, gpu_model: torch.nn.Module, cosine_noise: dict, gpu_peak: dict, mode: str, batch: int
) -> None:
    """(b) fp32 batched, (c) bf16 eager, (d) + channels_last + compile, (e) + CUDA graphs."""
    label, settings = _GPU_OPTIONS[mode]
    options = SamplingOptions(batch_size=batch, **settings).resolved("cuda")
    if not options.channels_last:
        gpu_model.to(memory_format=torch.contiguous_format)  # an earlier variant may have converted it
    conds = make_conditions(batch)
    # Warm-up off the clock: a 2-step run compiles / captures graphs at the same batch shape.
    warm = sample(
        gpu_model, "cosine", conds, train_config=cosine_noise, steps=2, device="cuda", options=options
    )
    sync("cuda")
    run = RoundLog(
        lambda: sample(
            gpu_model,
            "cosine",
            conds,
            train_config=cosine_noise,
            steps=GPU_STEPS,
            device="cuda",
            options=options,
        )
    )
    benchmark.pedantic(run, rounds=GPU_ROUNDS, iterations=1, warmup_rounds=0)
    record_sampling(
        benchmark,
        run.results,
        preset=GPU_PRESET,
        variant=f"{label} b{batch}",
        device="cuda",
        compile_=options.compile,
        cuda_graphs=options.cuda_graphs,
        dtype=options.dtype,
        batch_size=batch,
        peak=gpu_peak,
        warmup=warm,
    )
    assert torch.isfinite(run.results[-1].images).all()
