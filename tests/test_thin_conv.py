"""Thin convolutions as matrix products (bench/thin_conv.py): the plain convolution's numbers in
either memory format, its gradients, the products it says it runs, and switchable in place on the
UNet and through sample()."""

from __future__ import annotations

import pytest
import torch
from image_checks import assert_unet_switch_computes_the_same
from torch import nn

from bench.thin_conv import (
    conv_by_gather,
    conv_by_scatter,
    matmul_conv,
    matmul_thin_convs,
    use_matmul_thin_convs,
)


@pytest.mark.parametrize(
    ("cin", "cout", "kernel"), [(3, 16, 3), (16, 3, 3), (3, 3, 1), (5, 12, 5), (12, 1, 3), (2, 9, 1)]
)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("channels_last", [True, False])
def test_matches_the_plain_convolution_in_float64(
    cin: int, cout: int, kernel: int, bias: bool, channels_last: bool
) -> None:
    """The same sums in another order: float64 agrees to its rounding, on a non-square image, and
    the output has the convolution's shape."""
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=bias).double()
    x = torch.randn(2, cin, 9, 7, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    expected = conv(x)
    got = matmul_conv(conv, x)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() < 1e-12


@pytest.mark.parametrize(("cin", "cout", "form"), [(3, 16, conv_by_gather), (16, 3, conv_by_scatter)])
def test_runs_one_aligned_product_by_its_thin_side(cin: int, cout: int, form, monkeypatch) -> None:
    """No convolution runs, one matrix product does, with the narrow width padded to 8: 27 gathered
    values to 32 for a thin input, 27 partial sums to 32 for a thin output."""
    conv = nn.Conv2d(cin, cout, 3, padding=1)
    x = torch.randn(1, cin, 4, 5)

    def no_conv(*args, **kwargs):
        raise AssertionError("a convolution ran")

    monkeypatch.setattr(torch.nn.functional, "conv2d", no_conv)
    seen = []
    real_matmul = torch.Tensor.__matmul__

    def spy(a, b):
        seen.append((tuple(a.shape), tuple(b.shape)))
        return real_matmul(a, b)

    monkeypatch.setattr(torch.Tensor, "__matmul__", spy)
    assert matmul_conv(conv, x).shape == (1, cout, 4, 5)
    assert form(conv, x).shape == (1, cout, 4, 5)
    product = ((20, 32), (32, 16)) if cin == 3 else ((20, 16), (16, 32))  # 20 pixels
    assert seen == [product, product]


def test_keeps_channels_last_and_gives_the_same_gradients() -> None:
    for cin, cout in [(3, 6), (6, 3)]:
        torch.manual_seed(1)
        conv = nn.Conv2d(cin, cout, 3, padding=1).to(memory_format=torch.channels_last)
        x = torch.randn(2, cin, 5, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
        out = matmul_conv(conv, x)
        expected_out = conv(x)
        assert out.is_contiguous(memory_format=torch.channels_last)
        grad = torch.randn_like(out)
        got = torch.autograd.grad(out, (x, conv.weight, conv.bias), grad)
        expected = torch.autograd.grad(expected_out, (x, conv.weight, conv.bias), grad)
        for g, e in zip(got, expected, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def _switched(model: nn.Module) -> list[bool]:
    """For each 3-channel convolution: whether it is switched."""
    thin = [m for m in model.modules() if isinstance(m, nn.Conv2d) and 3 in (m.in_channels, m.out_channels)]
    return [type(m) is not nn.Conv2d for m in thin]


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_unet_forward_the_same_and_switches_back(preset: str) -> None:
    """Only the UNet's two 3-channel convolutions switch; under bf16 autocast bf16 tolerance."""
    assert_unet_switch_computes_the_same(preset, use_matmul_thin_convs, _switched)


def test_seed_unet_switches_only_its_two_end_convolutions() -> None:
    from bench_builtins.models.ddpm_unet import make_ddpm_unet

    model = make_ddpm_unet("seed")
    assert matmul_thin_convs(model) == 2
    assert use_matmul_thin_convs(model) == 2
    switched = [m for m in model.modules() if type(m) is not nn.Conv2d and isinstance(m, nn.Conv2d)]
    assert switched == [model.unet.conv_in, model.unet.conv_out]


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(6, 3, 3, padding=1, groups=3),
        nn.Conv2d(3, 8, 3, padding=1, stride=2),
        nn.Conv2d(3, 8, 3, padding=0),  # shrinks the image
        nn.Conv2d(3, 8, 3, padding=2, dilation=2),
        nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect"),
        nn.Conv2d(3, 8, (3, 2), padding=(1, 1)),  # an even kernel side
        nn.Conv2d(3, 8, 3, padding="same"),
        nn.Conv2d(8, 16, 3, padding=1),  # no thin side
    ],
)
def test_leaves_other_convolutions_alone(conv: nn.Conv2d) -> None:
    assert use_matmul_thin_convs(nn.Sequential(conv)) == 0
    assert type(conv) is nn.Conv2d


def test_leaves_subclassed_convolutions_alone() -> None:
    class Own(nn.Conv2d):
        pass

    own = Own(3, 8, 3, padding=1)
    assert use_matmul_thin_convs(nn.Sequential(own)) == 0
    assert type(own) is Own


def test_sampling_takes_one_thin_form_at_a_time() -> None:
    """The padded and the matrix-product forms claim the same convolutions: asking for both is one
    clear error, and sample() calls in a row leave exactly the form each asked for (one switch's
    class is not the other's to undo: the matrix-product form stayed on when padding was asked)."""
    from bench.noise import noise_config
    from bench.sampling import SamplingOptions, SamplingOptionsError, sample
    from bench_builtins.models.ddpm_unet import make_ddpm_unet

    with pytest.raises(SamplingOptionsError, match="--pad-thin-convs and --matmul-thin-convs"):
        SamplingOptions(pad_thin_convs=True, matmul_thin_convs=True).resolved("cpu")
    torch.manual_seed(0)
    unet = make_ddpm_unet("tiny").eval()
    conds = torch.eye(24)[:2]
    seen = []
    for pad, matmul in [(False, True), (True, False), (False, True), (False, False)]:
        options = SamplingOptions(dtype="fp32", batch_size=2, pad_thin_convs=pad, matmul_thin_convs=matmul)
        sample(
            unet, "ddim", conds, train_config=noise_config("cosine"), steps=1, device="cpu", options=options
        )
        seen.append(type(unet.unet.conv_in).__name__)
    assert seen == ["MatmulConv2d", "PaddedConv2d", "MatmulConv2d", "Conv2d"]
