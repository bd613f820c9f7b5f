"""The UNet's thin end convolutions by Triton kernels of our own, the output one with its norm fused.

``conv_in`` (3 -> 128 channels) and ``conv_out`` (128 -> 3) are 3x3 convolutions with one thin
side. cuDNN runs each as one slow kernel: about 0.6 ms at batch 512 on an H100 where their bytes
need about 0.19 ms (BENCHMARKS.md, session 29); padding them (bench/padded_conv.py) or writing
them as matrix products for cuBLAS (session 34) did not help. Here each is memory-bound work of
its own kernels (bench/end_conv_kernels.py):

- ``conv_in``: one pass, each pixel's 27 neighbourhood values times the kernel matrix;
- ``conv_norm_out`` -> ``conv_act`` (SiLU) -> ``conv_out``: GroupNorm's statistics as
  ``GroupNormByChannelStats`` computes them (left to torch.compile), then one kernel that
  normalises, applies SiLU and computes every tap's partial sums in the same pass over the
  activations, and one that adds each pixel's nine neighbours' sums. The plain path writes the
  normalised activations (0.54 GB at batch 512) and reads them back for cuDNN.

``use_triton_end_convs(model, enabled)`` switches each diffusers ``UNet2DModel``-like module of a
model (one holding ``conv_in`` / ``conv_norm_out``, ``conv_act``, ``conv_out``) in place by
changing module classes (parameters and state_dict keys unchanged): ``conv_in`` becomes
``TritonConvIn``; the tail's norm and SiLU become ``FusedIntoNext`` (they hand their input on, the
class they had kept on the instance) and ``conv_out`` becomes ``NormSiLUConvOut``, which holds the
norm (not as a submodule) and computes all three. Each falls back to torch's own ops (the same
sums) where the kernels cannot run: off CUDA, on a card older than compute capability 8.0, without
Triton, outside bf16/fp16 autocast, or on an image whose pixel count no block of 16 to 128 divides.

Measured on an H100 (BENCHMARKS.md, session 36): 1.022x the untuned GPU default's sampling (48.9 ->
47.9 ms a step at batch 512), hence on by default when compiling on CUDA in bf16.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.groupnorm import group_norm_scale_shift

THIN = 8  # at most this many channels on the thin side: 9 * 8 = 72 rows fit a block of 128


# Whether Triton is here (CUDA builds of torch ship it; CPU builds may not), and its kernels module
# once a switch has imported it: plain globals, which torch.compile reads as constants inside a
# forward (a cached function or an import there may split the traced graph).
_TRITON = importlib.util.find_spec("triton") is not None
_KERNELS: Any = None  # bench.end_conv_kernels
# CUDA device index -> whether the kernels run there: their tensor-core products in bf16 need compute
# capability 8.0 (Ampere) or newer, so an older card (a T4, a V100) keeps torch's ops. Filled with
# the kernels.
_CAPABLE: dict[int, bool] = {}


def triton_available() -> bool:
    """Whether Triton imports here."""
    return _TRITON


def card_takes_kernels(device: torch.device | str) -> bool:
    """Whether the kernels would run on CUDA ``device``: compute capability 8.0 or newer (the
    switch's default follows it). Where this machine has no CUDA, options resolved for one are
    taken as for a card that does."""
    if not torch.cuda.is_available():
        return True
    return torch.cuda.get_device_capability(torch.device(device)) >= (8, 0)


def _load_kernels() -> None:
    global _KERNELS
    if _KERNELS is None and _TRITON:
        from bench import end_conv_kernels

        _KERNELS = end_conv_kernels
    if not _CAPABLE and torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            _CAPABLE[index] = card_takes_kernels(torch.device("cuda", index))


def is_plain_3x3(conv: nn.Module) -> bool:
    """A 3x3 ``nn.Conv2d`` that keeps the image's size: stride 1, zero padding 1, no dilation or
    groups (what the kernels here, and the folded upsampling of bench/upsample.py, take)."""
    return (
        isinstance(conv, nn.Conv2d)
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


def _wide(channels: int) -> bool:
    """The wide side's channels: up to 256 (a block of pixels by the channels, padded to a power of
    two, stays within the kernels' registers)."""
    return 1 <= channels <= 256


def _half_on_cuda(x: torch.Tensor) -> torch.dtype | None:
    """Autocast's half dtype where ``x`` is on a CUDA card the kernels run on (``_CAPABLE``) under
    it, else None. fp32 stays with cuDNN: the kernels' products would round to tf32."""
    if not x.is_cuda or not _CAPABLE.get(x.device.index, False) or not torch.is_autocast_enabled("cuda"):
        return None
    dtype = torch.get_autocast_dtype("cuda")
    return dtype if dtype in (torch.bfloat16, torch.float16) else None


def _kernel_dtype(x: torch.Tensor, wide: int) -> torch.dtype | None:
    """The dtype the kernels compute in for ``x`` (``wide`` channels on the wide side), None where
    they cannot run: fall back to torch (also for an image no pixel block divides, and wherever
    autograd records: the kernels have no backward, and a model sampled in one process may be
    trained next with its modules still switched)."""
    if _KERNELS is None or torch.is_grad_enabled():
        return None
    dtype = _half_on_cuda(x)
    if dtype is None or _KERNELS.pixel_block(x.shape[-2] * x.shape[-1], wide) is None:
        return None
    return dtype


def _bias(conv: nn.Conv2d) -> torch.Tensor:
    return conv.bias if conv.bias is not None else conv.weight.new_zeros(conv.out_channels)


class TritonConvIn(nn.Conv2d):
    """``nn.Conv2d`` (3x3, thin input) by ``bench::conv_in_3x3`` where it can run."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = _kernel_dtype(x, self.out_channels)
        if dtype is None:
            return super().forward(x)
        return _KERNELS.conv_in_3x3(x, self.weight, _bias(self), dtype)


class FusedIntoNext(nn.Module):
    """A module whose work ``NormSiLUConvOut`` does: it hands its input on."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class NormSiLUConvOut(nn.Conv2d):
    """``conv_out(silu(norm(x)))`` in one module; ``norm`` is kept in ``_bench_norm``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.__dict__["_bench_norm"]
        scale, shift = group_norm_scale_shift(norm, x)
        dtype = _kernel_dtype(x, self.in_channels)
        if dtype is None:
            shape = (*scale.shape, 1, 1)
            z = (x.float() * scale.view(shape) + shift.view(shape)).to(x.dtype)
            return super().forward(F.silu(z))
        return _KERNELS.norm_silu_conv_out_3x3(x, scale, shift, self.weight, _bias(self), dtype)


def _tail(model: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module] | None:
    """``(conv_norm_out, conv_act, conv_out)`` where they are a GroupNorm, a SiLU and a thin-output
    3x3 convolution (in either form), else None."""
    norm, act, conv = (getattr(model, name, None) for name in ("conv_norm_out", "conv_act", "conv_out"))
    if norm is None or act is None or not isinstance(conv, nn.Conv2d):
        return None
    fits = (
        issubclass(_own_class(norm), nn.GroupNorm)
        and _own_class(act) is nn.SiLU
        and type(conv) in (nn.Conv2d, NormSiLUConvOut)
        and is_plain_3x3(conv)
        and conv.out_channels <= THIN
        and _wide(conv.in_channels)
    )
    return (norm, act, conv) if fits else None


def _own_class(module: nn.Module) -> type:
    """``module``'s class before it was handed on (``FusedIntoNext``), else its class."""
    return module.__dict__.get("_bench_class", type(module))


def _head(model: nn.Module) -> nn.Conv2d | None:
    conv = getattr(model, "conv_in", None)
    fits = (
        type(conv) in (nn.Conv2d, TritonConvIn)
        and is_plain_3x3(conv)
        and conv.in_channels <= THIN
        and _wide(conv.out_channels)
    )
    return conv if fits else None


def _holders(model: nn.Module) -> list[nn.Module]:
    """``model`` and its submodules that hold a ``conv_in`` or a ``conv_out`` (a UNet inside a wrapper)."""
    return [m for m in model.modules() if "conv_in" in m._modules or "conv_out" in m._modules]


def triton_end_convs(model: nn.Module) -> int:
    """How many end convolutions ``use_triton_end_convs`` would switch (2 for each UNet)."""
    return sum(int(_head(m) is not None) + int(_tail(m) is not None) for m in _holders(model))


def _hand_on(module: nn.Module) -> None:
    if type(module) is not FusedIntoNext:
        module.__dict__["_bench_class"] = type(module)
        module.__class__ = FusedIntoNext


def _restore(module: nn.Module) -> None:
    if type(module) is FusedIntoNext:
        module.__class__ = module.__dict__.pop("_bench_class")


def use_triton_end_convs(model: nn.Module, enabled: bool = True) -> int:
    """Switch the end convolutions of every UNet in ``model`` to the Triton forms (or back);
    returns how many."""
    if enabled:
        _load_kernels()
    count = 0
    for holder in _holders(model):
        head, tail = _head(holder), _tail(holder)
        if head is not None:
            head.__class__ = TritonConvIn if enabled else nn.Conv2d
            count += 1
        if tail is not None:
            norm, act, conv = tail
            if enabled:
                _hand_on(norm)
                _hand_on(act)
                conv.__dict__["_bench_norm"] = norm
                conv.__class__ = NormSiLUConvOut
            else:
                _restore(norm)
                _restore(act)
                conv.__dict__.pop("_bench_norm", None)
                conv.__class__ = nn.Conv2d
            count += 1
    return count
