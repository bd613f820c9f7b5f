"""Nearest-2x upsampling + 3x3 convolution as one 2x2 convolution on the small input (sub-pixel).

diffusers' ``Upsample2D`` (every up block but the last of the UNet) doubles the activation with
nearest-neighbour interpolation, then runs a 3x3 convolution over it. Each output pixel
(2i+a, 2j+b) then sees only a 2x2 window of the input: along one axis, phase a=0 reads rows
(i-1, i) with taps (w0, w1+w2), phase a=1 reads rows (i, i+1) with taps (w0+w1, w2). So the
same result is one 2x2 convolution over the input padded by 1, with the four phases' kernels as
4x the output channels, and an interleave of its four outputs: 16 of the 36 multiply-adds per
input pixel (4/9 of the FLOPs: the `seed` UNet's upsampling convolutions are about 10 % of its
31.0 GFLOP per image) and no 4x-sized upsampled tensor written and read back. diffusers also
copies the input to NCHW first at batches of 64 or more; this keeps the caller's layout.

The phase kernels are sums of the trained weights, computed in fp32 inside every forward (a few
small kernels; always in step with the weights, so training through it is exact too). Numerics:
the same sums in another order; under bf16 autocast the summed taps are rounded once to bf16
where the original rounds each tap, so outputs match within bf16 tolerance (tested), and in
fp32 to about 1e-6.

``use_folded_upsample(model, enabled)`` switches a model's eligible ``Upsample2D`` modules in
place by changing their class (parameters and state_dict keys unchanged), like bench/groupnorm.py.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from bench.end_convs import is_plain_3x3
from bench.groupnorm import channels_last_only


def _phase_taps(weight: torch.Tensor, dim: int) -> torch.Tensor:
    """The 3 taps of ``weight`` along ``dim`` folded to 2 per phase: a new leading phase axis
    (phase 0: (w0, w1+w2); phase 1: (w0+w1, w2)), ``dim`` now of size 2."""
    w0, w1, w2 = weight.unbind(dim)
    phase0 = torch.stack([w0, w1 + w2], dim)
    phase1 = torch.stack([w0 + w1, w2], dim)
    return torch.stack([phase0, phase1])


def phase_kernels(weight: torch.Tensor) -> torch.Tensor:
    """(O, I, 3, 3) -> (4 * O, I, 2, 2): the kernels of phases (a, b) = (0,0), (0,1), (1,0), (1,1)."""
    # Summed in fp32 at least: bf16 weights would round each partial sum.
    rows = _phase_taps(weight.to(torch.promote_types(weight.dtype, torch.float32)), dim=2)  # (2a, O, I, 2, 3)
    both = _phase_taps(rows, dim=4)  # (2b, 2a, O, I, 2, 2)
    return both.transpose(0, 1).flatten(0, 2)


def upsample_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``conv3x3(interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1)``, sub-pixel."""
    n, _, h, w = x.shape
    out_channels = weight.shape[0]
    kernels = phase_kernels(weight).to(weight.dtype)  # the dtype the plain conv would use
    bias4 = bias.repeat(4) if bias is not None else None
    # Output (H+1, W+1): phase (a, b) of input pixel (i, j) sits at (i + a, j + b).
    phases = F.conv2d(x, kernels, bias4, padding=1).unflatten(1, (2, 2, out_channels))
    rows = [
        torch.stack([phases[:, a, b, :, a : a + h, b : b + w] for b in (0, 1)], dim=-1) for a in (0, 1)
    ]  # each (N, O, H, W, 2): b last
    y = torch.stack(rows, dim=3).reshape(n, out_channels, 2 * h, 2 * w)  # (N, O, H, 2, W, 2)
    if channels_last_only(x):
        y = y.contiguous(memory_format=torch.channels_last)  # the layout the plain path keeps
    return y


def _foldable(module: nn.Module) -> bool:
    """An ``Upsample2D`` that interpolates (nearest, x2) then runs a plain 3x3 convolution, padding 1."""
    conv = getattr(module, "conv", None)
    return (
        getattr(module, "use_conv", False)
        and not getattr(module, "use_conv_transpose", True)
        and getattr(module, "interpolate", False)
        and getattr(module, "norm", None) is None
        and is_plain_3x3(conv)
    )


@functools.cache  # one class: isinstance checks and torch.compile's guards see the same type
def _folded_class() -> type[nn.Module]:
    from diffusers.models.upsampling import Upsample2D

    class FoldedUpsample2D(Upsample2D):
        """``Upsample2D`` computed by :func:`upsample_conv` (same parameters, same result)."""

        def forward(self, hidden_states: torch.Tensor, output_size: int | None = None, *args, **kwargs):
            h, w = hidden_states.shape[-2:]
            if output_size is not None and tuple(output_size) != (2 * h, 2 * w):
                return super().forward(hidden_states, output_size, *args, **kwargs)
            return upsample_conv(hidden_states, self.conv.weight, self.conv.bias)

    return FoldedUpsample2D


def _foldable_modules(model: nn.Module) -> list[nn.Module]:
    from diffusers.models.upsampling import Upsample2D

    classes = (Upsample2D, _folded_class())
    return [m for m in model.modules() if type(m) in classes and _foldable(m)]


def foldable_upsamplers(model: nn.Module) -> int:
    """How many of ``model``'s modules ``use_folded_upsample`` would switch (in either form)."""
    return len(_foldable_modules(model))


def use_folded_upsample(model: nn.Module, enabled: bool = True) -> int:
    """Switch every foldable ``Upsample2D`` of ``model`` to the sub-pixel form (or back); returns
    how many. A model without diffusers' ``Upsample2D`` (a plugin's own) is left as it is: 0."""
    from diffusers.models.upsampling import Upsample2D

    modules = _foldable_modules(model)
    for module in modules:
        module.__class__ = _folded_class() if enabled else Upsample2D
    return len(modules)
