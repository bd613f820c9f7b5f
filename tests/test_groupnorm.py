"""GroupNormByViews, GroupNormByChannelStats and GroupNormChannelsLast: the same numbers as
nn.GroupNorm, in either memory format, switchable in place."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.groupnorm import (
    GroupNormByChannelStats,
    GroupNormByViews,
    GroupNormChannelsLast,
    chosen_group_norm,
    resolved_group_norm,
    use_group_norm,
)


def _switch(kind: str):
    """A switch of one GroupNorm kind, on or back to nn.GroupNorm (the shape of sampling's switches)."""

    def use(model: nn.Module, enabled: bool = True) -> int:
        return use_group_norm(model, kind if enabled else "native")

    return use


use_group_norm_by_views = _switch("views")
use_group_norm_by_channel_stats = _switch("channel-stats")


# The variants that compute the norm their own way: (class, its switch).
COMPUTED = {
    "views": (GroupNormByViews, use_group_norm_by_views),
    "channel-stats": (GroupNormByChannelStats, use_group_norm_by_channel_stats),
}


def _norm(channels: int = 32, groups: int = 8) -> nn.GroupNorm:
    torch.manual_seed(0)
    norm = nn.GroupNorm(groups, channels, eps=1e-6)
    with torch.no_grad():  # not the identity affine of a fresh module
        norm.weight.normal_()
        norm.bias.normal_()
    return norm


def _input(channels_last: bool) -> torch.Tensor:
    x = torch.randn(3, 32, 9, 7) * 3 + 1
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@pytest.mark.parametrize("kind", COMPUTED)
@pytest.mark.parametrize("channels_last", [False, True])
def test_matches_nn_group_norm_in_either_memory_format(channels_last: bool, kind: str) -> None:
    variant, switch = COMPUTED[kind]
    norm, x = _norm(), _input(channels_last)
    expected = norm(x)
    switch(norm)
    assert isinstance(norm, variant)
    got = norm(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert got.dtype == x.dtype
    # Gradients too (training uses it under compile): to the input and to the affine parameters.
    x.requires_grad_(True)
    got = norm(x)
    (grad_x,) = torch.autograd.grad((got * got.detach()).sum(), x)
    switch(norm, False)
    x_ref = x.detach().clone().requires_grad_(True)
    ref = norm(x_ref)
    (grad_ref,) = torch.autograd.grad((ref * ref.detach()).sum(), x_ref)
    torch.testing.assert_close(grad_x, grad_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", COMPUTED)
def test_bf16_input_gives_bf16_output_with_fp32_statistics(kind: str) -> None:
    norm = _norm()
    x = (torch.randn(2, 32, 8, 8) * 50 + 200).to(torch.bfloat16)  # a large mean: fp32 stats matter
    expected = nn.functional.group_norm(x.float(), 8, norm.weight, norm.bias, norm.eps)
    COMPUTED[kind][1](norm)
    got = norm(x)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected, rtol=1e-2, atol=2e-2)


def test_switching_a_model_keeps_its_parameters_and_state_dict() -> None:
    model = nn.Sequential(nn.Conv2d(3, 16, 3), _norm(16, 4), nn.SiLU(), nn.Conv2d(16, 16, 1), _norm(16, 2))
    keys, weight = list(model.state_dict()), model[1].weight
    x = torch.randn(2, 3, 10, 10)
    before = model(x)
    assert use_group_norm_by_views(model) == 2
    assert type(model[1]) is GroupNormByViews and type(model[4]) is GroupNormByViews
    assert model[1].weight is weight and list(model.state_dict()) == keys
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)
    assert use_group_norm_by_views(model, False) == 2
    assert type(model[1]) is nn.GroupNorm


@pytest.mark.parametrize("channels_last", [False, True])
def test_channels_last_variant_keeps_the_input_layout_and_the_numbers(channels_last: bool) -> None:
    norm, x = _norm(), _input(channels_last)
    expected = norm(x)
    assert use_group_norm(norm, "channels-last") == 1 and isinstance(norm, GroupNormChannelsLast)
    got = norm(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)  # the same kernel: the same numbers
    assert got.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert got.is_contiguous() != channels_last


def test_unknown_group_norm_kind_is_refused() -> None:
    with pytest.raises(
        ValueError, match="unknown GroupNorm kind 'fast'.*native, views, channels-last, channel-stats"
    ):
        use_group_norm(_norm(), "fast")


def test_channel_stats_stay_exact_where_the_mean_dwarfs_the_spread() -> None:
    """The group's variance combines the channels' (Welford) variances and their means' spread
    exactly, not as E[x^2] - E[x]^2, which loses every digit here in fp32."""
    norm = _norm()
    x = torch.randn(2, 32, 8, 8) * 0.1 + 100.0  # E[x^2] - E[x]^2 would keep 2 of 7 digits
    expected = nn.functional.group_norm(x.double(), 8, norm.weight.double(), norm.bias.double(), norm.eps)
    use_group_norm_by_channel_stats(norm)
    torch.testing.assert_close(norm(x).double(), expected, rtol=1e-3, atol=1e-3)


def test_chosen_group_norm_is_the_one_switch_on_or_native() -> None:
    from types import SimpleNamespace

    assert chosen_group_norm(SimpleNamespace()) == "native"
    assert chosen_group_norm(SimpleNamespace(group_norm_by_views=None, group_norm_by_channel_stats=True)) == (
        "channel-stats"
    )
    assert chosen_group_norm(SimpleNamespace(group_norm_channels_last=True)) == "channels-last"
    both = SimpleNamespace(group_norm_by_views=True, group_norm_by_channel_stats=True)
    with pytest.raises(
        ValueError, match=r"\(--group-norm-by-views, --group-norm-by-channel-stats\) are GroupNorm"
    ):
        chosen_group_norm(both)


def test_channel_stats_are_the_default_only_compiled_on_cuda_with_no_other_kind_asked() -> None:
    from types import SimpleNamespace

    unset = SimpleNamespace(group_norm_by_channel_stats=None)
    assert resolved_group_norm(unset, compiled=True, cuda=True) == "channel-stats"
    assert resolved_group_norm(unset, compiled=False, cuda=True) != "channel-stats"  # eager: several kernels
    assert resolved_group_norm(unset, compiled=True, cuda=False) != "channel-stats"
    for other in ("group_norm_by_views", "group_norm_channels_last"):
        asked = SimpleNamespace(group_norm_by_channel_stats=None, **{other: True})
        assert resolved_group_norm(asked, compiled=True, cuda=True) != "channel-stats"
    # what is asked for wins, either way
    assert (
        resolved_group_norm(SimpleNamespace(group_norm_by_channel_stats=False), compiled=True, cuda=True)
        != "channel-stats"
    )
    assert (
        resolved_group_norm(SimpleNamespace(group_norm_by_channel_stats=True), compiled=False, cuda=False)
        == "channel-stats"
    )
    # the kind a model gets otherwise (bench train's trainer, on any device)
    assert resolved_group_norm(unset, compiled=False, cuda=True) == "native"
    views = SimpleNamespace(group_norm_by_channel_stats=None, group_norm_by_views=True)
    assert resolved_group_norm(views, compiled=True, cuda=True) == "views"
    off = SimpleNamespace(group_norm_by_channel_stats=False)
    assert resolved_group_norm(off, compiled=True, cuda=True) == "native"


@pytest.mark.parametrize("shape", [(3, 32), (3, 32, 5), (2, 32, 3, 4, 5)])
def test_channel_stats_match_nn_group_norm_in_any_rank(shape: tuple[int, ...]) -> None:
    """(N, C) inputs (nothing to reduce per channel) and 1-d/3-d positions, as diffusers' attention
    norms its (B, C, tokens) input."""
    norm, x = _norm(), torch.randn(shape) * 2 + 1
    expected = norm(x)
    use_group_norm_by_channel_stats(norm)
    torch.testing.assert_close(norm(x), expected, rtol=1e-5, atol=1e-5)
