"""Triton kernels for the UNet's thin end convolutions, as torch custom ops (bench/end_convs.py).

Imported only where Triton is (``bench.end_convs.triton_available``). Three kernels, each one pass
over its largest tensor:

- ``conv_in_3x3``: a 3x3 convolution of a thin input (at most 8 channels), each block of pixels
  gathering its 9 * C_in neighbourhood values and multiplying them by the kernel matrix (both
  sides padded to a power of two of 16 or more); writes channels_last.
- ``norm_silu_taps``: GroupNorm's per-(image, channel) scale and shift, SiLU, then every tap's
  partial sums of the thin output convolution, (pixels, C) x (C, 9 * C_out padded): reads the
  activations once, where the plain path writes the normalised activations and reads them again.
- ``tap_sums``: the output convolution's value at each pixel, its nine neighbours' partial sums
  added (zero outside the image, as the convolution's zero padding gives).

The products run in the weight's dtype (bf16 on the GPU's fast path) with fp32 sums, as cuDNN's
bf16 convolutions do. Each kernel's launch settings (pixels per program, warps) are timed by
Triton's tuner at the first launch of a shape, which sampling's warm-up makes, before any CUDA
graph is captured: none of them was ever timed by hand (no GPU in the session that wrote them). Under ``TRITON_INTERPRET=1`` the same kernels run on the CPU (fp32), which is
how the tests check their indexing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
import triton
import triton.language as tl

# Triton's own switch: the kernels run on the CPU, with numpy, and nothing can be timed there, so
# each launch takes the largest block that fits (``pixel_block``) instead of its tuner's pick.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def _pow2(n: int, least: int = 16) -> int:
    """The power of two at or above ``n``, at least ``least``. Plain Python: the modules' forwards
    call it under torch.compile, which may split its graph at a call into Triton."""
    return max(least, 1 << (n - 1).bit_length())


def pixel_block(pixels_per_image: int, channels: int) -> int | None:
    """The largest pixel block a launch may take (a power of two from 128 down to 16 that divides an
    image, so a block lies in one image, and keeps a block of the wide side within 16,384 values of
    registers); None where none does (the caller falls back to torch)."""
    for block in (128, 64, 32, 16):
        if _block_fits(block, pixels_per_image, channels):
            return block
    return None


def _block_fits(block: int, pixels_per_image: int, channels: int) -> bool:
    return pixels_per_image % block == 0 and block * _pow2(channels) <= 16384


def _tuned(blocks: tuple[int, ...], warps: tuple[int, ...], key: list[str], wide: str) -> Callable:
    """``triton.autotune`` over pixel blocks and warps (timed on the GPU at the first launch of each
    shape, the sampling warm-up's), keeping the blocks that fit (``_block_fits``) of the ``wide``
    argument's channels; the kernel unchanged when interpreted."""

    def fitting(configs: list[Any], named_args: dict[str, Any], **kwargs: Any) -> list[Any]:
        pixels, channels = named_args["H"] * named_args["W"], {**named_args, **kwargs}[wide]
        return [c for c in configs if _block_fits(c.kwargs["BLOCK_P"], pixels, channels)]

    configs = [triton.Config({"BLOCK_P": b}, num_warps=w) for b in blocks for w in warps]

    def wrap(kernel: Any) -> Any:
        if INTERPRETED:
            return kernel
        return triton.autotune(configs=configs, key=key, prune_configs_by={"early_config_prune": fitting})(
            kernel
        )

    return wrap


def _launch(kernel: Any, pixels: int, pixels_per_image: int, wide: int, *args: Any, **constants: Any) -> None:
    """Launch ``kernel`` over ``pixels`` in blocks: its tuner's blocks, or, interpreted, the largest
    that fits."""
    if INTERPRETED:
        block = pixel_block(pixels_per_image, wide)
        kernel[(pixels // block,)](*args, **constants, BLOCK_P=block)
    else:
        # Triton launches on the current device: a tensor on another one (eager, on cuda:1) needs
        # its own made current.
        with torch.cuda.device(args[0].device):
            kernel[lambda meta: (pixels // meta["BLOCK_P"],)](*args, **constants)


@triton.jit
def _pixels(BLOCK_P: tl.constexpr, H, W):
    """This program's block of pixels: flat indices over (N, H, W), the image they lie in (BLOCK_P
    divides H * W), and each one's row and column. In int64: a batch of 4,096 64x64 images of 128
    channels passes 2**31 elements."""
    hw = H * W
    first = tl.program_id(0).to(tl.int64) * BLOCK_P
    p = first + tl.arange(0, BLOCK_P)
    return p, first // hw, (p % hw) // W, p % W


@_tuned((16, 32, 64, 128), (4, 8), key=["H", "W", "C_IN", "C_OUT"], wide="CO_PAD")
@triton.jit
def _conv_in_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    H, W,
    sxn, sxc, sxh, sxw,
    C_IN: tl.constexpr, C_OUT: tl.constexpr, CO_PAD: tl.constexpr, K_PAD: tl.constexpr,
    BLOCK_P: tl.constexpr,
):  # fmt: skip
    p, n, h, w = _pixels(BLOCK_P, H, W)
    k = tl.arange(0, K_PAD)  # (ky, kx, c) flattened as the kernel matrix's rows
    tap = k // C_IN
    c = k % C_IN
    hh = h[:, None] + (tap // 3)[None, :] - 1
    ww = w[:, None] + (tap % 3)[None, :] - 1
    inside = (k < 9 * C_IN)[None, :] & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
    a = tl.load(x_ptr + n * sxn + c[None, :] * sxc + hh * sxh + ww * sxw, mask=inside, other=0.0)
    co = tl.arange(0, CO_PAD)
    comask = co < C_OUT
    weight = tl.load(w_ptr + k[:, None] * CO_PAD + co[None, :])  # zero columns past C_OUT
    acc = tl.dot(a.to(weight.dtype), weight)
    acc += tl.load(b_ptr + co, mask=comask, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + p[:, None] * C_OUT + co[None, :], acc.to(y_ptr.dtype.element_ty), mask=comask[None, :])


@_tuned((16, 32, 64, 128), (4, 8), key=["H", "W", "C", "TAPS"], wide="C_PAD")
@triton.jit
def _norm_silu_taps_kernel(
    x_ptr, scale_ptr, shift_ptr, w_ptr, y_ptr,
    H, W,
    sxn, sxc, sxh, sxw,
    C: tl.constexpr, C_PAD: tl.constexpr, TAPS: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    p, n, h, w = _pixels(BLOCK_P, H, W)
    c = tl.arange(0, C_PAD)
    cmask = c < C
    x = tl.load(
        x_ptr + n * sxn + c[None, :] * sxc + h[:, None] * sxh + w[:, None] * sxw,
        mask=cmask[None, :],
        other=0.0,
    ).to(tl.float32)
    scale = tl.load(scale_ptr + n * C + c, mask=cmask, other=0.0)
    shift = tl.load(shift_ptr + n * C + c, mask=cmask, other=0.0)
    z = x * scale[None, :] + shift[None, :]
    z = z * tl.sigmoid(z)
    j = tl.arange(0, TAPS)
    weight = tl.load(w_ptr + c[:, None] * TAPS + j[None, :], mask=cmask[:, None], other=0.0)
    partial = tl.dot(z.to(weight.dtype), weight)
    tl.store(y_ptr + p[:, None] * TAPS + j[None, :], partial)


@_tuned((16, 32, 64, 128, 256, 512), (4,), key=["H", "W", "C_OUT", "TAPS"], wide="CO_PAD")
@triton.jit
def _tap_sums_kernel(
    y_ptr, b_ptr, out_ptr,
    H, W,
    son, soc, soh, sow,
    C_OUT: tl.constexpr, CO_PAD: tl.constexpr, TAPS: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    p, n, h, w = _pixels(BLOCK_P, H, W)
    co = tl.arange(0, CO_PAD)
    comask = co < C_OUT
    acc = tl.zeros((BLOCK_P, CO_PAD), dtype=tl.float32)
    for tap in tl.static_range(9):
        # Output (h, w) takes tap (ky, kx) of the input pixel (h + ky - 1, w + kx - 1).
        hh = h + tap // 3 - 1
        ww = w + tap % 3 - 1
        inside = (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
        q = (n * H + hh) * W + ww
        acc += tl.load(
            y_ptr + q[:, None] * TAPS + (tap * C_OUT + co)[None, :],
            mask=inside[:, None] & comask[None, :],
            other=0.0,
        )
    acc += tl.load(b_ptr + co, mask=comask, other=0.0).to(tl.float32)[None, :]
    offsets = n * son + co[None, :] * soc + h[:, None] * soh + w[:, None] * sow
    tl.store(out_ptr + offsets, acc.to(out_ptr.dtype.element_ty), mask=comask[None, :])


def _conv_in_matrix(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(C_out, C_in, 3, 3) -> (K_PAD, CO_PAD) rows ordered (ky, kx, c), zero rows past 9 * C_in and
    zero columns past C_out (tensor-core products take 16 and up)."""
    c_out, c_in = weight.shape[:2]
    rows = weight.permute(2, 3, 1, 0).reshape(9 * c_in, c_out)
    padding = (0, _pow2(c_out) - c_out, 0, _pow2(9 * c_in) - 9 * c_in)
    return torch.nn.functional.pad(rows, padding).to(dtype).contiguous()


def _taps_matrix(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(C_out, C, 3, 3) -> (C, TAPS): column (ky * 3 + kx) * C_out + co, zero columns past 9 * C_out."""
    c_out, c = weight.shape[:2]
    columns = weight.permute(1, 2, 3, 0).reshape(c, 9 * c_out)
    return torch.nn.functional.pad(columns, (0, _pow2(9 * c_out) - 9 * c_out)).to(dtype).contiguous()


@torch.library.custom_op("bench::conv_in_3x3", mutates_args=())
def conv_in_3x3(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, out_dtype: torch.dtype
) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=1)`` for a thin input, channels_last output of ``out_dtype``;
    the products in ``out_dtype`` where it is bf16 or fp16, else fp32."""
    n, c_in, h, w = x.shape
    c_out = weight.shape[0]
    y = _output_like(x, weight, out_dtype)
    matrix = _conv_in_matrix(weight, _product_dtype(out_dtype))
    _launch(
        _conv_in_kernel, n * h * w, h * w, matrix.shape[1],
        x, matrix, bias, y, h, w, *x.stride(),
        C_IN=c_in, C_OUT=c_out, CO_PAD=matrix.shape[1], K_PAD=matrix.shape[0],
    )  # fmt: skip
    return y


@conv_in_3x3.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    return _output_like(x, weight, out_dtype)


@torch.library.custom_op("bench::norm_silu_conv_out_3x3", mutates_args=())
def norm_silu_conv_out_3x3(
    x: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """``F.conv2d(silu(x * scale + shift), weight, bias, padding=1)`` for a thin output, ``scale``
    and ``shift`` (N, C) fp32; output NCHW-shaped, channels_last, of ``out_dtype``."""
    n, c, h, w = x.shape
    c_out = weight.shape[0]
    taps = _taps_matrix(weight, _product_dtype(out_dtype))
    partial = torch.empty((n * h * w, taps.shape[1]), device=x.device, dtype=torch.float32)
    _launch(
        _norm_silu_taps_kernel, n * h * w, h * w, _pow2(c),
        x, scale.contiguous(), shift.contiguous(), taps, partial, h, w, *x.stride(),
        C=c, C_PAD=_pow2(c), TAPS=taps.shape[1],
    )  # fmt: skip
    out = _output_like(x, weight, out_dtype)
    _launch(
        _tap_sums_kernel, n * h * w, h * w, _pow2(c_out, least=2),
        partial, bias, out, h, w, *out.stride(),
        C_OUT=c_out, CO_PAD=_pow2(c_out, least=2), TAPS=taps.shape[1],
    )  # fmt: skip
    return out


@norm_silu_conv_out_3x3.register_fake
def _(
    x: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    return _output_like(x, weight, out_dtype)


def _output_like(x: torch.Tensor, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An empty 3x3 same-size convolution output of ``x`` by ``weight``: channels_last, ``dtype``.
    Both ops allocate their output with it, and their fake forms (what torch.compile traces) too."""
    n, _, h, w = x.shape
    return torch.empty(
        (n, weight.shape[0], h, w), device=x.device, dtype=dtype, memory_format=torch.channels_last
    )


def _product_dtype(out_dtype: torch.dtype) -> torch.dtype:
    return out_dtype if out_dtype in (torch.bfloat16, torch.float16) else torch.float32
