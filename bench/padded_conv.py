"""Thin convolutions (channel counts off a multiple of 8) run padded to the next multiple with zeros.

The UNet's two end convolutions touch the 3 image channels: ``conv_in`` (3 -> 128) and
``conv_out`` (128 -> 3). On the GPU in bf16 channels_last a 3-channel row is 6 bytes, too narrow
for the tensor-core kernels, and cuDNN runs each as one slow kernel (about 0.6 ms at batch 512 on an
H100 where their bytes need about 0.19; BENCHMARKS.md, session 29). Padded, ``conv_in`` reads 8
channels of which 5 are zero against 5 zero input planes of the kernel, and ``conv_out`` computes 5
extra output channels from zero kernels and drops them: every kept output is the same sum (zero
terms added), so the result is the plain convolution's up to the order of the sums.

Measured (BENCHMARKS.md, session 31, H100): no faster. cuDNN already runs the unpadded ones on
tensor-core kernels aligned to 8 channels (one the same kernel either way, 640 us; the other an
``align8`` CUTLASS kernel, 601 us unpadded against 629 padded); the pads fuse into Inductor's
kernels around them. Kept, off by default, as a measured alternative for other cards and cuDNN
versions.

The padded kernels are built from the trained weights inside every forward (tiny tensors; always
in step with the weights). ``use_padded_thin_convs(model, enabled)`` switches a model's eligible
``nn.Conv2d`` modules in place by changing their class (parameters and state_dict keys unchanged),
like bench/upsample.py.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from bench.groupnorm import channels_last_only

CHANNEL_MULTIPLE = 8  # 16 bytes of bf16: the narrowest row cuDNN's tensor-core kernels take


def padded_to(channels: int) -> int:
    """``channels`` rounded up to a multiple of ``CHANNEL_MULTIPLE``."""
    return -(-channels // CHANNEL_MULTIPLE) * CHANNEL_MULTIPLE


def _like(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``x`` dense, in ``reference``'s layout (F.pad builds NCHW; a channel slice is not dense)."""
    layout = torch.channels_last if channels_last_only(reference) else torch.contiguous_format
    return x.contiguous(memory_format=layout)


def padded_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` with input and output channels padded to a multiple of ``CHANNEL_MULTIPLE``."""
    weight, bias = conv.weight, conv.bias
    out_channels, in_channels = weight.shape[:2]
    extra_in = padded_to(in_channels) - in_channels
    extra_out = padded_to(out_channels) - out_channels
    if extra_in:
        x = _like(F.pad(x, (0, 0, 0, 0, 0, extra_in)), x)
    # (kw, kw, kh, kh, in, in, out, out): zero input planes, then zero output kernels.
    weight = _like(F.pad(weight, (0, 0, 0, 0, 0, extra_in, 0, extra_out)), weight)
    if bias is not None and extra_out:
        bias = F.pad(bias, (0, extra_out))
    y = F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation)
    # A dense copy of the kept channels: later kernels and the caller get the plain layout.
    return _like(y[:, :out_channels], y) if extra_out else y


def _paddable(module: nn.Module) -> bool:
    """A plain 2-d convolution (no groups, zero padding) with a channel count off the multiple."""
    return (
        isinstance(module, nn.Conv2d)
        and module.groups == 1
        and module.padding_mode == "zeros"
        and isinstance(module.padding, tuple)  # not "same"/"valid" strings
        and (module.in_channels % CHANNEL_MULTIPLE != 0 or module.out_channels % CHANNEL_MULTIPLE != 0)
    )


@functools.cache  # one class: isinstance checks and torch.compile's guards see the same type
def _padded_class() -> type[nn.Conv2d]:
    class PaddedConv2d(nn.Conv2d):
        """``nn.Conv2d`` computed by :func:`padded_conv` (same parameters, same result)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return padded_conv(self, x)

    return PaddedConv2d


def _paddable_modules(model: nn.Module) -> list[nn.Module]:
    classes = (nn.Conv2d, _padded_class())
    return [m for m in model.modules() if type(m) in classes and _paddable(m)]


def paddable_convs(model: nn.Module) -> int:
    """How many of ``model``'s modules ``use_padded_thin_convs`` would switch (in either form)."""
    return len(_paddable_modules(model))


def use_padded_thin_convs(model: nn.Module, enabled: bool = True) -> int:
    """Switch every thin ``nn.Conv2d`` of ``model`` to the padded form (or back); returns how many.
    Only modules of exactly ``nn.Conv2d`` (a subclass may compute something else)."""
    modules = _paddable_modules(model)
    for module in modules:
        module.__class__ = _padded_class() if enabled else nn.Conv2d
    return len(modules)
