"""Training throughput (``measure_throughput``) and a compiled-vs-eager loss-curve check.

CPU: ``tiny`` preset, fp32 eager. GPU: the ``seed`` preset at batch 128 and 256, bf16 eager
against bf16 + channels_last + torch.compile. Images/s come from ``measure_throughput``
(synchronized, warm-up and compile excluded). The loss check trains a few steps twice from
the same seed on the same data (``bench.training._Trainer``: ``measure_throughput`` returns no
losses) and records the largest absolute difference between the two loss sequences.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import pytest
import torch
from speed_helpers import (
    SEED_GFLOP_PER_IMAGE,
    device_name,
    env_int,
    env_ints,
    env_modes,
    print_figure,
    requires_cuda,
)

from bench.training import TrainConfig, measure_throughput
from bench_builtins.datasets.base import random_dataset

CPU_TRAIN_BATCH = env_int("BENCH_CPU_TRAIN_BATCH", 8)
CPU_TRAIN_STEPS = env_int("BENCH_CPU_TRAIN_STEPS", 4)
GPU_PRESET = os.environ.get("BENCH_SPEED_PRESET", "seed")
GPU_BATCHES = env_ints("BENCH_TRAIN_BATCH", "128,256")
GPU_STEPS = env_int("BENCH_TRAIN_STEPS", 20)
GPU_WARMUP = env_int("BENCH_TRAIN_WARMUP", 5, minimum=0)
LOSS_STEPS = env_int("BENCH_TRAIN_LOSS_STEPS", 5, minimum=0)  # 0: no loss check
# mode -> (label, the TrainConfig settings of that mode). _PLAIN is eager with every switch off;
# the compiled modes set what they differ in.
_PLAIN = dict(
    compile=False,
    channels_last=False,
    cuda_graphs=False,
    force_layout_opt=False,
    autotune=False,
    tune_kernels=False,
    group_norm_by_views=False,
    group_norm_channels_last=False,
    group_norm_by_channel_stats=False,
    fold_upsample=False,
    attention_by_sums=False,
)
_COMPILED = {**_PLAIN, "compile": True, "channels_last": True, "force_layout_opt": True}
_GRAPHS = {**_COMPILED, "cuda_graphs": True}
# The label says "(layout opt forced)" itself where a mode forces it (see test_training_gpu).
TRAIN_VARIANTS: dict[str, tuple[str, dict[str, bool]]] = {
    "eager": ("bf16 eager", _PLAIN),
    "compile": ("bf16+cl+compile", _COMPILED),
    "compile-graphs": ("bf16+cl+compile+CUDA graphs", _GRAPHS),
    "compile-graphs-no-layout-opt": ("bf16+cl+compile+CUDA graphs", {**_GRAPHS, "force_layout_opt": False}),
    "compile-views": ("bf16+cl+compile, GroupNorm by views", {**_COMPILED, "group_norm_by_views": True}),
    "compile-graphs-views": (
        "bf16+cl+compile+CUDA graphs, GroupNorm by views",
        {**_GRAPHS, "group_norm_by_views": True},
    ),
    "compile-graphs-gn-cl": (
        "bf16+cl+compile+CUDA graphs, GroupNorm output channels_last",
        {**_GRAPHS, "group_norm_channels_last": True},
    ),
    "compile-graphs-gn-stats": (
        "bf16+cl+compile+CUDA graphs, GroupNorm from channel statistics",
        {**_GRAPHS, "group_norm_by_channel_stats": True},
    ),
    "autotune": ("bf16+cl+compile max-autotune", {**_COMPILED, "autotune": True}),
    "compile-graphs-tuned": ("bf16+cl+compile+CUDA graphs, kernels tuned", {**_GRAPHS, "tune_kernels": True}),
    "compile-graphs-folded": (
        "bf16+cl+compile+CUDA graphs, upsampling folded",
        {**_GRAPHS, "fold_upsample": True},
    ),
    "compile-graphs-tuned-folded": (
        "bf16+cl+compile+CUDA graphs, kernels tuned, upsampling folded",
        {**_GRAPHS, "tune_kernels": True, "fold_upsample": True},
    ),
    "compile-graphs-attn": (
        "bf16+cl+compile+CUDA graphs, attention by sums",
        {**_GRAPHS, "attention_by_sums": True},
    ),
    "compile-graphs-tuned-attn": (
        "bf16+cl+compile+CUDA graphs, kernels tuned, attention by sums",
        {**_GRAPHS, "tune_kernels": True, "attention_by_sums": True},
    ),
    # bench train's GPU default since session 28 (compile-graphs-gn-stats) with --tune-kernels
    "compile-graphs-tuned-gn-stats": (
        "bf16+cl+compile+CUDA graphs, kernels tuned, GroupNorm from channel statistics",
        {**_GRAPHS, "tune_kernels": True, "group_norm_by_channel_stats": True},
    ),
}
GPU_MODES = env_modes("BENCH_TRAIN_MODES", tuple(TRAIN_VARIANTS))
# bf16 compiled vs bf16 eager: the same arithmetic up to kernel fusion, so losses stay close.
LOSS_TOLERANCE = float(os.environ.get("BENCH_TRAIN_LOSS_TOL", "0.05"))


def loss_curve(config: TrainConfig, dataset: Any, steps: int) -> list[float]:
    """The first ``steps`` training losses of ``config`` (same seed -> same weights, data, noise)."""
    from bench.training import _Trainer

    trainer = _Trainer(replace(config, resume=False), dataset)
    batches = trainer.repeating_batches(steps)
    losses = [trainer.train_step(*next(batches)) for _ in range(steps)]
    values = [float(loss) for loss in losses]  # one host sync at the end
    del trainer, batches, losses
    release_gpu_memory()
    return values


def release_gpu_memory() -> None:
    """Free what compiled training left on the GPU before the next model is built.

    CUDA graphs keep their memory pool in torch's global graph trees, not in the trainer: at batch
    512 the `seed` preset's pool (33 GB) plus the eager bf16 reference (62 GB) overran an 80 GB H100
    (BENCHMARKS.md, session 22). ``torch._dynamo.reset`` drops the trees and their pools.
    """
    torch._dynamo.reset()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def eager_loss_curve(config: TrainConfig, dataset: Any, steps: int) -> tuple[list[float], int]:
    """An eager reference curve and its number of passes per step: where the batch does not fit
    in one (the `seed` preset took 62 GB in bf16 at batch 512 on an H100, fp32 about twice that),
    in 2, 4... micro-batches of gradient accumulation, which trains the same weights up to float
    rounding (tests/test_training.py)."""
    accum = 1
    while True:
        try:
            return loss_curve(replace(config, grad_accum=accum), dataset, steps), accum
        except torch.cuda.OutOfMemoryError:
            if 2 * accum > config.batch_size or config.batch_size % (2 * accum):
                raise
        release_gpu_memory()  # outside the except: the exception no longer holds the trainer
        accum *= 2
        dtype = "bf16" if config.bf16 else "fp32"
        print(
            f"[speed] eager {dtype} loss curve at batch {config.batch_size}: retrying in {accum} passes per step"
        )


def max_abs_diff(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def record_training(
    benchmark: Any,
    stats: dict[str, Any],
    config: TrainConfig,
    variant: str,
    steps: int,
    peak: dict[str, Any] | None = None,
) -> None:
    device = config.device or "cpu"
    if peak is not None and config.preset == "seed":
        # A training step costs about 3 forwards (backward ~ 2x forward); an estimate, EMA excluded.
        tflops = 3 * SEED_GFLOP_PER_IMAGE * 1e9 * stats["images_per_second"] / 1e12
        benchmark.extra_info["achieved_tflops"] = tflops
        benchmark.extra_info["peak_tflops_measured"] = peak["measured_tflops"]
        benchmark.extra_info["peak_tflops_nominal"] = peak["nominal_tflops"]
        benchmark.extra_info["fraction_of_measured_peak"] = tflops / peak["measured_tflops"]
        nominal = peak["nominal_tflops"]
        benchmark.extra_info["fraction_of_nominal_peak"] = tflops / nominal if nominal else None
    benchmark.extra_info.update(
        {
            # the variant is part of the model label: `bench report` groups by model/scheduler/steps
            "model": f"ddpm-unet/{config.preset} train {variant}",
            "preset": config.preset,
            "variant": variant,
            "scheduler": f"train:{config.scheduler}",
            "steps": steps,
            "images_per_s": stats["images_per_second"],
            "s_per_image": 1.0 / stats["images_per_second"],
            "seconds_per_step": stats["seconds_per_step"],
            "batch_size": config.batch_size,
            "dtype": "bf16" if config.bf16 else "fp32",
            "device": device_name(device),
            "compile": bool(config.compile),
            "channels_last": bool(config.channels_last),
            "cuda_graphs": bool(config.cuda_graphs),
            "peak_memory_mb": stats["peak_memory_mb"],
            "peak_reserved_mb": stats["peak_reserved_mb"],
        }
    )
    print_figure(benchmark.extra_info)


# ---------------------------------------------------------------- CPU, tiny preset


def test_training_cpu_tiny(benchmark: Any, tmp_path: Any) -> None:
    batch = CPU_TRAIN_BATCH
    dataset = random_dataset(2 * batch)
    config = TrainConfig(
        preset="tiny",
        batch_size=batch,
        device="cpu",
        bf16=False,
        compile=False,
        channels_last=False,
        out_dir=str(tmp_path),
    )
    stats = benchmark.pedantic(
        lambda: measure_throughput(config, dataset, steps=CPU_TRAIN_STEPS, warmup=1),
        rounds=1,
        iterations=1,
    )
    record_training(benchmark, stats, config, f"fp32 eager b{batch}", CPU_TRAIN_STEPS)
    # No compile on the CPU (an inductor C++ build takes minutes): check channels_last instead,
    # which exercises the same comparison path cheaply.
    plain = loss_curve(config, dataset, 3)
    other = loss_curve(replace(config, channels_last=True), dataset, 3)
    benchmark.extra_info["loss_plain"] = plain
    benchmark.extra_info["loss_channels_last"] = other
    benchmark.extra_info["loss_max_abs_diff"] = max_abs_diff(plain, other)
    assert stats["images_per_second"] > 0
    assert benchmark.extra_info["loss_max_abs_diff"] < 1e-3


# ---------------------------------------------------------------- GPU, seed preset


@requires_cuda
@pytest.mark.parametrize("batch", GPU_BATCHES)
@pytest.mark.parametrize("mode", GPU_MODES)
def test_training_gpu(benchmark: Any, tmp_path: Any, gpu_peak: dict, mode: str, batch: int) -> None:
    label, settings = TRAIN_VARIANTS[mode]
    compiled = settings["compile"]
    dataset = random_dataset(2 * batch)
    config = TrainConfig(
        preset=GPU_PRESET,
        batch_size=batch,
        device="cuda",
        bf16=True,
        **settings,
        out_dir=str(tmp_path),
    )
    if compiled:
        # A second batch size would otherwise recompile with a dynamic batch dimension (slower
        # kernels than a static graph): start every compiled benchmark from a clean cache.
        torch._dynamo.reset()
    stats = benchmark.pedantic(
        lambda: measure_throughput(config, dataset, steps=GPU_STEPS, warmup=GPU_WARMUP),
        rounds=1,
        iterations=1,
    )
    # Inductor's layout optimisation forced onto the backward graph (TrainConfig.force_layout_opt,
    # or TORCHINDUCTOR_FORCE_LAYOUT_OPT=1 for every compile) is a variant of its own in the tables.
    import torch._inductor.config as inductor_config

    forced_layout = config.force_layout_opt or inductor_config.force_layout_optimization
    forced = " (layout opt forced)" if compiled and forced_layout else ""
    variant = f"{label}{forced} b{batch}"
    record_training(benchmark, stats, config, variant, GPU_STEPS, gpu_peak)
    release_gpu_memory()
    if compiled and batch == GPU_BATCHES[0] and LOSS_STEPS > 0:
        # Same seed, same data, same bf16: the compiled path must follow the eager loss curve.
        fast = loss_curve(config, dataset, LOSS_STEPS)
        plain = replace(config, **_PLAIN)
        eager, eager_passes = eager_loss_curve(plain, dataset, LOSS_STEPS)
        fp32, fp32_passes = eager_loss_curve(replace(plain, bf16=False), dataset, LOSS_STEPS)
        benchmark.extra_info.update(
            {
                "loss_compiled": fast,
                "loss_eager_bf16": eager,
                "loss_eager_bf16_passes_per_step": eager_passes,
                "loss_eager_fp32": fp32,
                "loss_eager_fp32_passes_per_step": fp32_passes,
                "loss_max_abs_diff": max_abs_diff(fast, eager),
                "loss_max_abs_diff_vs_fp32": max_abs_diff(fast, fp32),
                "loss_tolerance": LOSS_TOLERANCE,
            }
        )
        assert benchmark.extra_info["loss_max_abs_diff"] < LOSS_TOLERANCE, benchmark.extra_info
