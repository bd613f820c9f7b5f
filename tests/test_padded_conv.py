"""Thin convolutions padded to 8 channels (bench/padded_conv.py): the plain convolution's numbers in
either memory format, its gradients, and switchable in place on the UNet."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from image_checks import assert_unet_switch_computes_the_same
from torch import nn

from bench.padded_conv import paddable_convs, padded_conv, use_padded_thin_convs


@pytest.mark.parametrize(
    ("cin", "cout", "kernel", "padding"), [(3, 16, 3, 1), (16, 3, 3, 1), (3, 3, 1, 0), (5, 12, 3, 0)]
)
@pytest.mark.parametrize("bias", [True, False])
def test_matches_the_plain_convolution_in_float64(
    cin: int, cout: int, kernel: int, padding: int, bias: bool
) -> None:
    """Zero terms added to the same sums: float64 agrees to its rounding, and the output keeps its
    channel count."""
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, kernel, padding=padding, bias=bias).double()
    x = torch.randn(2, cin, 9, 7, dtype=torch.float64)
    expected = conv(x)
    got = padded_conv(conv, x)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() < 1e-12


def test_pads_what_it_says(monkeypatch: pytest.MonkeyPatch) -> None:
    """The convolution itself runs on 8 input and 8 output channels: seen by the weight it gets."""
    conv = nn.Conv2d(3, 5, 3, padding=1)
    seen = []
    original = F.conv2d

    def spy(x, weight, *args):
        seen.append((x.shape[1], tuple(weight.shape)))
        return original(x, weight, *args)

    monkeypatch.setattr(F, "conv2d", spy)
    assert padded_conv(conv, torch.randn(1, 3, 4, 4)).shape == (1, 5, 4, 4)
    assert seen == [(8, (8, 8, 3, 3))]


def test_keeps_channels_last_and_gives_the_same_gradients() -> None:
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 6, 3, padding=1).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 5, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    out = padded_conv(conv, x)
    expected_out = conv(x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (x, conv.weight, conv.bias), grad)
    expected = torch.autograd.grad(expected_out, (x, conv.weight, conv.bias), grad)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def _padded(model: nn.Module) -> list[bool]:
    """For each 3-channel convolution: whether it is switched."""
    thin = [m for m in model.modules() if isinstance(m, nn.Conv2d) and 3 in (m.in_channels, m.out_channels)]
    return [type(m) is not nn.Conv2d for m in thin]


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_unet_forward_the_same_and_switches_back(preset: str) -> None:
    """Only the UNet's two 3-channel convolutions switch; under bf16 autocast bf16 tolerance."""
    assert_unet_switch_computes_the_same(preset, use_padded_thin_convs, _padded)


def test_seed_unet_pads_only_its_two_end_convolutions() -> None:
    from bench_builtins.models.ddpm_unet import make_ddpm_unet

    model = make_ddpm_unet("seed")
    assert paddable_convs(model) == 2
    assert use_padded_thin_convs(model) == 2
    padded = [m for m in model.modules() if type(m) is not nn.Conv2d and isinstance(m, nn.Conv2d)]
    assert padded == [model.unet.conv_in, model.unet.conv_out]


def test_leaves_grouped_and_subclassed_convolutions_alone() -> None:
    class Own(nn.Conv2d):
        pass

    grouped = nn.Conv2d(6, 3, 3, groups=3)
    own = Own(3, 3, 1)
    assert use_padded_thin_convs(nn.Sequential(grouped, own)) == 0
    assert type(grouped) is nn.Conv2d and type(own) is Own
