"""THE sampling loop: one loop for every scheduler, with NFE counting, guidance and a fast path.

For each chunk of conditions: a fresh scheduler (multistep schedulers keep state), then
``set_timesteps(steps, device)``, noise * ``init_noise_sigma``, and per timestep
``scale_model_input`` -> model -> ``step``. Classifier-free guidance runs as ONE doubled batch
(conditions + null conditions = zeros). Every model call is counted (NFE): Heun calls the model
twice per step (2 * steps - 1 calls: its last step is first order).

Guidance interval: with ``guidance_interval=(lo, hi)`` (training timesteps) only the steps with
``lo <= t <= hi`` run the doubled batch; the others run the model once on the conditions alone
(guidance scale 1 there). The choice is host work (the timesteps are host tensors). A single
call and a doubled call each count as one model call; ``extra["guided_nfe"]`` counts the doubled
ones.

Determinism: every image has its own generator seeded from (seed, image index), for the
initial noise and for the noise of stochastic steps, so an image depends on its seed and index,
not on the batch size or its neighbours (up to kernel numerics, which may differ with batch shape).

Host syncs: none inside the loop. The scheduler's timesteps and tables stay on the host
(``set_timesteps`` without a device); the model gets a device copy of the timesteps, sent once
per chunk; ``step`` gets host scalars, so DDPM's previous-timestep search and the sigma lookups
of DDIM/Euler/Heun/DPM-Solver++/UniPC are host work and their coefficients reach the GPU as
scalars. ``set_begin_index(0)`` skips the lookup sigma schedulers do at their first step. What
remains per step: with per-image generators, stochastic steps draw their noise with one small
kernel per image; with ``noise_ahead`` DDPM's draws run a step ahead on a side CUDA stream
(bench/step_noise.py).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from bench.attention import use_attention_by_sums
from bench.compile_mode import (
    compile_only_switch_error,
    compile_options,
    quiet_known_compile_warnings,
    weights_frozen,
)
from bench.end_convs import card_takes_kernels, triton_available, use_triton_end_convs
from bench.groupnorm import chosen_group_norm, resolved_group_norm, use_group_norm
from bench.guidance import check_interval, in_interval
from bench.noise import check_schedule_compatible, scheduler_factory
from bench.padded_conv import use_padded_thin_convs
from bench.registry import Entry
from bench.results import SPEED_SWITCHES
from bench.step_noise import StepNoise, draws_at, takes_part
from bench.upsample import use_folded_upsample

# What the sampling loop reads of a scheduler before its first step (``set_begin_index`` only where
# present; ``timesteps`` once set_timesteps has run): a plugin's scheduler lacking one is refused
# before any cell (runner._check_scheduler_factory).
SCHEDULER_ATTRIBUTES = ("config", "set_timesteps", "init_noise_sigma", "scale_model_input", "step")

# Schedulers whose ``step`` draws no noise (with their default options): no generators passed.
_DETERMINISTIC = {
    "DDIMScheduler",
    "EulerDiscreteScheduler",
    "HeunDiscreteScheduler",
    "UniPCMultistepScheduler",
    "DPMSolverSinglestepScheduler",
}


def _step_kwargs(scheduler: Any, generators: list[torch.Generator]) -> dict[str, Any]:
    """The per-image generators for a stochastic ``step``; nothing for one that draws no noise (a
    class of ``_DETERMINISTIC`` or a subclass) or whose ``step`` takes no ``generator`` (UniPC,
    PNDM, DEIS, KDPM2...: passing one there was a TypeError in every cell)."""
    if any(cls.__name__ in _DETERMINISTIC for cls in type(scheduler).__mro__):
        return {}
    try:
        params = inspect.signature(scheduler.step).parameters
    except (TypeError, ValueError):  # no signature to read: let step say what it takes
        return {"generator": generators}
    takes = "generator" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    return {"generator": generators} if takes else {}


def cpu_has_bf16_matmul() -> bool:
    """Whether this CPU has AMX tiles, which oneDNN uses for bf16 convolutions and matmuls.

    There bf16 autocast samples the shipped `small` model 1.6x faster than fp32 (0.82 against
    0.51 images/s over 4 seeds, one after the other on this project's 2-core machine), with the
    same accuracy within a seed's spread (BENCHMARKS.md). Without AMX (AVX-512 BF16 alone) it
    was no faster, so fp32 stays the default there.
    """
    is_amx = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private, so looked up with care
    try:
        return bool(is_amx and is_amx())
    except RuntimeError:
        return False


class SamplingOptionsError(ValueError):
    """Options that cannot run together or on this device (a user error: one clear line)."""


class SamplingError(RuntimeError):
    """The loop made no usable images: a scheduler's step of the wrong shape, or NaN/inf values."""


@dataclass(frozen=True)
class SamplingOptions:
    """How fast the loop runs; ``None`` picks the default for the device.

    Defaults: on CUDA bf16 autocast, channels_last, torch.compile with CUDA graphs
    (``mode="reduce-overhead"``), few-token attention by sums, GroupNorm from per-channel
    statistics, chunks of 512 images (256 when guided); on CPU channels_last (measured faster on
    CPU, numerically the same), no compile, chunks of 32 (16 when guided), and bf16 autocast where
    the CPU multiplies bf16 in hardware (AMX, :func:`cpu_has_bf16_matmul`), else plain fp32.
    Each part can be switched on or off by itself.
    """

    dtype: str | None = None  # "bf16" (autocast) or "fp32"
    channels_last: bool | None = None
    compile: bool | None = None
    cuda_graphs: bool | None = None  # with compile: CUDA graphs of the whole forward
    batch_size: int | None = None  # images per chunk (guidance doubles the model batch)
    # cudnn.benchmark: time cuDNN's convolution algorithms once per shape instead of trusting its
    # heuristics. CUDA only; off by default: on an H100 it bought nothing for the seed UNet
    # (BENCHMARKS.md), and the heuristics pick the same algorithms on every run.
    cudnn_benchmark: bool | None = None
    # torch.compile's max-autotune: Triton templates timed against cuBLAS/cuDNN per shape
    # (minutes of compile, once per shape). Needs compile.
    autotune: bool | None = None
    # Inductor's coordinate-descent tuning: each generated kernel's launch settings (block sizes,
    # warps) searched around its heuristic choice. Minutes more compile per shape (cached on disk
    # after the first run). Needs compile.
    tune_kernels: bool | None = None
    # GroupNorm as channel-splitting views (bench/groupnorm.py), so torch.compile reduces
    # channels_last activations in place instead of around layout copies.
    group_norm_by_views: bool | None = None
    # GroupNorm from per-channel statistics (bench/groupnorm.py): a channels_last tensor reduced
    # with its channels contiguous instead of in strided groups. Default on when compiling on CUDA
    # (not with group_norm_by_views); eager it is several kernels instead of one.
    group_norm_by_channel_stats: bool | None = None
    # Upsampling as one 2x2 convolution on the small input (bench/upsample.py): 4/9 of the
    # upsampling convolutions' FLOPs, no upsampled tensor. Eager on a CPU its interleave costs more
    # than it saves for narrow layers, so it is a switch.
    fold_upsample: bool | None = None
    # Attention over a few tokens (at most bench.attention.MAX_TOKENS) as products and sums that
    # torch.compile fuses (bench/attention.py), where torch's attention kernels idle. Default on
    # when compiling on CUDA; uncompiled it is slower.
    attention_by_sums: bool | None = None
    # Convolutions whose channel counts are off a multiple of 8 (the UNet's 3-channel conv_in and
    # conv_out) padded with zeros (bench/padded_conv.py): the same sums. Off by default: no faster
    # on an H100 (session 31), where cuDNN already runs them on 8-channel-aligned kernels.
    pad_thin_convs: bool | None = None
    # The weights folded into the compiled graph as constants (Inductor's freezing), so autocast
    # need not cast them every call. Off by default: its graphs miss most of Inductor's caches
    # (AOTAutograd's is bypassed with freezing), so every compile takes longer than the per-call
    # saving repays in a usual run (the figures: `bench run --help`, BENCHMARKS.md session 32).
    # A weight change recompiles (see _compiled).
    freeze_weights: bool | None = None
    # Each DDPM step's per-image noise drawn one step ahead on a side CUDA stream, beside the model's
    # call (bench/step_noise.py): the same values. Default on when compiling on CUDA; on a CPU
    # nothing overlaps.
    noise_ahead: bool | None = None
    # The UNet's thin end convolutions by Triton kernels of our own, the output one with its
    # GroupNorm and SiLU in the same pass (bench/end_convs.py). Default on when compiling on CUDA in
    # bf16 (not with pad_thin_convs, which rewrites the same convolutions); fp32 and the CPU fall
    # back to torch's ops.
    triton_end_convs: bool | None = None

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            raise SamplingOptionsError(f"--batch-size must be at least 1, got {self.batch_size}")

    def resolved(self, device: torch.device | str, guided: bool = False) -> SamplingOptions:
        """These options with every ``None`` replaced by the default for ``device`` (the chunk
        size also depends on whether guidance doubles the model's batch)."""
        cuda = torch.device(device).type == "cuda"
        dtype = self.dtype or ("bf16" if cuda or cpu_has_bf16_matmul() else "fp32")
        if dtype not in ("bf16", "fp32"):
            raise SamplingOptionsError(f"sampling dtype must be 'bf16' or 'fp32', not {dtype!r}")
        # CPU: a model batch of 32 images stays in cache. On 2 cores the `small` preset costs
        # 7.1 ms per image in a 32-image forward, 9.3 in a 64-image one and 14 in a 128-image
        # one; a guided chunk doubles the batch, so guided chunks hold 16 (same images either
        # way: the noise is drawn per image).
        # CUDA: a model batch of 512. Chunks of 512 sampled 11 % faster than chunks of 256, and 32
        # to 128 slower still, on an H200 (BENCHMARKS.md, session 24). Tuned on an H100, 1,024
        # gains 1.7-2.3 % and 2,048 another 0.4 % (sessions 36-37), for twice and four times the
        # activations; bench run's condition sets are smaller than a chunk anyway, so 512 stays,
        # and a guided chunk, doubled inside, holds 256 and needs no more memory.
        default = (256 if guided else 512) if cuda else (16 if guided else 32)
        batch_size = default if self.batch_size is None else self.batch_size
        compile_ = cuda if self.compile is None else self.compile
        cuda_graphs = (cuda and compile_) if self.cuda_graphs is None else self.cuda_graphs
        if cuda_graphs and not cuda:
            raise SamplingOptionsError("cuda_graphs needs a CUDA device")
        if cuda_graphs and not compile_:  # eager, they would be recorded as on and never run
            raise SamplingOptionsError("cuda_graphs needs compile (the graphs capture the compiled forward)")
        channels_last = True if self.channels_last is None else self.channels_last
        error = compile_only_switch_error(
            compile_,
            autotune=bool(self.autotune),
            tune_kernels=bool(self.tune_kernels),
            freeze_weights=bool(self.freeze_weights),
        )
        if error:
            raise SamplingOptionsError(error)
        if self.pad_thin_convs and self.triton_end_convs:
            raise SamplingOptionsError(
                "--pad-thin-convs and --triton-end-convs both rewrite the thin end convolutions: choose one"
            )
        try:
            group_norm = resolved_group_norm(self, compiled=compile_, cuda=cuda)
        except ValueError as error:
            raise SamplingOptionsError(str(error)) from None
        return SamplingOptions(
            dtype=dtype,
            channels_last=channels_last,
            compile=compile_,
            cuda_graphs=cuda_graphs,
            batch_size=batch_size,
            cudnn_benchmark=bool(self.cudnn_benchmark) and cuda,
            autotune=bool(self.autotune),
            tune_kernels=bool(self.tune_kernels),
            group_norm_by_views=group_norm == "views",
            group_norm_by_channel_stats=group_norm == "channel-stats",
            fold_upsample=bool(self.fold_upsample),
            # Compiled on CUDA: 1.036x and 1.045x the sampling speed of the `seed` preset on an H100
            # (BENCHMARKS.md, session 26). Uncompiled it writes its products out: off.
            attention_by_sums=(cuda and compile_)
            if self.attention_by_sums is None
            else self.attention_by_sums,
            pad_thin_convs=bool(self.pad_thin_convs),
            freeze_weights=bool(self.freeze_weights),
            # Compiled on CUDA, beside today's default on an H100: noise ahead 1.009x, the Triton
            # end convolutions 1.022x, both 1.025x (BENCHMARKS.md, session 36).
            noise_ahead=(cuda and compile_) if self.noise_ahead is None else self.noise_ahead,
            triton_end_convs=(
                cuda
                and compile_
                and dtype == "bf16"
                and not self.pad_thin_convs
                and triton_available()
                and card_takes_kernels(device)
            )
            if self.triton_end_convs is None
            else self.triton_end_convs,
        )

    @property
    def compile_options(self) -> dict[str, Any]:
        """torch.compile's Inductor options for these options' mode and kernel tuning."""
        return compile_options(
            autotune=bool(self.autotune),
            cuda_graphs=bool(self.cuda_graphs),
            force_layout_opt=False,
            tune_kernels=bool(self.tune_kernels),
            freeze_weights=bool(self.freeze_weights),
        )

    @classmethod
    def plain(cls, batch_size: int = 256) -> SamplingOptions:
        """fp32, no channels_last, no compile, no CUDA graphs, every speed switch off."""
        return cls(
            dtype="fp32",
            channels_last=False,
            compile=False,
            cuda_graphs=False,
            batch_size=batch_size,
            **dict.fromkeys(SPEED_SWITCHES, False),
        )


@dataclass
class SampleResult:
    """Images (N, 3, H, W) float32 on CPU in [-1, 1], and what producing them cost."""

    images: torch.Tensor
    nfe: int  # model calls per image (a guided call on the doubled batch counts once)
    seconds: float  # wall time of the sampling loops only (synchronized; excludes compile warm-up)
    peak_memory_mb: float | None  # max_memory_allocated over the call (warm-up included); None off CUDA
    frames: torch.Tensor | None = None  # (F, N, 3, H, W) x_t from noise to image, if recorded
    warmup_seconds: float = 0.0  # compile / CUDA-graph capture before the clock started
    options: SamplingOptions | None = None
    steps: int = 0
    guidance: float = 1.0
    # (lo, hi) training timesteps where guidance applied; None: every step (or guidance off)
    guidance_interval: tuple[float, float] | None = None
    scheduler: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # "guided_nfe": calls on the doubled batch

    @property
    def images_per_second(self) -> float:
        return len(self.images) / self.seconds if self.seconds > 0 else float("inf")


def chunk_size(n: int, batch_size: int) -> int:
    """The images per chunk that sample ``n`` in as few chunks of at most ``batch_size`` as
    possible, the chunks as even as can be: the last chunk is padded to the same shape (one
    compiled graph), so 600 images at 512 run as two chunks of 300, not 512 + 88 padded to 512."""
    n = max(n, 1)
    chunks = -(-n // batch_size)
    return -(-n // chunks)


def image_seed(seed: int, index: int) -> int:
    """The generator seed of image ``index`` under run seed ``seed`` (stable across batch sizes)."""
    return (int(seed) * 1_000_003 + int(index)) % (2**63 - 1)


def check_steps(steps: int) -> int:
    """A step count that can sample: at least 1."""
    if steps < 1:
        raise SamplingOptionsError(f"steps must be at least 1, got {steps}")
    return int(steps)


def resolve_steps(scheduler: str | Callable | Entry, steps: int | None = None) -> int:
    """``steps``, or the scheduler's ``default_steps`` when not given (else 50)."""
    if steps is None:
        name, factory = scheduler_factory(scheduler)
        default = getattr(factory, "default_steps", 50)
        if isinstance(default, bool) or not isinstance(default, int) or default < 1:
            raise SamplingOptionsError(
                f"scheduler {name!r} declares default_steps = {default!r}; it must be a whole number "
                "of at least 1 (give --steps meanwhile)"
            )
        return default
    return check_steps(steps)


def _weights_stamp(model: torch.nn.Module) -> tuple[tuple[int, int], ...]:
    """Where each parameter and buffer lives and how often it was changed in place: a loaded
    state_dict, an optimizer step or a ``.data`` swap each change it."""
    tensors = (*model.parameters(), *model.buffers())
    if any(t.is_inference() for t in tensors):
        raise SamplingOptionsError(
            "freeze_weights needs weights made outside torch.inference_mode(): the in-place changes "
            "of inference tensors are not counted, so a frozen graph could keep stale weights"
        )
    return tuple((t.data_ptr(), t._version) for t in tensors)


def _compiled(model: torch.nn.Module, options: dict[str, Any], variant: str = "") -> Callable:
    """torch.compile(model) for (Inductor options, module variant), reused while those stay the
    same; fixed shapes (the last chunk is padded).

    A new variant (module classes swapped by a speed switch) first resets Dynamo: its compiled code
    is cached on the forward's code object, not on our wrapper, and whether its guards notice a
    class swap depends on the torch version (an H100 suite on torch 2.11 warmed a padded mode up
    with no compile and timed it as the unpadded mode before it: BENCHMARKS.md, session 31). A
    bench process samples one variant, so this costs nothing there; a script flipping switches on
    one model pays a compile per flip. With the weights frozen into the graph (``freezing``), a
    change of any parameter or buffer makes a new variant too: the graph holds the old values as
    constants, and no guard looks at values; and the model is called with Inductor's global
    freezing held, without which nothing freezes.
    """
    frozen = _weights_stamp(model) if options.get("freezing") else None
    key = (tuple(sorted(options.items())), variant, frozen)
    held = model.__dict__.get("_bench_compiled")  # a plain attribute: not a submodule
    if held is None or held[0] != key:
        if held is not None:
            torch._dynamo.reset()  # also frees the old CUDA-graph pools
        quiet_known_compile_warnings()
        compiled = torch.compile(model, options=options, dynamic=False)
        held = (key, _called_frozen(compiled) if frozen is not None else compiled)
        model.__dict__["_bench_compiled"] = held
    return held[1]


def _called_frozen(compiled: Callable) -> Callable:
    """``compiled`` called with Inductor's freezing held on (why: bench.compile_mode.weights_frozen)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        with weights_frozen():
            return compiled(*args, **kwargs)

    return call


# The switches that change the model's modules in place (SamplingOptions field -> its switch),
# besides the GroupNorm kind (bench.groupnorm.chosen_group_norm).
_MODULE_SWITCHES: dict[str, Callable[[torch.nn.Module, bool], int]] = {
    "fold_upsample": use_folded_upsample,
    "attention_by_sums": use_attention_by_sums,
    "pad_thin_convs": use_padded_thin_convs,
    "triton_end_convs": use_triton_end_convs,
}


class _ModelCall:
    """The model under the chosen precision/compile, with guidance as one doubled batch."""

    def __init__(self, model: torch.nn.Module, options: SamplingOptions, device: torch.device) -> None:
        self.device = device
        self.bf16 = options.dtype == "bf16"
        self.channels_last = options.channels_last
        self.cuda_graphs = bool(options.cuda_graphs)
        # Each set on or back: the model is shared between calls. All back first, then the ones
        # asked for: a switch takes only the plain modules (padding skips the Triton end
        # convolutions a previous call left, which would then come back plain, unpadded). The
        # GroupNorm kind last: the Triton end convolutions hand the output norm's work on, and
        # give its class back when off.
        for use in reversed(_MODULE_SWITCHES.values()):
            use(model, False)
        for switch, use in _MODULE_SWITCHES.items():
            if getattr(options, switch):
                use(model, True)
        group_norm = chosen_group_norm(options)
        use_group_norm(model, group_norm)
        if options.compile:
            # Each module variant changes the traced graph: a compiled module of its own.
            variant = ",".join(
                [group_norm, *(switch for switch in _MODULE_SWITCHES if getattr(options, switch))]
            )
            self.forward = _compiled(model, options.compile_options, variant)
        else:
            self.forward = model
        self.calls = 0
        self.guided_calls = 0  # calls on the doubled (conditional + null) batch

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, guidance: float) -> torch.Tensor:
        if guidance != 1.0:
            x = torch.cat([x, x])
            cond = torch.cat([cond, torch.zeros_like(cond)])  # the null condition of CFG training
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        t = t.expand(x.shape[0])
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.forward(x, t, cond)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            # A plugin model's (B, 1, H, W) was broadcast by the scheduler and scored as images.
            got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
            raise SamplingError(
                f"the model returned {got} for an input of shape {tuple(x.shape)}: "
                "forward(x, t, cond) must return a tensor of x's shape"
            )
        self.calls += 1
        self.guided_calls += int(guidance != 1.0)
        # A CUDA-graph output buffer is overwritten by the next replay; multistep schedulers keep
        # past outputs, so take a private copy.
        out = out.float().clone() if self.cuda_graphs else out.float()
        if guidance != 1.0:
            cond_eps, null_eps = out.chunk(2)
            out = null_eps + guidance * (cond_eps - null_eps)
        return out


@contextmanager
def cudnn_benchmark(enabled: bool) -> Iterator[None]:
    """``torch.backends.cudnn.benchmark = enabled`` inside the block, the caller's value after."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _host_buffer(batch: int, shape: tuple[int, ...], device: torch.device) -> torch.Tensor | None:
    """One chunk of page-locked memory for the images' way to the host from CUDA (None elsewhere):
    a pageable copy of 512 64x64 images took 14.3 ms on an H100 (session 29's profile), once per
    chunk, with the GPU idle. Made before the clock starts: page-locking is slow."""
    if device.type != "cuda":
        return None
    return torch.empty((batch, *shape), pin_memory=True)


def _to_host(images: torch.Tensor, buffer: torch.Tensor | None) -> torch.Tensor:
    """``images`` on the CPU, through ``buffer`` (``_host_buffer``) where there is one; a copy of
    it, which the next chunk overwrites."""
    if buffer is None:
        return images.cpu()
    return buffer[: len(images)].copy_(images).clone()


def _frame_points(total: int, frames: int) -> list[int]:
    """Indices of the steps after which a frame is kept (0 = the initial noise)."""
    return sorted({round(i * total / frames) for i in range(frames + 1)})


def _fresh_scheduler(
    factory: Callable, train_config: dict[str, Any], scheduler_options: dict[str, Any], steps: int
) -> Any:
    """A new scheduler (multistep state is per run) with its ``steps`` timesteps set. Its tables stay
    on the host: its lookups (DDPM's previous-timestep search, sigma indexing) are then host work,
    and its coefficients reach the GPU as scalars."""
    scheduler = factory(train_config, **scheduler_options)
    scheduler.set_timesteps(steps)
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(0)  # no timestep lookup at the first step
    return scheduler


def _run_chunk(
    call: _ModelCall,
    name: str,
    factory: Callable,
    train_config: dict[str, Any],
    scheduler_options: dict[str, Any],
    cond: torch.Tensor,
    generators: list[torch.Generator],
    steps: int,
    guidance: float,
    interval: tuple[float, float] | None,
    shape: tuple[int, int, int],
    record_frames: int,
    progress_label: str | None = None,
    noise_ahead: bool = False,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    device = call.device
    scheduler = _fresh_scheduler(factory, train_config, scheduler_options, steps)
    host_timesteps = scheduler.timesteps.cpu()
    timesteps = host_timesteps.to(device)  # the model's copy, sent once per chunk
    step_kwargs = _step_kwargs(scheduler, generators)
    ahead, draws = None, []
    if noise_ahead and step_kwargs and takes_part(scheduler):
        ahead = StepNoise(generators, shape, device)
        draws = [draws_at(t) for t in host_timesteps.tolist()]  # which steps draw, known up front

    x = torch.cat([torch.randn((1, *shape), generator=g, device=device) for g in generators])
    x = x * scheduler.init_noise_sigma
    frames: list[torch.Tensor] = []
    keep = set(_frame_points(len(timesteps), record_frames)) if record_frames else set()
    if 0 in keep:
        frames.append((x / scheduler.init_noise_sigma).float().cpu())
    step_indices: Iterable[int] = range(len(timesteps))
    if progress_label is not None:
        from bench.progress import progress

        step_indices = progress(step_indices, label=progress_label, length=len(timesteps))
    # The side stream's draws are waited for on the way out, an error's included.
    with ahead if ahead is not None else nullcontext():
        if ahead is not None and draws[0]:
            ahead.draw()  # after the initial noise: each generator's draws keep the plain path's order
        for i in step_indices:
            t_host = host_timesteps[i]
            model_input = scheduler.scale_model_input(x, t_host)
            # Guidance inside the interval only: a host decision, no device sync.
            scale = guidance if in_interval(float(t_host), interval) else 1.0
            eps = call(model_input, timesteps[i], cond, scale)
            before = x.shape
            if ahead is None:
                x = scheduler.step(eps, t_host, x, return_dict=False, **step_kwargs)[0]
            else:
                if i + 1 < len(draws) and draws[i + 1]:
                    ahead.draw()  # the next step's noise, on the side stream while this call runs
                with ahead.served(scheduler, draws[i]):
                    x = scheduler.step(eps, t_host, x, return_dict=False, **step_kwargs)[0]
            if x.shape != before:  # a host check: no sync
                raise SamplingError(
                    f"scheduler {name!r}: its step {i + 1} of {len(timesteps)} returned samples of shape "
                    f"{tuple(x.shape)} for samples of shape {tuple(before)}"
                )
            if i + 1 in keep:
                if i + 1 == len(timesteps):
                    frames.append(x.clamp(-1, 1).float().cpu())
                else:
                    # The variance-preserving view of x_t (sigma schedulers scale x_t up).
                    nxt = host_timesteps[i + 1]
                    frames.append(scheduler.scale_model_input(x, nxt).float().cpu())
    return x, frames


def sample(
    model: torch.nn.Module,
    scheduler: str | Callable | Entry,
    conditions: torch.Tensor,
    *,
    train_config: dict[str, Any],
    steps: int | None = None,
    guidance: float = 1.0,
    guidance_interval: tuple[float, float] | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    options: SamplingOptions | None = None,
    record_frames: int = 0,
    scheduler_options: dict[str, Any] | None = None,
    allow_schedule_mismatch: bool = False,
    image_shape: tuple[int, int, int] | None = None,
    show_progress: bool = False,
    first_index: int = 0,
) -> SampleResult:
    """Sample one image per row of ``conditions`` (N, num_labels multi-hot).

    Row ``i`` is image ``first_index + i`` of the run: its noise comes from
    ``image_seed(seed, first_index + i)``, so a shard of the rows sampled elsewhere gives the
    same images as the whole run in one place.

    ``scheduler`` is a registered name, a registry entry or a factory
    ``factory(train_config, **options)``;
    ``train_config`` is the checkpoint's noise-schedule config. ``steps`` defaults to the
    factory's ``default_steps`` (else 50). ``guidance`` is the CFG scale (1.0 = off, no
    doubled batch). ``guidance_interval=(lo, hi)`` limits guidance to the steps whose timestep
    ``t`` (training timesteps) has ``lo <= t <= hi``; elsewhere the model runs once, unguided.
    None guides every step. ``record_frames=N`` also returns N+1 frames of x_t from noise to image.
    ``show_progress`` draws a bar over each chunk's steps (exact on the CPU; on a GPU the loop
    only queues work, so the bar runs ahead).
    The model is used in place (eval mode; channels_last converts its weights' layout).
    """
    name, factory = scheduler_factory(scheduler)
    interval = check_interval(guidance_interval)
    interval = interval if guidance != 1.0 else None  # without guidance it has no effect
    # The name as registered (or the callable): the error names `linear`, not its factory function.
    check_schedule_compatible(train_config, scheduler, allow_schedule_mismatch)
    steps = resolve_steps(factory, steps)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    opts = (options or SamplingOptions()).resolved(device, guided=guidance != 1.0)
    shape = image_shape or model_image_shape(model)
    conditions = torch.as_tensor(conditions, dtype=torch.float32)
    if conditions.ndim != 2:
        raise ValueError(
            f"conditions must be a (N, num_labels) multi-hot tensor, got shape {tuple(conditions.shape)}"
        )
    n = len(conditions)
    batch = chunk_size(n, opts.batch_size)

    model.eval().to(device)
    if opts.channels_last:
        model.to(memory_format=torch.channels_last)
    call = _ModelCall(model, opts, device)

    def chunk(start: int) -> tuple[torch.Tensor, list[torch.Generator]]:
        # Pad the last chunk to the fixed batch shape (no recompilation, same CUDA graph).
        idx = list(range(start, start + batch))
        cond = conditions[start : start + batch]
        if len(cond) < batch:
            cond = torch.cat([cond, cond.new_zeros(batch - len(cond), cond.shape[1])])
        gens = [torch.Generator(device).manual_seed(image_seed(seed, first_index + i)) for i in idx]
        return cond, gens

    warmup, warmup_calls = 0.0, 0
    if device.type == "cuda":
        # The peak spans compile and capture: a CUDA graph's activations live in its private pool,
        # allocated while capturing and never again while replaying (a reset after warm-up read
        # about a tenth of what the graphed loop holds).
        torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode(), cudnn_benchmark(opts.cudnn_benchmark):
        # A copy made in inference mode, as the warm-up's dummies are: chunks sliced from a tensor
        # made outside it carry another dispatch key, which torch.compile's guards tell apart (it
        # compiled, and captured, the model again at the first timed call).
        conditions = conditions.to(device, copy=True)
        # No rows (a launch's process whose shard is empty): nothing to compile, and no first row
        # to make the warm-up's batch from.
        if opts.compile and n:
            # Compile and capture before the clock starts: three calls cover CUDA-graph recording.
            # With an interval the loop runs both batch shapes (doubled inside, single outside):
            # two compiled shapes, two captured graphs, both warmed here.
            _sync(device)
            start = time.perf_counter()
            dummy_x = torch.zeros((batch, *shape), device=device)
            # The loop's timestep dtype: Euler's and Heun's timesteps are float, and a long dummy
            # left their compile to the first timed call.
            probe = _fresh_scheduler(factory, train_config, scheduler_options or {}, steps)
            dummy_t = torch.zeros((), device=device, dtype=probe.timesteps.dtype)
            dummy_c = conditions[:1].expand(batch, -1).contiguous()
            for scale in [guidance] if interval is None else [guidance, 1.0]:
                for _ in range(3):
                    call(dummy_x, dummy_t, dummy_c, scale)
            _sync(device)
            warmup = time.perf_counter() - start
            warmup_calls = call.calls
            call.calls = call.guided_calls = 0
        host_buffer = _host_buffer(batch, shape, device) if n else None
        _sync(device)
        start = time.perf_counter()
        outputs, frame_chunks, chunks = [], [], range(0, n, batch)
        for k, first in enumerate(chunks):
            cond, gens = chunk(first)
            label = "denoising steps" + (f" (chunk {k + 1}/{len(chunks)})" if len(chunks) > 1 else "")
            x, frames = _run_chunk(
                call,
                name,
                factory,
                train_config,
                scheduler_options or {},
                cond,
                gens,
                steps,
                guidance,
                interval,
                shape,
                record_frames,
                progress_label=label if show_progress else None,
                noise_ahead=bool(opts.noise_ahead),
            )
            keep = min(batch, n - first)
            images = x[:keep].float()
            bad = int((~torch.isfinite(images)).sum())  # counted where the images are: one number back
            if bad:  # scored as black images otherwise
                raise SamplingError(
                    f"{bad} of {images.numel()} values of the images sampled with scheduler {name!r} "
                    f"({steps} steps) are NaN or inf: its step, or the model (a diverged checkpoint?), "
                    "gave non-finite values"
                )
            outputs.append(_to_host(images.clamp(-1, 1), host_buffer))
            if frames:
                frame_chunks.append(torch.stack([f[:keep] for f in frames]))
        _sync(device)
        seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    n_chunks = max(len(range(0, n, batch)), 1)
    return SampleResult(
        images=torch.cat(outputs) if outputs else torch.empty((0, *shape)),
        nfe=call.calls // n_chunks,
        seconds=seconds,
        peak_memory_mb=peak,
        frames=torch.cat(frame_chunks, dim=1) if frame_chunks else None,
        warmup_seconds=warmup,
        options=opts,
        steps=steps,
        guidance=guidance,
        guidance_interval=interval,
        scheduler=name,
        # "chunk": the images per chunk that ran, at most options.batch_size (chunks are made even)
        # "warmup_calls": model calls before the clock (compile and capture), outside nfe
        extra={"guided_nfe": call.guided_calls // n_chunks, "chunk": batch, "warmup_calls": warmup_calls},
    )


def plain_reference_loop(
    model: torch.nn.Module, scheduler: str | Callable, conditions: torch.Tensor, **sample_kwargs: Any
) -> SampleResult:
    """The course-style baseline for benchmarks: one image at a time, fp32, no compile.

    Takes :func:`sample`'s keyword arguments except ``options``; same per-image seeds, so both
    produce the same images up to numerics.
    """
    model.to(memory_format=torch.contiguous_format)
    options = SamplingOptions.plain(batch_size=1)
    return sample(model, scheduler, conditions, options=options, **sample_kwargs)


def model_image_shape(model: torch.nn.Module) -> tuple[int, int, int]:
    """(channels, height, width) the model samples: its config's ``in_channels`` and
    ``sample_size`` (register_models in bench/hookspecs.py), else 3 x 64 x 64."""
    config = getattr(model, "config", None) or {}
    if isinstance(config, dict) and "sample_size" in config:
        size = config["sample_size"]
        return (int(config.get("in_channels", 3)), int(size), int(size))
    return (3, 64, 64)


def with_batch_size(options: SamplingOptions | None, batch_size: int) -> SamplingOptions:
    """``options`` with another batch size (convenience for the runner)."""
    return replace(options or SamplingOptions(), batch_size=batch_size)


__all__: Sequence[str] = (
    "SamplingOptions",
    "SamplingOptionsError",
    "SampleResult",
    "sample",
    "plain_reference_loop",
    "image_seed",
    "with_batch_size",
    "chunk_size",
    "check_steps",
    "SamplingError",
    "resolve_steps",
)
