"""Checks shared by the tests: two samplings gave the same images up to the batch shape; a
model-level speed switch computes what the plain UNet computes."""

from __future__ import annotations

from collections.abc import Callable

import torch


def assert_same_images_across_batch_shapes(a: torch.Tensor, b: torch.Tensor) -> None:
    """``a`` and ``b``: the same images (same per-image noise) sampled in batches of other shapes.

    fp32 convolutions sum in another order per batch shape, and a few values can move by far more
    than that rounding: a sampler's x0 estimate near t = 1,000 divides by a small sqrt(alpha_bar).
    On an AMD EPYC 29 of 61,440 values moved by more than 1e-4, the largest by 5e-3, where an Intel
    CPU had kept all within 1e-4. Another image's noise would move nearly every value, so the mean
    difference is what tells the two apart.
    """
    assert a.shape == b.shape
    diff = (a - b).abs()
    assert diff.mean() < 1e-5, f"mean difference {diff.mean():.2e}: not the same images"
    assert diff.max() < 2e-2, f"largest difference {diff.max():.2e}"


def assert_unet_switch_computes_the_same(
    preset: str,
    use_switch: Callable[[torch.nn.Module, bool], int],
    switched: Callable[[torch.nn.Module], list[bool]],
) -> None:
    """``use_switch(model, on)`` on the ``preset`` UNet: it switches every module ``switched`` lists
    and switches them back, keeps the state_dict keys, and gives the plain forward within fp32
    rounding, within bf16 tolerance under autocast (no further from fp32 than plain bf16 is), and
    exactly once switched back."""
    from bench_builtins.models.ddpm_unet import make_ddpm_unet

    torch.manual_seed(0)
    model = make_ddpm_unet(preset).eval()
    x, t, cond = torch.randn(2, 3, 64, 64), torch.tensor([10, 900]), torch.eye(24)[:2]
    keys = list(model.state_dict())
    count = len(switched(model))
    with torch.no_grad():
        expected = model(x, t, cond)
        assert use_switch(model, True) == count > 0 and all(switched(model))
        on = model(x, t, cond)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            on_bf16 = model(x, t, cond).float()
        assert use_switch(model, False) == count and not any(switched(model))
        assert torch.equal(model(x, t, cond), expected)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            plain_bf16 = model(x, t, cond).float()
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(on, expected, rtol=1e-4, atol=1e-4)
    scale = expected.abs().mean()
    assert (on_bf16 - expected).abs().mean() < 0.05 * scale
    assert (on_bf16 - expected).abs().mean() < 2 * (plain_bf16 - expected).abs().mean() + 1e-3 * scale
