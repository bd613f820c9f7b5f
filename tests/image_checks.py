"""One check, shared by the tests, that two samplings gave the same images up to the batch shape."""

from __future__ import annotations

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
