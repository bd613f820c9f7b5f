"""The training loop: epsilon-prediction MSE with EMA, CFG dropout, bf16, checkpoints, exact resume.

Determinism, and so exact resume: the data order of epoch ``e`` is a permutation seeded by
(seed, e), and every random draw of step ``s`` (timesteps, noise, condition dropout, flips)
comes from a generator seeded by (seed, s), drawn for the global batch. A checkpoint stores the step, the epoch and
the position in it, the optimizer, lr-schedule and EMA states (and the global RNG states), so
``resume=True`` continues with the same weights an uninterrupted run would have (bit-exact on
CPU; on GPU up to non-deterministic kernels).

Multi-GPU: under ``accelerate launch`` (or with an ``accelerate.Accelerator`` passed in) the
model is wrapped in DDP; ``batch_size`` is the GLOBAL batch, split across processes, so a run
sees the same data whatever the number of GPUs. Only the main process writes files.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.atomic import atomic_write_text, why_unwritable
from bench.attention import use_attention_by_sums
from bench.checkpoints import (
    CheckpointError,
    check_step_records,
    load_checkpoint,
    read_checkpoint_config,
    readable,
    save_checkpoint,
    tidy_killed_saves,
    unwrap_model,
)
from bench.compile_mode import (
    compile_only_switch_error,
    compile_options,
    compile_wait_note,
    quiet_known_compile_warnings,
)
from bench.distributed import (
    accelerate_cpu,
    largest,
    launch_size,
    main_process,
    mean_over_processes,
    resolve_device,
)
from bench.distributed import launched as _under_accelerate
from bench.groupnorm import resolved_group_norm, use_group_norm
from bench.interrupt import StopRequest, ignore_stop_signals
from bench.noise import noise_config
from bench.upsample import use_folded_upsample

CHECKPOINT_DIR = "checkpoint"
LOSS_LOG = "loss.jsonl"
LOSS_PLOT = "loss.png"


class TrainingError(Exception):
    """Training cannot go on (diverged, out of memory, bad config); the message says what to do."""


class TrainingOptionError(TrainingError, ValueError):
    """An option value the trainer cannot use (``--scheduler ddim``): a TrainingError, so ``bench train``
    prints one line, and still the ValueError that callers of ``noise_config`` caught before."""


@dataclass
class TrainConfig:
    """Everything that changes what training produces. ``None`` = the device default."""

    model: str = "ddpm-unet"
    preset: str | None = "small"
    model_options: dict[str, Any] = field(default_factory=dict)  # overrides of the preset
    scheduler: str = "cosine"  # the training noise schedule (a scheduler with noise_schedule)
    num_train_timesteps: int = 1000
    # What the network predicts: "epsilon" (the reference) or "v_prediction". v keeps the target
    # well scaled at low SNR, where an epsilon model's x0 = (x_t - sqrt(1-a) eps) / sqrt(a) turns
    # tiny errors in the noise's image mean into tinted backgrounds (seen on the `small` preset).
    prediction_type: str = "epsilon"
    # Min-SNR-gamma loss weighting (Hang et al. 2023): each timestep's loss is weighted as if the
    # target were x0 with weight min(SNR, gamma), so the many nearly clean timesteps stop pulling
    # the shared weights away from the noisy ones where the layout of a scene is decided.
    # None (or 0): the plain MSE on the target.
    min_snr_gamma: float | None = None
    lr: float = 2e-4
    # after warm-up: "constant", or "cosine": decay to 0 at whichever budget ends the run first,
    # steps (max_steps/epochs) or wall time (max_minutes)
    lr_schedule: str = "constant"
    warmup_steps: int = 500
    weight_decay: float = 0.0
    batch_size: int = 128  # global, over all processes
    # Each process's share of the batch in this many forward/backward passes, one optimizer step:
    # the same training (up to float rounding; the noise is drawn for the whole batch) in 1/N of
    # the activation memory. Not a trajectory option: a resume may change it.
    grad_accum: int = 1
    epochs: int | None = None  # stop at the first of epochs / max_steps / max_minutes
    max_steps: int | None = 20_000
    # wall-time budget of the training loop, summed over resumed runs (the checkpoint keeps the
    # seconds trained so far; the data loading and model building before the loop are not counted)
    max_minutes: float | None = None
    ema_decay: float | None = 0.999  # None or 0: no EMA
    cond_drop_prob: float = 0.1  # classifier-free guidance training: null condition (zeros)
    grad_clip: float | None = 1.0
    hflip: bool = True  # labels do not depend on left/right
    bf16: bool | None = None  # autocast; default on CUDA
    compile: bool | None = None  # torch.compile the model; default on CUDA
    autotune: bool = False  # compile with max-autotune (Triton templates timed per shape)
    tune_kernels: bool = False  # Inductor's coordinate-descent tuning of its kernels (with compile)
    # CUDA graphs of the compiled forward and backward (one launch each, so the step no longer waits
    # on the host launching kernels); default on when compiling on one CUDA GPU (BENCHMARKS.md,
    # session 8: 1,715 against 1,522 images/s for the seed preset at batch 128 on an H100)
    cuda_graphs: bool | None = None
    # Inductor's channels_last layout optimisation forced onto the backward graph too
    # (bench/compile_mode.py; with compile only)
    force_layout_opt: bool = True
    channels_last: bool | None = None  # default on CUDA
    group_norm_by_views: bool = False  # bench/groupnorm.py: for torch.compile on channels_last
    # GroupNorm's output kept channels_last (bench/groupnorm.py), so the backward graph's
    # convolutions get one layout; off: measured without force_layout_opt only (BENCHMARKS.md)
    group_norm_channels_last: bool = False
    # GroupNorm from per-channel statistics (bench/groupnorm.py): channels_last reduced contiguously.
    # Default on when compiling on CUDA with no other GroupNorm variant asked for (2,963 against
    # 2,392 images/s for the seed preset at batch 512 on an H100, BENCHMARKS.md session 28).
    group_norm_by_channel_stats: bool | None = None
    # Upsampling as one 2x2 convolution on the small input (bench/upsample.py): the same gradients,
    # 4/9 of the upsampling convolutions' FLOPs forward and backward
    fold_upsample: bool = False
    # Few-token attention as products and sums (bench/attention.py): the same gradients; in sampling
    # 1.04x on an H100 compiled (session 26), in training not yet timed, so off here
    attention_by_sums: bool = False
    seed: int = 0
    checkpoint_every: int = 1000  # steps; a checkpoint is also written at the end
    log_every: int = 25  # steps between loss log lines (and the NaN check)
    out_dir: str = "runs/train"
    resume: bool = False
    device: str | None = None  # default: the accelerator's device, else cuda if available, else cpu
    num_workers: int = 2  # DataLoader workers, for datasets without images_uint8()
    recipe: str = "default"
    init_from: str | None = None  # start from these weights (a checkpoint or shipped file): fine-tuning
    # What the run trains on (`bench train --data/--data-root/--scenes`), recorded in train_config.json
    # and the checkpoint so a model says what it was trained on; train() reads the dataset it is
    # given, not these. None: not stated (older checkpoints, or a caller that passes only a dataset).
    data: str | None = None
    data_root: str | None = None  # the folder, as an absolute path
    data_options: dict[str, Any] = field(default_factory=dict)  # e.g. {"scenes": 6003}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TrainingError(
                f"unknown training option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**data)

    def check(self) -> None:
        """Refuse values that cannot train, naming the `bench train` option, before any work."""

        def positive(value: float | None) -> bool:
            return value is None or (math.isfinite(value) and value > 0)

        problems = [
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (self.grad_accum >= 1, f"--grad-accum must be at least 1, got {self.grad_accum}"),
            (math.isfinite(self.lr) and self.lr >= 0, f"--lr must be a number, 0 or more, got {self.lr}"),
            (self.epochs is None or self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
            (
                self.max_steps is None or self.max_steps >= 1,
                f"--max-steps must be at least 1, got {self.max_steps}",
            ),
            (positive(self.max_minutes), f"--max-minutes must be more than 0, got {self.max_minutes}"),
            (self.warmup_steps >= 0, f"--warmup-steps must be 0 or more, got {self.warmup_steps}"),
            (
                self.num_train_timesteps >= 2,
                f"--timesteps must be at least 2, got {self.num_train_timesteps}",
            ),
            (
                self.ema_decay is None or 0 <= self.ema_decay < 1,
                f"--ema must be in [0, 1) (0: no EMA; 0.999 typical), got {self.ema_decay}",
            ),
            (
                0 <= self.cond_drop_prob < 1,
                f"--cond-drop must be in [0, 1) (0.1 typical), got {self.cond_drop_prob}",
            ),
            (
                self.min_snr_gamma is None or self.min_snr_gamma >= 0,
                f"--min-snr-gamma must be 0 (off) or more, got {self.min_snr_gamma}",
            ),
            (positive(self.grad_clip), f"the gradient clip must be a positive number, got {self.grad_clip}"),
            (self.weight_decay >= 0, f"the weight decay must be 0 or more, got {self.weight_decay}"),
            (
                self.checkpoint_every >= 0,
                f"--checkpoint-every must be 0 (only at the end) or more, got {self.checkpoint_every}",
            ),
            (self.log_every >= 1, f"log_every must be at least 1, got {self.log_every}"),
            (self.num_workers >= 0, f"num_workers must be 0 or more, got {self.num_workers}"),
        ]
        for ok, message in problems:
            if not ok:
                raise TrainingError(message)
        # The device and the noise schedule too: `bench train` checks before it reads the data, so
        # --device foo or --scheduler ddim is one line at once, not a traceback after the dataset
        # renders (minutes for the synthetic set).
        resolve_device(self.device or "auto")
        _noise_config(self)

    @classmethod
    def from_recipe(cls, name: str = "default", **overrides: Any) -> TrainConfig:
        """A named recipe (``reference``, ``default``) with ``overrides`` applied."""
        if name not in RECIPES:
            raise TrainingError(f"unknown training recipe {name!r}; known recipes: {', '.join(RECIPES)}")
        return replace(RECIPES[name], **overrides)


RECIPES: dict[str, TrainConfig] = {
    # The published i-CLEVR recipe (docs/iclevr.md): the reference UNet, cosine schedule with 100
    # train timesteps, Adam lr 1e-5, batch 32, 200 epochs, no EMA, no guidance training.
    "reference": TrainConfig(
        preset="seed",
        scheduler="cosine",
        num_train_timesteps=100,
        lr=1e-5,
        warmup_steps=0,
        batch_size=32,
        epochs=200,
        max_steps=None,
        ema_decay=None,
        cond_drop_prob=0.0,
        grad_clip=None,
        hflip=False,
        recipe="reference",
    ),
    # Ours: 1000 train timesteps (few-step samplers need a fine schedule), 10x the lr with warmup,
    # large batches for GPU throughput, EMA, CFG dropout so guidance works at sampling, and
    # v-prediction: the `small` preset trained on epsilon for 78 epochs still drew tinted blobs
    # (accuracy 0.08), 2 minutes of v fine-tuning took it to 0.42 (TRAINING.md). Min-SNR-5: beside
    # the same run without it (session 6, seed preset, 16 min on an H100) it read 0.935 / 0.945
    # against 0.900 / 0.951 at guidance 3, and 0.929 / 0.969 against 0.923 / 0.948 at guidance 4.
    "default": TrainConfig(recipe="default", prediction_type="v_prediction", min_snr_gamma=5.0),
}


def min_snr_weight(alpha_bar: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights for the timesteps with cumulative alphas ``alpha_bar``.

    An x0 error e costs SNR * e^2 as an epsilon error and (SNR + 1) * e^2 as a v error, so the
    x0-space weight min(SNR, gamma) becomes min(SNR, gamma) / SNR for epsilon and
    min(SNR, gamma) / (SNR + 1) for v.
    """
    snr = alpha_bar / (1 - alpha_bar)
    if prediction_type == "v_prediction":
        return snr.clamp(max=gamma) / (snr + 1)
    # min(SNR, gamma) / SNR written so that a zero-SNR timestep (zero-terminal-SNR schedules) gets
    # weight 1, not 0 / 0.
    return (gamma / snr).clamp(max=1.0)


@dataclass
class TrainSummary:
    """What a training run did and where it left its files."""

    out_dir: Path
    checkpoint: Path | None
    steps: int
    epochs_completed: float
    final_loss: float | None
    images_per_second: float  # over the whole run, the first step's compile included
    seconds: float
    loss_log: Path | None
    loss_plot: Path | None
    resumed_from_step: int | None = None
    # "epochs/max_steps", "max_minutes", "interrupted" (Ctrl-C, SIGTERM), or "nothing_to_train" (a
    # resumed checkpoint already at its limit: no step run, no file written; ``message`` says so)
    stopped_by: str = ""
    is_main_process: bool = True  # False on the other processes of a multi-process run
    processes: int = 1
    # What the run resolved its device defaults to (config.json keeps None for "the default").
    settings: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    # The last log interval's images/s: the training's own speed, which a compiled run's whole-run
    # figure hides (2,900 against 369 for 100 steps of the seed preset on an H100). None where this
    # run logged fewer than two intervals (its first pays for the compile).
    steady_images_per_second: float | None = None


# ------------------------------------------------------------------------------------- helpers


def _mix(*parts: int) -> int:
    """A 63-bit seed from integers (stable across runs and processes)."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (int(part) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        value ^= value >> 31
    return value & 0x7FFFFFFFFFFFFFFF


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The data order of ``epoch`` (the same on every process)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(_mix(seed, epoch, 0xDA7A)))


def _pick_device(config: TrainConfig) -> torch.device:
    return torch.device(resolve_device(config.device or "auto"))


def _noise_config(config: TrainConfig) -> dict[str, Any]:
    """The training noise schedule's config; a scheduler without one (ddim) is a TrainingOptionError."""
    try:
        return noise_config(
            config.scheduler, config.num_train_timesteps, prediction_type=config.prediction_type
        )
    except ValueError as error:  # its message says what to do; a TrainingError prints as one line
        raise TrainingOptionError(str(error)) from None


def resolve_cuda_graphs(
    asked: bool | None, *, compiled: bool, cuda: bool, processes: int, autotune: bool, grad_accum: int = 1
) -> bool:
    """Whether a training run uses CUDA graphs: ``asked`` if given (checked), else on when it
    compiles on one CUDA GPU (max-autotune keeps its own no-graphs mode) with one pass per step:
    a graph's replay reuses its output memory, and the gradients of the last micro-batch are such
    outputs, so a second pass would overwrite them before they are summed."""
    if asked and not (compiled and cuda):
        raise TrainingError("cuda_graphs needs compile and a CUDA device")
    if asked and processes > 1:
        raise TrainingError("cuda_graphs is for one process; train several processes without it")
    if asked and grad_accum > 1:
        raise TrainingError("cuda_graphs takes one pass per step; --grad-accum trains without them")
    if asked is None:
        return compiled and cuda and processes == 1 and not autotune and grad_accum == 1
    return asked


def _divisors(n: int) -> list[int]:
    """The pass counts that split ``n`` images evenly, ascending."""
    return [k for k in range(1, n + 1) if n % k == 0]


def _split_problem(batch_size: int, grad_accum: int, world: int) -> str | None:
    """Why a global batch of ``batch_size`` cannot be split over ``world`` processes into
    ``grad_accum`` equal micro-batches each (None when it can)."""
    parts = world * grad_accum
    if batch_size % parts == 0:
        return None
    into = (
        f"{world} processes"
        if grad_accum == 1
        else f"{grad_accum} micro-batches" + (f" on each of {world} processes" if world > 1 else "")
    )
    fix = f"use a multiple of {parts}"
    if grad_accum > 1 and batch_size % world == 0:
        # --grad-accum alone may change (on --resume too, where the batch size may not)
        local = batch_size // world
        fits = max(n for n in _divisors(local) if n <= grad_accum)
        fix += f", or --grad-accum {fits} (a divisor of each process's {local} images)"
    return f"batch size {batch_size} does not split into {into}; {fix}"


class _Data:
    """Batches of (images float in [-1, 1], conditions) for a list of dataset indices."""

    def __init__(self, dataset: Any, device: torch.device) -> None:
        self.dataset = dataset
        self.device = device
        self.images: torch.Tensor | None = None
        if hasattr(dataset, "images_uint8"):
            # The whole set as uint8 on the device: no loader, no host round trips.
            self.images = dataset.images_uint8().to(device)
            if hasattr(dataset, "conditions_multi_hot"):
                conds = dataset.conditions_multi_hot()
            else:
                conds = torch.stack([dataset[i][1] for i in range(len(dataset))])
            self.conditions = conds.float().to(device)
        self.n = len(dataset)

    def batches(
        self, order: list[list[int]], num_workers: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.images is not None:
            # One upload for the whole order: a blocking host-to-device copy per step would make the
            # host wait for the GPU every step, so it could never queue the next step ahead.
            flat = torch.tensor([i for idx in order for i in idx], dtype=torch.long, device=self.device)
            start = 0
            for idx in order:
                index = flat[start : start + len(idx)]
                start += len(idx)
                yield self.images[index].float().div_(127.5).sub_(1.0), self.conditions[index]
            return
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=order,
            num_workers=num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            worker_init_fn=ignore_stop_signals if num_workers else None,
        )
        batches = iter(loader)
        try:
            for images, conds in batches:
                yield (
                    images.to(self.device, non_blocking=True),
                    conds.float().to(self.device, non_blocking=True),
                )
        finally:
            # The workers ignore SIGTERM (ignore_stop_signals), so multiprocessing's terminate at
            # interpreter exit cannot stop them: after an error whose traceback still holds this
            # iterator, the process hung there for ever. Shut them down here, on every way out.
            shutdown = getattr(batches, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()


def _check_image_size(model: Any, name: str, dataset: Any) -> None:
    """The model must sample images of the dataset's size: `bench run` draws noise of the model's
    config size (64 unless ``sample_size`` says otherwise), so a model trained on 32 px images
    without saying so sampled 64 px ones that no judge could read."""
    from bench.sampling import model_image_shape

    size = getattr(dataset, "image_size", None)
    _, height, width = model_image_shape(model)
    if size is not None and (height, width) != (int(size), int(size)):
        raise TrainingError(
            f"model {name!r} samples {height}x{width} images (its config's sample_size, else 64) but the "
            f"dataset's are {size}x{size}: set sample_size={size} in the model's config "
            "(register_models in bench/hookspecs.py)"
        )


class _Trainer:
    """One training run's state; ``train`` and ``measure_throughput`` drive it."""

    def __init__(self, config: TrainConfig, dataset: Any, accelerator: Any | None = None) -> None:
        from bench.checkpoints import build_model

        config.check()
        self.config = config
        if accelerator is None and _under_accelerate():
            from accelerate import Accelerator

            accelerator = Accelerator(cpu=accelerate_cpu(config.device))
        self.accelerator = accelerator
        if accelerator is not None:
            self.device = accelerator.device
            self.rank, self.world = accelerator.process_index, accelerator.num_processes
            self.is_main = accelerator.is_main_process
        else:
            self.device = _pick_device(config)
            self.rank, self.world, self.is_main = 0, 1, True
        cuda = self.device.type == "cuda"
        self.bf16 = cuda if config.bf16 is None else config.bf16
        self.channels_last = cuda if config.channels_last is None else config.channels_last
        self.use_compile = cuda if config.compile is None else config.compile
        error = compile_only_switch_error(
            self.use_compile, autotune=config.autotune, tune_kernels=config.tune_kernels
        )
        if error:
            raise TrainingError(error)
        self.cuda_graphs = resolve_cuda_graphs(
            config.cuda_graphs,
            compiled=self.use_compile,
            cuda=cuda,
            processes=self.world,
            autotune=config.autotune,
            grad_accum=config.grad_accum,
        )
        problem = _split_problem(config.batch_size, config.grad_accum, self.world)
        if problem:
            raise TrainingError(problem)
        self.local_batch = config.batch_size // self.world
        self.micro_batch = self.local_batch // config.grad_accum
        self.noise_config = _noise_config(config)
        from diffusers import DDPMScheduler

        alphas = DDPMScheduler.from_config(self.noise_config).alphas_cumprod.to(self.device, torch.float32)
        self.sqrt_ab, self.sqrt_1mab = alphas.sqrt(), (1 - alphas).sqrt()
        # Per-timestep loss weights, like the tables above: None is the plain MSE.
        self.loss_weight = (
            min_snr_weight(alphas, config.min_snr_gamma, config.prediction_type)
            if config.min_snr_gamma
            else None
        )

        torch.manual_seed(_mix(config.seed, 0x1417))  # the initial weights: same on every process
        self.model = build_model(
            config.model, {"preset": config.preset, **config.model_options}, source="the training config"
        )
        self.model_config = dict(self.model.config)
        _check_image_size(self.model, config.model, dataset)
        # Only now the data: a misspelt --model, --preset or --scheduler above fails before the
        # dataset renders or loads (minutes for the synthetic set).
        self.data = _Data(dataset, self.device)
        if self.data.n < config.batch_size:
            raise TrainingError(
                f"the dataset has {self.data.n} images, fewer than one batch ({config.batch_size}); "
                "use a smaller --batch-size"
            )
        self.steps_per_epoch = self.data.n // config.batch_size  # the last partial batch is dropped
        if config.init_from and not config.resume:
            from bench.checkpoints import load_model, load_state_checked

            start, _, start_meta = load_model(config.init_from)  # EMA weights when it has them, fp32
            load_state_checked(
                self.model,
                start.state_dict(),
                str(config.init_from),
                target="the model this run trains",
                saved_preset=(start_meta.get("model_config") or {}).get("preset"),
            )
        try:
            self.group_norm = resolved_group_norm(config, compiled=self.use_compile, cuda=cuda)
        except ValueError as error:  # two GroupNorm variants asked for
            raise TrainingError(str(error)) from None
        use_group_norm(self.model, self.group_norm)
        use_folded_upsample(self.model, config.fold_upsample)
        use_attention_by_sums(self.model, config.attention_by_sums)
        self.model.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.ema = None
        if config.ema_decay:
            import copy

            self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        # Tensor lists walked every step, gathered once (each .parameters() walks every module).
        self.params = list(self.model.parameters())
        self.ema_params = list(self.ema.parameters()) if self.ema is not None else []
        self.ema_buffer_pairs = (
            list(zip(self.ema.buffers(), self.model.buffers(), strict=True)) if self.ema is not None else []
        )
        self.optimizer = torch.optim.AdamW(
            self.params, lr=config.lr, weight_decay=config.weight_decay, fused=cuda or None
        )
        self.total_steps = self._total_steps()
        self.elapsed = 0.0  # training seconds over all resumed runs (the time-based lr reads it)
        self.lr_schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.net = self.model
        self.ddp = None  # the DistributedDataParallel wrapper, whose no_sync skips a micro-batch's all-reduce
        if accelerator is not None and self.world > 1:
            self.net = self.ddp = accelerator.prepare_model(self.model)
        if self.use_compile:
            options = compile_options(
                autotune=config.autotune,
                cuda_graphs=self.cuda_graphs,
                force_layout_opt=config.force_layout_opt,
                tune_kernels=config.tune_kernels,
            )
            quiet_known_compile_warnings()
            self.net = torch.compile(self.net, options=options)
        self.step = 0

    # -- schedule

    def _total_steps(self) -> int | None:
        bounds = []
        if self.config.epochs is not None:
            bounds.append(self.config.epochs * self.steps_per_epoch)
        if self.config.max_steps is not None:
            bounds.append(self.config.max_steps)
        if not bounds and self.config.max_minutes is None:
            raise TrainingError(
                "set at least one of epochs, max_steps or max_minutes, or training never stops"
            )
        return min(bounds) if bounds else None

    def _lr_factor(self, step: int) -> float:
        warmup = self.config.warmup_steps
        if warmup and step < warmup:
            return (step + 1) / warmup
        if self.config.lr_schedule != "cosine":
            return 1.0
        progress = 0.0
        if self.total_steps:
            progress = (step - warmup) / max(self.total_steps - warmup, 1)
        if self.config.max_minutes:
            # A time budget ends the run at an unknown step: decay over the wall time instead.
            progress = max(progress, self.elapsed / (60 * self.config.max_minutes))
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    # -- one step

    def _batch_order(self, epoch: int, position: int) -> list[list[int]]:
        """This process's index lists for the rest of ``epoch``, from batch ``position`` on."""
        perm = epoch_permutation(self.data.n, self.config.seed, epoch).tolist()
        size, local = self.config.batch_size, self.local_batch
        return [
            perm[b * size + self.rank * local : b * size + (self.rank + 1) * local]
            for b in range(position, self.steps_per_epoch)
        ]

    def _loss(self, images: torch.Tensor, conds: torch.Tensor, step: int, part: int = 0) -> torch.Tensor:
        """The loss of micro-batch ``part`` of this process's share (``images``: that micro-batch)."""
        config = self.config
        # Draws for the GLOBAL batch, this process takes its slice: the same numbers whatever the
        # number of processes and micro-batches, so a multi-GPU or accumulated run matches a
        # one-GPU run up to float rounding.
        g = torch.Generator(self.device).manual_seed(_mix(config.seed, step, 0x57E9))
        first = self.rank * self.local_batch + part * self.micro_batch
        b, mine = config.batch_size, slice(first, first + self.micro_batch)
        t = torch.randint(0, config.num_train_timesteps, (b,), device=self.device, generator=g)[mine]
        noise = torch.randn((b, *images.shape[1:]), device=self.device, generator=g)[mine]
        drop = (torch.rand(b, device=self.device, generator=g) < config.cond_drop_prob)[mine]
        flip = (torch.rand(b, device=self.device, generator=g) < (0.5 if config.hflip else 0.0))[mine]
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        conds = conds * (~drop)[:, None]
        signal, sigma = self.sqrt_ab[t][:, None, None, None], self.sqrt_1mab[t][:, None, None, None]
        noisy = signal * images + sigma * noise
        if self.channels_last:
            noisy = noisy.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            pred = self.net(noisy, t, conds)
        if self.config.prediction_type == "v_prediction":
            target = signal * noise - sigma * images
        else:
            target = noise
        if self.loss_weight is None:
            return F.mse_loss(pred.float(), target)
        per_image = (pred.float() - target).square().mean(dim=(1, 2, 3))
        return (self.loss_weight[t] * per_image).mean()

    def train_step(self, images: torch.Tensor, conds: torch.Tensor) -> torch.Tensor:
        """One optimisation step; returns the (device) loss without a host sync."""
        self.model.train()
        if self.cuda_graphs:  # one pass per step with graphs (resolve_cuda_graphs)
            torch.compiler.cudagraph_mark_step_begin()  # a new step: the last one's graph outputs are done
        self.optimizer.zero_grad(set_to_none=True)
        parts = self.config.grad_accum
        losses = []
        for part in range(parts):
            chunk = slice(part * self.micro_batch, (part + 1) * self.micro_batch)
            # DDP all-reduces the summed gradients once, after the last micro-batch
            last = part == parts - 1
            with nullcontext() if self.ddp is None or last else self.ddp.no_sync():
                loss = self._loss(images[chunk], conds[chunk], self.step, part)
                # equal parts: the mean of the parts' means is the batch's mean
                (loss / parts if parts > 1 else loss).backward()
            losses.append(loss.detach())
        loss = losses[0] if parts == 1 else torch.stack(losses).mean()
        if self.config.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
        self.optimizer.step()
        self.lr_schedule.step()
        if self.ema is not None:
            # Warm-up of the decay so early EMA weights are not dominated by the random init.
            decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
            with torch.no_grad():
                torch._foreach_lerp_(self.ema_params, self.params, 1 - decay)
                for e_buf, m_buf in self.ema_buffer_pairs:
                    e_buf.copy_(m_buf)
        self.step += 1
        return loss.detach()

    def settings(self) -> dict[str, Any]:
        """The device defaults as resolved for this run."""
        return {
            "device": str(self.device),
            "bf16": self.bf16,
            "channels_last": self.channels_last,
            "compile": self.use_compile,
            "cuda_graphs": self.cuda_graphs,
            "force_layout_opt": self.use_compile and self.config.force_layout_opt,
            "tune_kernels": self.use_compile and self.config.tune_kernels,
            "group_norm": self.group_norm,  # the bench.groupnorm.GROUP_NORMS kind
            "grad_accum": self.config.grad_accum,
        }

    def repeating_batches(self, steps: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches for ``steps`` steps from epoch 0's order, repeated as often as needed (speed runs)."""
        return self.data.batches(self._batch_order(0, 0) * (1 + steps // self.steps_per_epoch), 0)

    def timed_steps(self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], steps: int) -> float:
        """Seconds for ``steps`` training steps, from a synchronised start to a synchronised end."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            loss = self.train_step(*next(batches))
        loss.item()  # waits for the last step
        return time.perf_counter() - start

    # -- checkpoints

    def _position(self) -> tuple[int, int]:
        return divmod(self.step, self.steps_per_epoch)

    def save(self, path: Path) -> Path:
        epoch, position = self._position()
        state = {
            "optimizer": self.optimizer.state_dict(),
            "lr_schedule": self.lr_schedule.state_dict(),
            "position": position,
            "elapsed_seconds": self.elapsed,
            "rng_torch": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "rng_python": list(random.getstate()[1]),
        }
        from safetensors import SafetensorError

        try:
            return save_checkpoint(
                path,
                model_name=self.config.model,
                model=self.model,
                model_config=self.model_config,
                noise_config=self.noise_config,
                train_config=self.config.to_dict(),
                step=self.step,
                epoch=epoch,
                ema=self.ema,
                training_state=state,
                extra={"images_seen": self.step * self.config.batch_size},
            )
        except torch.cuda.OutOfMemoryError:
            raise  # not a write failure: the training loop names a batch size to try
        # A full disk reaches torch.save as a RuntimeError and safetensors as its SafetensorError
        # (neither an OSError: that one was a traceback).
        except (OSError, RuntimeError, SafetensorError) as error:
            kept = f"the last complete one, {path}, is kept" if path.exists() else "no earlier one exists"
            raise TrainingError(
                f"could not write the step-{self.step} checkpoint beside {path} ({type(error).__name__}: "
                f"{str(error).strip()}); {kept}. Free disk space or fix the folder's permissions, then "
                "resume with --resume"
            ) from error

    def restore(self, path: Path) -> None:
        ckpt = load_checkpoint(path, map_location=self.device)
        if ckpt.model_config != self.model_config:
            raise TrainingError(
                f"cannot resume from {path}: it holds model config {ckpt.model_config}, but this run builds "
                f"{self.model_config}; resume with the same --preset/options or use another --out"
            )
        if ckpt.noise_config != self.noise_config:
            raise TrainingError(
                f"cannot resume from {path}: it was trained with another noise schedule or prediction "
                f"target; resume with --scheduler {ckpt.train_config.get('scheduler')} "
                f"--timesteps {ckpt.noise_config.get('num_train_timesteps')} "
                f"--prediction {ckpt.noise_config.get('prediction_type', 'epsilon')}"
            )
        if ckpt.training_state is None:
            raise CheckpointError(f"{path} holds no optimizer state ({'optimizer.pt'}); it cannot be resumed")
        check_step_records(ckpt)  # the step resumed from must be the optimizer's and lr schedule's
        self.model.load_state_dict(ckpt.model_state)
        if self.ema is not None:
            self.ema.load_state_dict(ckpt.ema_state if ckpt.ema_state is not None else ckpt.model_state)
        state = ckpt.training_state
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["lr_schedule"])
        self.step = int(ckpt.step)
        self.elapsed = float(state.get("elapsed_seconds", 0.0))
        torch.set_rng_state(state["rng_torch"].cpu())
        if state.get("rng_cuda") and torch.cuda.is_available():
            # One state per GPU the saving process saw: a checkpoint of a 4-GPU machine resumed where
            # fewer are visible indexed past them (IndexError); the visible ones take theirs.
            visible = state["rng_cuda"][: torch.cuda.device_count()]
            torch.cuda.set_rng_state_all([s.cpu() for s in visible])
        if state.get("rng_python"):
            random.setstate((3, tuple(state["rng_python"]), None))


# ------------------------------------------------------------------------------------- train


def _oom_message(config: TrainConfig, world: int = 1, resumable: bool = False) -> str:
    """What to try after running out of GPU memory: more passes per step, where the batch splits
    into more (each process's share of it, ``world`` processes), and a smaller batch that the
    processes and passes still split. ``resumable``: a checkpoint of this run exists to go on from."""
    local = config.batch_size // world
    # More passes that split each process's share evenly, at least twice as many where there are
    # such: twice as many alone offered a --grad-accum the trainer then refused (batch 6 in 2
    # passes: 4), and one at one image per pass, where none is left.
    more = [n for n in _divisors(local) if n > config.grad_accum]
    accum = next((n for n in more if n >= 2 * config.grad_accum), more[-1] if more else None)
    parts = world * config.grad_accum
    smaller = config.batch_size // 2 // parts * parts
    start = f"CUDA ran out of memory at batch size {config.batch_size} (preset {config.preset!r}); "
    if not smaller:  # each pass holds one image: a smaller batch would not split, more passes none
        return start + "each pass already takes one image; try a smaller --preset"
    more_passes = ""
    if accum is not None:
        more_passes = (
            f"try --grad-accum {accum} (the same batch in {accum} passes"
            + (", and --resume with it goes on from the last checkpoint" if resumable else "")
            + ") or "
        )
    return start + f"{more_passes or 'try '}a new run at --batch-size {smaller}"


# The options that define a run's training trajectory, with their `bench train` option: a resume
# continues the same run, so it must keep them (the checkpoint's optimizer state would otherwise win
# over a new --lr, a new --batch-size would move the epoch counter, --ema 0 would drop the EMA
# weights). The other fields may change on resume: the limits (--max-steps, --epochs, --max-minutes),
# --checkpoint-every, --grad-accum (the same batch in other passes), log_every, num_workers, --device,
# the compile/bf16/layout switches, --out, and --data-root and --images-dir (a folder may move:
# _MOVABLE_DATA_OPTIONS). init_from is kept from the checkpoint (other --init-from weights are refused).
_TRAJECTORY_OPTIONS = {
    "recipe": "--recipe",
    "model": "--model",
    "preset": "--preset",
    "model_options": "model_options",
    "scheduler": "--scheduler",
    "num_train_timesteps": "--timesteps",
    "prediction_type": "--prediction",
    "min_snr_gamma": "--min-snr-gamma",
    "lr": "--lr",
    "lr_schedule": "--lr-schedule",
    "warmup_steps": "--warmup-steps",
    "weight_decay": "weight_decay",
    "batch_size": "--batch-size",
    "ema_decay": "--ema",
    "cond_drop_prob": "--cond-drop",
    "grad_clip": "grad_clip",
    "hflip": "hflip",
    "seed": "--seed",
    "data": "--data",
}
_DATA_FIELDS = ("data", "data_root", "data_options")
_MOVABLE_DATA_OPTIONS = {"images_dir"}  # where the images are, like --data-root: a folder may move
_OFF_WHEN_ZERO = ("ema_decay", "min_snr_gamma", "grad_clip")  # 0 and None both mean off


def _comparable(name: str, value: Any) -> Any:
    if name in _OFF_WHEN_ZERO and not value:
        return None
    return json.loads(json.dumps(value))  # as saved: tuples as lists, floats as they read back


def _shown(value: Any, name: str = "") -> str:
    if name in _OFF_WHEN_ZERO and not value:
        return "0 (off)"
    return "none" if value is None else value if isinstance(value, str) else json.dumps(value)


def _resume_conflicts(saved: dict[str, Any], config: TrainConfig) -> tuple[list[str], list[str]]:
    """For each trajectory option ``config`` changes against the checkpoint's train config ``saved``
    (fields an older checkpoint lacks are not compared): ``OPTION OLD -> NEW``, and the options
    that restore it (``OPTION OLD``; the whole noise schedule when a part of it changed)."""
    new = config.to_dict()
    names = [n for n in _TRAJECTORY_OPTIONS if n in saved]
    if config.data is None:  # the dataset not stated: the checkpoint's is kept (train())
        names = [n for n in names if n not in _DATA_FIELDS]
    changed = [n for n in names if _comparable(n, saved[n]) != _comparable(n, new[n])]
    differ = [f"{_TRAJECTORY_OPTIONS[n]} {_shown(saved[n], n)} -> {_shown(new[n], n)}" for n in changed]
    noise = ("scheduler", "num_train_timesteps", "prediction_type")
    restore = [n for n in names if n in changed or (n in noise and any(c in noise for c in changed))]
    fix = [
        f"{_TRAJECTORY_OPTIONS[n]} {'0' if n in _OFF_WHEN_ZERO and not saved[n] else _shown(saved[n])}"
        for n in restore
        if _TRAJECTORY_OPTIONS[n].startswith("--") and (saved[n] is not None or n in _OFF_WHEN_ZERO)
    ]
    if config.data is not None and "data_options" in saved:  # --scenes and the like, one by one
        old_options, new_options = saved["data_options"] or {}, _comparable("", config.data_options)
        for key in sorted((set(old_options) | set(new_options)) - _MOVABLE_DATA_OPTIONS):
            if old_options.get(key) != new_options.get(key):
                old, now = (_shown(o.get(key, "default")) for o in (old_options, new_options))
                differ.append(f"--{key.replace('_', '-')} {old} -> {now}")
                if key in old_options:
                    fix.append(f"--{key.replace('_', '-')} {old}")
    return differ, fix


# What a resume takes from the checkpoint where not given, besides the trajectory: the run's limits
# (else a resume would fall back to the recipe's 20,000 steps and drop --max-minutes, whose budget
# counts over every run of an --out), its checkpoint interval and its --grad-accum (a run that
# needed micro-batches to fit in memory ran out of it again on a bare --resume, back at one pass).
_LIMITS = {"max_steps": "--max-steps", "epochs": "--epochs", "max_minutes": "--max-minutes"}
_RESUMED_LIMITS = (*_LIMITS, "checkpoint_every", "grad_accum")


def resume_defaults(out_dir: str | Path) -> dict[str, Any]:
    """What a ``--resume`` of ``out_dir`` takes from its checkpoint for the options not given: the
    options that shape the run (``_TRAJECTORY_OPTIONS``, the recipe among them), its limits, its
    checkpoint interval and --grad-accum, and its dataset (name, folder, options). Empty when there
    is no checkpoint (``check_run`` then says why); a CheckpointError when its config.json cannot be
    read."""
    path = readable(Path(out_dir) / CHECKPOINT_DIR)
    # A checkpoint whose config.json is missing or broken is said now, not after the recipe's
    # default dataset (18,009 renders, minutes) was made for a run that cannot resume.
    meta = read_checkpoint_config(path) if path.is_dir() else {}
    meta = meta if isinstance(meta, dict) else {}
    saved = meta.get("train_config") if isinstance(meta.get("train_config"), dict) else {}
    keep = [*_TRAJECTORY_OPTIONS, *_RESUMED_LIMITS, *_DATA_FIELDS]
    known = {f.name for f in fields(TrainConfig)}
    return {n: saved[n] for n in keep if n in saved and n in known}


def _refuse_changed_options(path: Path, saved: dict[str, Any], config: TrainConfig) -> None:
    differ, fix = _resume_conflicts(saved, config)
    if differ:
        values = f"the checkpoint's values ({' '.join(fix)})" if fix else "the checkpoint's values"
        raise TrainingError(
            f"cannot resume from {path}: these options differ from the run it continues: {', '.join(differ)}. "
            f"They shape the training run, so a resume keeps them: resume with {values}, as recorded in "
            f"{path.parent / 'train_config.json'}, or train into another --out (--init-from {path} starts "
            "from its weights with a fresh optimizer)"
        )


def _saved_meta(path: Path) -> dict[str, Any] | None:
    """The checkpoint's config.json, or None where it cannot be read (restore() then says why)."""
    try:
        meta = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def check_run(config: TrainConfig) -> str | None:
    """What ``train`` checks before it reads the data: the options (``config.check``), that the
    batch splits over the launch's processes and --grad-accum's passes, that a fresh run's --out
    holds no checkpoint and, with ``config.resume``, that a checkpoint is there, that the options
    which shape the run are the checkpoint's, and whether anything is left to train. Returns None to train, or the message
    to show when the checkpoint is already at --max-steps or --epochs (nothing to train); raises
    TrainingError otherwise. Cheap: reads only the checkpoint's config.json (and makes and removes
    a probe file in --out and, on a resume, in its checkpoint folder, to know they can be written;
    a fresh run makes its checkpoint folder in --out)."""
    config.check()
    # The batch split too (the trainer checks it again with the process group's size): a batch
    # that --grad-accum cannot divide failed only once the dataset had rendered (minutes).
    problem = _split_problem(config.batch_size, config.grad_accum, launch_size())
    if problem:
        raise TrainingError(problem)
    problem = why_unwritable(config.out_dir)
    if problem:
        raise TrainingError(
            f"--out {config.out_dir}: {problem}; give a folder the checkpoints can be written into"
        )
    ckpt_dir = Path(config.out_dir) / CHECKPOINT_DIR
    if not config.resume:
        # Said before the data loads (minutes for the synthetic set), not after.
        if readable(ckpt_dir).exists():
            raise TrainingError(
                f"{ckpt_dir} already holds a checkpoint; pass --resume to continue it or choose another --out"
            )
        return None
    if not readable(ckpt_dir).exists():
        raise TrainingError(f"--resume: no checkpoint at {ckpt_dir}; start without --resume")
    meta = _saved_meta(readable(ckpt_dir))
    if meta is None:
        return None
    _refuse_changed_options(ckpt_dir, meta.get("train_config") or {}, config)
    started_from = (meta.get("train_config") or {}).get("init_from")
    if config.init_from and (
        not started_from or Path(config.init_from).resolve() != Path(started_from).resolve()
    ):
        # A resume goes on from its checkpoint: other starting weights would be dropped unseen.
        raise TrainingError(
            f"--init-from {config.init_from} starts a fresh run; a --resume goes on from {ckpt_dir}, "
            f"which started from {started_from or 'random weights'}: drop --init-from, or train into "
            "another --out"
        )
    step, epoch = int(meta.get("step", 0)), int(meta.get("epoch", 0))
    if config.max_steps is not None and step >= config.max_steps:
        return (
            f"the checkpoint is already at step {step} >= --max-steps {config.max_steps}: nothing to train "
            f"(raise --max-steps to train on); {ckpt_dir} is left as it is"
        )
    if config.epochs is not None and epoch >= config.epochs:
        return (
            f"the checkpoint has already trained {epoch} epoch(s) >= --epochs {config.epochs}: nothing to "
            f"train (raise --epochs to train on); {ckpt_dir} is left as it is"
        )
    # After the limits: a finished run kept write-protected still answers "nothing to train".
    _refuse_unwritable_checkpoint(ckpt_dir)
    return None


def _refuse_unwritable_checkpoint(ckpt_dir: Path) -> None:
    """A TrainingError when the checkpoint folder ``ckpt_dir`` (or, while it does not exist, the
    nearest folder above it) cannot take files. A save writes its new copy in --out but then
    renames and deletes the old copy, so a write-protected checkpoint folder failed only at a save,
    after the data had loaded and the run had trained. Probed by a file made and removed there
    (``why_unwritable``): nothing is left behind."""
    problem = why_unwritable(readable(ckpt_dir))
    if problem:
        raise TrainingError(
            f"--resume: the checkpoint folder {problem}; every save replaces its files, so fix its "
            f"permissions (or copy {ckpt_dir.parent} elsewhere and resume the copy)"
        )


def _stretch_note(saved: dict[str, Any], config: TrainConfig) -> str | None:
    """A resume may change its limits, but under ``--lr-schedule cosine`` a new limit stretches the
    decay to it, so the lr rises again from where the checkpoint (``saved``: its train config) left
    it, near 0 when the last run ran to its end: worth a line."""
    if config.lr_schedule != "cosine":
        return None
    changed = [
        f"{option} {_shown(saved[name])} -> {_shown(getattr(config, name))}"
        for name, option in _LIMITS.items()
        if name in saved and _comparable(name, saved[name]) != _comparable(name, getattr(config, name))
    ]
    if not changed:
        return None
    return (
        f"resume: {', '.join(changed)} stretches the cosine lr decay to the new limit, so the lr rises "
        "again from where the checkpoint left it (a run trained to its end had decayed to about 0)"
    )


def _nothing_to_train(config: TrainConfig, step: int, steps_per_epoch: int, message: str) -> TrainSummary:
    """The summary of a resume with nothing left to train: no step run, no file written."""
    out_dir = Path(config.out_dir)
    log_path, plot_path = out_dir / LOSS_LOG, out_dir / LOSS_PLOT
    rows = _read_log(log_path, step)
    return TrainSummary(
        out_dir=out_dir,
        checkpoint=out_dir / CHECKPOINT_DIR,
        steps=step,
        epochs_completed=step / max(steps_per_epoch, 1),
        final_loss=rows[-1]["loss"] if rows else None,
        images_per_second=0.0,
        seconds=0.0,
        loss_log=log_path if log_path.exists() else None,
        loss_plot=plot_path if plot_path.exists() else None,
        resumed_from_step=step,
        stopped_by="nothing_to_train",
        is_main_process=main_process(),
        message=message,
    )


def _read_log(path: Path, up_to_step: int) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by an interruption
        if row.get("step", 0) <= up_to_step:
            rows.append(row)
    return rows


def train(
    config: TrainConfig, dataset: Any, *, accelerator: Any | None = None, show_progress: bool = True
) -> TrainSummary:
    """Train ``config.model`` on ``dataset``; write checkpoints, a loss log and plot to ``config.out_dir``.

    ``dataset`` items are ``(image in [-1, 1], multi-hot condition)``; ``images_uint8()`` is used
    when present (the whole set on the device). With ``config.resume`` it continues from
    ``<out_dir>/checkpoint`` exactly. Raises ``TrainingError`` on divergence (NaN loss; the last
    good checkpoint is kept) and on CUDA out-of-memory (naming a batch size to try).
    """
    out_dir = Path(config.out_dir)
    ckpt_dir = out_dir / CHECKPOINT_DIR
    # Before the trainer reads the data and builds the model: these need neither.
    done = check_run(config)
    if main_process():
        # What killed saves left: a checkpoint renamed aside is put back (a resume goes on from it;
        # check_run refused a fresh start over it, before the data loaded), and half-written copies go.
        tidy_killed_saves(ckpt_dir)
    meta = (_saved_meta(readable(ckpt_dir)) or {}) if config.resume else {}
    if done is not None:
        return _nothing_to_train(config, int(meta.get("step", 0)), len(dataset) // config.batch_size, done)
    if config.resume:
        # What the resumed run records: the checkpoint's init_from (check_run refused another) and,
        # where the caller names no dataset, the checkpoint's.
        saved = meta.get("train_config") or {}
        kept = {
            k: saved[k] for k in ("init_from", *(_DATA_FIELDS if config.data is None else ())) if k in saved
        }
        config = replace(config, **kept)
    trainer = _Trainer(config, dataset, accelerator)
    resumed_from = None
    if config.resume:
        trainer.restore(ckpt_dir)
        resumed_from = trainer.step
        if config.max_minutes is not None and trainer.elapsed >= config.max_minutes * 60:
            # The budget counts every run of this --out: nothing left, and nothing rewritten.
            return _nothing_to_train(
                config,
                trainer.step,
                trainer.steps_per_epoch,
                f"the checkpoint has already trained {trainer.elapsed / 60:.2f} minutes >= --max-minutes "
                f"{config.max_minutes:g} (the budget counts the training time of every run of this --out): "
                f"nothing to train (raise --max-minutes to train on); {ckpt_dir} is left as it is",
            )
        note = _stretch_note(meta.get("train_config") or {}, config)
        if note and trainer.is_main:
            print(note, file=sys.stderr, flush=True)
    log_path = out_dir / LOSS_LOG
    log_rows = _read_log(log_path, trainer.step) if config.resume else []
    rows_before = len(log_rows)  # a resume's rows: its own are those after them
    if trainer.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "train_config.json", json.dumps(config.to_dict(), indent=2) + "\n")
        atomic_write_text(log_path, "".join(json.dumps(r) + "\n" for r in log_rows))

    from bench.progress import Rate, progress

    rate = Rate()
    stopped_by = ""
    run_start = time.perf_counter()
    elapsed_before = trainer.elapsed
    budget = config.max_minutes * 60 if config.max_minutes is not None else None
    total = trainer.total_steps
    loss_sum = torch.zeros((), device=trainer.device)
    loss_count = 0
    log_file = open(log_path, "a", encoding="utf-8") if trainer.is_main else None  # noqa: SIM115

    def status() -> str:
        # The last logged row's: between logs the host runs ahead of the GPU (CUDA graphs queue
        # steps without waiting), so a live count would show the queueing, not the training.
        if not log_rows:
            return ""
        row = log_rows[-1]
        return f"loss {row['loss']:.4f} {row.get('images_per_second', 0):.0f} img/s"

    def steps() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, position = trainer._position()
        while True:
            yield from trainer.data.batches(trainer._batch_order(epoch, position), config.num_workers)
            epoch, position = epoch + 1, 0

    def flush_log() -> None:
        nonlocal loss_sum, loss_count
        if not loss_count:
            return
        # The whole batch's loss, not the main process's share (every process logs at the same
        # steps); the host sync, once per log interval.
        loss = mean_over_processes(loss_sum / loss_count).item()
        if not math.isfinite(loss):
            raise TrainingError(
                f"the loss became {loss} at step {trainer.step} (diverged); the last good checkpoint is kept "
                f"at {ckpt_dir if ckpt_dir.exists() else '(none yet)'}. Lower --lr (now {config.lr}) or keep "
                "--grad-clip on, and --resume"
            )
        row = {
            "step": trainer.step,
            "epoch": round(trainer.step / trainer.steps_per_epoch, 4),
            "loss": loss,
            "lr": trainer.lr_schedule.get_last_lr()[0],
            # over this log interval (synchronised by the .item() above): the first interval pays
            # for the compile, the later ones show the steady speed (an H100 compiling the seed
            # preset logged 378 images/s from the start at step 100 while training at 2,900)
            "images_per_second": round(rate.per_second, 2),
            "elapsed_seconds": round(elapsed_before + time.perf_counter() - run_start, 2),
        }
        rate.reset()
        log_rows.append(row)
        if log_file is not None:
            log_file.write(json.dumps(row) + "\n")
            log_file.flush()
        loss_sum, loss_count = torch.zeros((), device=trainer.device), 0

    length = None if total is None else max(total - trainer.step, 0)
    batches = steps()
    iterator = range(length) if length is not None else iter(int, 1)  # iter(int, 1): endless
    if show_progress and trainer.is_main:
        iterator = progress(iterator, label="training", length=length, status=status)
    checkpoint_path: Path | None = ckpt_dir if ckpt_dir.exists() else None
    if trainer.use_compile and show_progress and trainer.is_main and length != 0:
        note = compile_wait_note(training=True, autotune=config.autotune, tune_kernels=config.tune_kernels)
        print(note, file=sys.stderr, flush=True)
    # Ctrl-C or SIGTERM ends the run at the next step with its checkpoint written.
    stop = StopRequest(
        "stopping after this step and saving a checkpoint (--resume goes on from it)",
        announce=trainer.is_main,
    )
    # Under DDP every process must stop at the same step, or the one that goes on waits forever in
    # the gradient all-reduce: the clock (for --max-minutes and the time-based lr) and the stop
    # signal are agreed on every log_every steps, each process's own only in one process.
    agree_every = 1 if trainer.world == 1 else config.log_every
    with stop:
        try:
            for _ in iterator:
                if total is not None and trainer.step >= total:
                    break
                if trainer.step % agree_every == 0:
                    now = [
                        elapsed_before + time.perf_counter() - run_start,
                        float(stop.requested is not None),
                    ]
                    trainer.elapsed, signalled = now if trainer.world == 1 else largest(now, trainer.device)
                    if signalled:
                        stopped_by = "interrupted"
                        break
                    if budget is not None and trainer.elapsed >= budget:
                        stopped_by = "max_minutes"
                        break
                images, conds = next(batches)
                loss_sum = loss_sum + trainer.train_step(images, conds)
                loss_count += 1
                rate.add(config.batch_size)
                if trainer.step % config.log_every == 0:
                    flush_log()
                if config.checkpoint_every and trainer.step % config.checkpoint_every == 0:
                    flush_log()  # never checkpoint NaN weights
                    if trainer.is_main:
                        checkpoint_path = trainer.save(ckpt_dir)
                    if trainer.accelerator is not None:
                        trainer.accelerator.wait_for_everyone()
            flush_log()
            stopped_by = stopped_by or ("epochs/max_steps" if total is not None else "")
            trainer.elapsed = elapsed_before + time.perf_counter() - run_start
            # Saved again at a step checkpointed already when the clock stopped the run: that save
            # holds the time at the step's start, under the budget, and the next --resume trained on.
            resave = stopped_by == "max_minutes"
            if trainer.is_main and (
                checkpoint_path is None or resave or _checkpoint_step(ckpt_dir) != trainer.step
            ):
                checkpoint_path = trainer.save(ckpt_dir)
            if trainer.accelerator is not None:
                trainer.accelerator.wait_for_everyone()
        except torch.cuda.OutOfMemoryError as error:
            raise TrainingError(_oom_message(config, trainer.world, checkpoint_path is not None)) from error
        finally:
            if log_file is not None:
                log_file.close()
    plot_path = None
    if trainer.is_main and log_rows:
        from bench.plotting import line_plot

        plot_path = line_plot(
            [r["step"] for r in log_rows],
            [r["loss"] for r in log_rows],
            out_dir / LOSS_PLOT,
            f"training loss ({config.model} {config.preset}, {config.scheduler})",
            "step",
            _loss_name(config),
            log_y=True,  # the loss falls over decades: a linear axis shows only its first steps
        )
    seconds = time.perf_counter() - run_start
    run_steps = trainer.step - (resumed_from or 0)
    run_rows = log_rows[rows_before:]
    return TrainSummary(
        out_dir=out_dir,
        checkpoint=checkpoint_path if trainer.is_main else None,
        steps=trainer.step,
        epochs_completed=trainer.step / trainer.steps_per_epoch,
        final_loss=log_rows[-1]["loss"] if log_rows else None,
        images_per_second=run_steps * config.batch_size / seconds if seconds > 0 else 0.0,
        seconds=seconds,
        loss_log=log_path if trainer.is_main else None,
        loss_plot=plot_path,
        resumed_from_step=resumed_from,
        stopped_by=stopped_by,
        is_main_process=trainer.is_main,
        processes=trainer.world,
        settings=trainer.settings(),
        steady_images_per_second=run_rows[-1]["images_per_second"] if len(run_rows) >= 2 else None,
    )


def _loss_name(config: TrainConfig) -> str:
    """What the logged loss is, for the plot's axis."""
    target = "v" if config.prediction_type == "v_prediction" else "noise"
    weighting = f", Min-SNR-{config.min_snr_gamma:g} weighted" if config.min_snr_gamma else ""
    return f"MSE on the predicted {target}{weighting}"


def _checkpoint_step(path: Path) -> int | None:
    try:
        return int(json.loads((path / "config.json").read_text())["step"])
    except (OSError, ValueError, KeyError):
        return None


def measure_throughput(
    config: TrainConfig, dataset: Any, *, steps: int = 50, warmup: int = 10, accelerator: Any | None = None
) -> dict[str, float | None]:
    """Training images/s over ``steps`` steps after ``warmup`` (compile included there); writes nothing."""
    trainer = _Trainer(replace(config, resume=False), dataset, accelerator)
    batches = trainer.repeating_batches(steps + warmup)
    device = trainer.device
    try:
        if device.type == "cuda":
            # The peak spans the warm-up: compile and CUDA-graph capture allocate the graphs' pool
            # there, and a replayed graph allocates almost nothing (a reset after warm-up read
            # 1.9 GB for the `seed` preset's compiled step at batch 256 on an H100, 32 GB eager).
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(warmup):
            trainer.train_step(*next(batches))
        seconds = trainer.timed_steps(batches, steps)
    except torch.cuda.OutOfMemoryError as error:
        raise TrainingError(_oom_message(config, trainer.world)) from error
    return {
        "images_per_second": steps * config.batch_size / seconds,
        "seconds_per_step": seconds / steps,
        "batch_size": config.batch_size,
        "processes": trainer.world,
        "peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        # what the caching allocator held at most, the graphs' pool and unused cached blocks included
        "peak_reserved_mb": torch.cuda.max_memory_reserved(device) / 2**20 if device.type == "cuda" else None,
    }


# --------------------------------------------------------------------- python -m bench.training


def main(argv: list[str] | None = None) -> int:
    """``[accelerate launch] python -m bench.training RUN.json``: a run without the CLI.

    RUN.json: ``{"train": {TrainConfig fields}, "dataset": {"name": "synthetic", "options": {...}},
    "sample": {"scheduler": "ddim", "steps": 2, "out": "samples.pt"}}`` (``sample`` optional).
    """
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m bench.training RUN.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    from bench.plugins import check_data_root, get

    data_spec = spec.get("dataset", {"name": "synthetic"})
    entry = get("datasets", data_spec["name"])
    root = data_spec.get("options", {}).get("data_root")
    check_data_root(entry.name, entry.factory, root)  # as `bench train` does
    config = TrainConfig.from_dict(spec["train"])
    if config.data is None:  # recorded with the checkpoint: what the model was trained on
        config = replace(
            config, data=entry.name, data_root=str(Path(root).expanduser().resolve()) if root else None
        )
    # As `bench train` does: a bad option fails before the data renders or loads, and a run already
    # at its limit says so without loading it.
    done = check_run(config)
    if done is not None:
        print(done, file=sys.stderr)
        return 0
    dataset = entry.factory(**data_spec.get("options", {}))
    summary = train(config, dataset, show_progress=False)
    if not summary.is_main_process:
        return 0
    if summary.checkpoint is not None and "sample" in spec:
        from bench.checkpoints import load_model
        from bench.sampling import sample

        options = spec["sample"]
        model, noise, _ = load_model(summary.checkpoint)
        conds = dataset.conditions_multi_hot()[: options.get("n", 4)]
        result = sample(
            model, options.get("scheduler", "ddim"), conds, train_config=noise, steps=options.get("steps", 2)
        )
        torch.save(result.images, Path(config.out_dir) / options.get("out", "samples.pt"))
    if summary.loss_log is not None:
        print(
            json.dumps(
                {
                    "steps": summary.steps,
                    "processes": summary.processes,
                    "final_loss": summary.final_loss,
                    "checkpoint": str(summary.checkpoint),
                }
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = [
    "TrainConfig",
    "TrainSummary",
    "TrainingError",
    "TrainingOptionError",
    "RECIPES",
    "train",
    "check_run",
    "measure_throughput",
    "epoch_permutation",
    "unwrap_model",
]
