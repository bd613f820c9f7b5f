"""Thin convolutions (fewer than 8 channels on one side) computed as one matrix product each.

The UNet's two end convolutions touch the 3 image channels: ``conv_in`` (3 -> 128) and
``conv_out`` (128 -> 3). cuDNN runs each as one kernel of about 0.6 ms at batch 512 on an H100,
where their bytes need about 0.19 ms (BENCHMARKS.md, session 29); padding them to 8 channels
(bench/padded_conv.py) left cuDNN's choice as slow (session 31). As matrix products over
channels_last rows they go to cuBLAS, whose kernels read a wide operand at the memory's speed:

- thin input (``conv_in``): gather each pixel's k x k x C_in neighbourhood (27 values), then one
  product with the (27 -> C_out) kernel matrix;
- thin output (``conv_out``): one product of each pixel's C_in channels with every tap's kernel
  (C_in -> k x k x C_out partial sums), then each output pixel adds its k x k neighbours' partials.

Either way every output is the convolution's sum, in another order (and, for the thin output, with
the partial sums rounded to the compute dtype before they are added). The contracted and produced
widths are padded with zeros to a multiple of 8 for cuBLAS's tensor-core kernels.

``use_matmul_thin_convs(model, enabled)`` switches a model's eligible ``nn.Conv2d`` modules in place
by changing their class (parameters and state_dict keys unchanged), like bench/padded_conv.py.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

THIN = 8  # channels: below this a side is thin; also the alignment of cuBLAS's bf16 operands


def _aligned(n: int) -> int:
    return -(-n // THIN) * THIN


def conv_by_gather(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for a thin input: each pixel's neighbourhood gathered (im2col), one product."""
    out_c, in_c, kh, kw = conv.weight.shape
    n, _, h, w = x.shape
    ph, pw = conv.padding
    padded = F.pad(x, (pw, pw, ph, ph))
    taps = [padded[:, :, dy : dy + h, dx : dx + w] for dy in range(kh) for dx in range(kw)]
    width = in_c * kh * kw
    rows = torch.cat(taps, dim=1).permute(0, 2, 3, 1)  # (n, h, w, width), ordered (dy, dx, c)
    weight = conv.weight.permute(0, 2, 3, 1).reshape(out_c, width)  # the same order
    extra = _aligned(width) - width
    if extra:
        rows, weight = F.pad(rows, (0, extra)), F.pad(weight, (0, extra))
    y = rows.reshape(n * h * w, width + extra) @ weight.t()
    if conv.bias is not None:
        y = y + conv.bias
    return y.view(n, h, w, out_c).permute(0, 3, 1, 2)  # NCHW shape, channels_last memory


def conv_by_scatter(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for a thin output: every tap's partial sums in one product, then added up."""
    out_c, in_c, kh, kw = conv.weight.shape
    n, _, h, w = x.shape
    ph, pw = conv.padding
    width = kh * kw * out_c
    weight = conv.weight.permute(2, 3, 0, 1).reshape(width, in_c)  # rows ordered (dy, dx, o)
    weight = F.pad(weight, (0, 0, 0, _aligned(width) - width))
    rows = x.permute(0, 2, 3, 1).reshape(n * h * w, in_c)
    partial = (rows @ weight.t())[:, :width].view(n, h, w, kh * kw, out_c)
    # Output (i, j) adds tap (dy, dx) of input pixel (i + dy - ph, j + dx - pw): zero outside.
    partial = F.pad(partial, (0, 0, 0, 0, pw, pw, ph, ph))
    taps = [partial[:, dy : dy + h, dx : dx + w, dy * kw + dx] for dy in range(kh) for dx in range(kw)]
    y = torch.stack(taps).sum(0)
    if conv.bias is not None:
        y = y + conv.bias
    return y.permute(0, 3, 1, 2)


def matmul_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` by the product that suits its thin side."""
    return conv_by_gather(conv, x) if conv.in_channels < THIN else conv_by_scatter(conv, x)


def _eligible(module: nn.Module) -> bool:
    """A plain 2-d convolution with one thin side that keeps the image size: stride 1, no
    dilation or groups, zero padding of half an odd kernel."""
    if not isinstance(module, nn.Conv2d) or not isinstance(module.padding, tuple):
        return False
    kh, kw = module.kernel_size
    return (
        module.groups == 1
        and module.padding_mode == "zeros"
        and module.stride == (1, 1)
        and module.dilation == (1, 1)
        and kh % 2 == 1
        and kw % 2 == 1
        and module.padding == (kh // 2, kw // 2)
        and min(module.in_channels, module.out_channels) < THIN
    )


@functools.cache  # one class: isinstance checks and torch.compile's guards see the same type
def _matmul_class() -> type[nn.Conv2d]:
    class MatmulConv2d(nn.Conv2d):
        """``nn.Conv2d`` computed by :func:`matmul_conv` (same parameters, same sums)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return matmul_conv(self, x)

    return MatmulConv2d


def _eligible_modules(model: nn.Module) -> list[nn.Module]:
    classes = (nn.Conv2d, _matmul_class())
    return [m for m in model.modules() if type(m) in classes and _eligible(m)]


def matmul_thin_convs(model: nn.Module) -> int:
    """How many of ``model``'s modules ``use_matmul_thin_convs`` would switch (in either form)."""
    return len(_eligible_modules(model))


def use_matmul_thin_convs(model: nn.Module, enabled: bool = True) -> int:
    """Switch every thin ``nn.Conv2d`` of ``model`` to the matrix-product form (or back); returns
    how many. Only modules of exactly ``nn.Conv2d`` (a subclass may compute something else)."""
    modules = _eligible_modules(model)
    for module in modules:
        module.__class__ = _matmul_class() if enabled else nn.Conv2d
    return len(modules)
