"""Few-token attention as products and sums (bench/attention.py): SDPA's numbers, switchable in
place on the UNet, and anything it does not cover left to diffusers' own processor."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from image_checks import assert_unet_switch_computes_the_same

from bench.attention import attention_by_sums, use_attention_by_sums


@pytest.mark.parametrize("shape", [(2, 3, 16, 8), (1, 64, 4, 8), (3, 2, 1, 5), (2, 1, 7, 32)])
def test_matches_scaled_dot_product_attention_in_float64(shape) -> None:
    """Only the order of the sums differs: float64 agrees to its rounding, one token and odd sizes too."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(*shape, dtype=torch.float64) * 3 for _ in range(3))
    got = attention_by_sums(q, k, v)
    assert got.dtype == torch.float64
    assert (got - F.scaled_dot_product_attention(q, k, v)).abs().max() < 1e-12


def test_bf16_inputs_are_computed_in_fp32_and_returned_in_bf16() -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(4, 8, 16, 8) * 3 for _ in range(3))
    exact = F.scaled_dot_product_attention(q, k, v)
    got = attention_by_sums(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert got.dtype == torch.bfloat16
    # the inputs' rounding only: no further from fp32 than SDPA on the same bf16 inputs
    sdpa = F.scaled_dot_product_attention(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert (got.float() - exact).abs().mean() <= (sdpa.float() - exact).abs().mean() * 1.05


def _by_sums(model: torch.nn.Module) -> list[bool]:
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    return [type(m.processor) is not AttnProcessor2_0 for m in model.modules() if isinstance(m, Attention)]


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_unet_forward_the_same_and_switches_back(preset: str) -> None:
    assert_unet_switch_computes_the_same(preset, use_attention_by_sums, _by_sums)


def test_what_it_does_not_cover_goes_to_the_default_processor() -> None:
    """Cross-attention and a mask run diffusers' own code: the same numbers as without the switch."""
    from diffusers.models.attention_processor import Attention, AttnProcessor

    torch.manual_seed(0)
    cross = Attention(query_dim=16, cross_attention_dim=12, heads=2, dim_head=8).eval()
    masked = Attention(query_dim=16, heads=2, dim_head=8).eval()
    x, context = torch.randn(2, 5, 16), torch.randn(2, 3, 12)
    mask = torch.zeros(2, 1, 5)
    mask[:, :, 3:] = -1e4  # additive: the last two tokens ignored
    with torch.no_grad():
        expected = cross(x, context), masked(x, attention_mask=mask)
        assert use_attention_by_sums(cross) == use_attention_by_sums(masked) == 1
        got = cross(x, context), masked(x, attention_mask=mask)
    for g, e in zip(got, expected, strict=True):
        assert torch.equal(g, e)
    other = Attention(query_dim=16, heads=2, dim_head=8, processor=AttnProcessor())
    assert use_attention_by_sums(other) == 0 and type(other.processor) is AttnProcessor


def test_an_image_of_more_than_max_tokens_runs_torchs_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """The products grow with tokens squared: past MAX_TOKENS pixels, SDPA's path and its numbers."""
    from diffusers.models.attention_processor import Attention

    import bench.attention

    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8, norm_num_groups=4, residual_connection=True).eval()
    x = torch.randn(2, 16, 8, 8)  # 64 pixels
    used: list[int] = []
    real = bench.attention.attention_by_sums
    monkeypatch.setattr(bench.attention, "attention_by_sums", lambda *a: used.append(1) or real(*a))
    with torch.no_grad():
        expected = attn(x)
        use_attention_by_sums(attn)
        torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-5)  # at the limit: by sums
        assert used == [1]
        monkeypatch.setattr(bench.attention, "MAX_TOKENS", 63)
        assert torch.equal(attn(x), expected) and used == [1]  # past it: torch's kernel
