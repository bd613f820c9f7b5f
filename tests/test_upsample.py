"""Sub-pixel upsampling (bench/upsample.py): the same numbers as nearest-2x + 3x3 convolution, in
either memory format, through the backward too, and switchable in place on the UNet."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from image_checks import assert_unet_switch_computes_the_same

from bench.upsample import phase_kernels, upsample_conv, use_folded_upsample


def _plain(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), weight, bias, padding=1)


@pytest.mark.parametrize("shape", [(2, 8, 5, 4, 6), (1, 3, 7, 1, 1), (3, 16, 16, 5, 9)])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_interpolate_then_conv_exactly_in_float64(shape, bias: bool) -> None:
    """Only the order of the sums differs: float64 agrees to its rounding, odd and 1-pixel sizes too."""
    n, cin, cout, h, w = shape
    torch.manual_seed(0)
    x = torch.randn(n, cin, h, w, dtype=torch.float64)
    weight = torch.randn(cout, cin, 3, 3, dtype=torch.float64)
    b = torch.randn(cout, dtype=torch.float64) if bias else None
    expected = _plain(x, weight, b)
    got = upsample_conv(x, weight, b)
    assert got.shape == expected.shape == (n, cout, 2 * h, 2 * w)
    assert (got - expected).abs().max() < 1e-12


def test_phase_kernels_fold_each_axis_into_two_taps() -> None:
    """A kernel with a single 1 at row k, column l: phase (a, b) holds a 1 at the taps that read it."""
    weight = torch.zeros(1, 1, 3, 3)
    weight[0, 0, 1, 2] = 1.0  # row tap 1 (the centre), column tap 2 (the right)
    kernels = phase_kernels(weight).view(2, 2, 2, 2)  # (a, b, tap row, tap column)
    # rows: the centre belongs to tap 1 in phase 0 (w1 + w2) and to tap 0 in phase 1 (w0 + w1);
    # columns: the right belongs to tap 1 in either phase.
    expected = torch.zeros(2, 2, 2, 2)
    expected[0, :, 1, 1] = 1.0
    expected[1, :, 0, 1] = 1.0
    assert torch.equal(kernels, expected)


def test_keeps_channels_last_and_gives_the_same_gradients() -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 6, 5, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    weight = torch.randn(4, 6, 3, 3, requires_grad=True)
    bias = torch.randn(4, requires_grad=True)
    out = upsample_conv(x, weight, bias)
    assert out.is_contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (x, weight, bias), grad)
    expected = torch.autograd.grad(_plain(x, weight, bias), (x, weight, bias), grad)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)


def _folded(model: torch.nn.Module) -> list[bool]:
    from diffusers.models.upsampling import Upsample2D

    return [type(m) is not Upsample2D for m in model.modules() if isinstance(m, Upsample2D)]


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_unet_forward_the_same_and_switches_back(preset: str) -> None:
    """The rounded phase kernels under bf16 autocast: bf16 tolerance."""
    assert_unet_switch_computes_the_same(preset, use_folded_upsample, _folded)


def test_an_odd_output_size_falls_back_to_the_plain_path() -> None:
    """UNet2DModel asks for an explicit size when the input is no multiple of 2**levels: the
    interpolation to that size is not a doubling, so the folded module runs diffusers' own code."""
    from diffusers.models.upsampling import Upsample2D

    torch.manual_seed(0)
    module = Upsample2D(4, use_conv=True)
    x = torch.randn(1, 4, 3, 3)
    with torch.no_grad():
        expected = module(x, output_size=(7, 7))
        assert use_folded_upsample(module) == 1
        assert torch.equal(module(x, output_size=(7, 7)), expected)
        torch.testing.assert_close(module(x), F.conv2d(F.interpolate(x, scale_factor=2.0), module.conv.weight,
                                                       module.conv.bias, padding=1))  # fmt: skip


def test_leaves_other_upsamplers_alone() -> None:
    from diffusers.models.upsampling import Upsample2D

    no_conv = Upsample2D(4, use_conv=False)
    transposed = Upsample2D(4, use_conv_transpose=True)
    assert use_folded_upsample(torch.nn.Sequential(no_conv, transposed)) == 0
    assert type(no_conv) is Upsample2D and type(transposed) is Upsample2D
