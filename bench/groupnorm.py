"""GroupNorm written as views and reductions, for torch.compile on channels_last activations.

``nn.GroupNorm`` reaches ``aten.native_group_norm``, whose reduction reshapes (N, C, H, W) to
(N, G, C/G * H * W); a channels_last tensor has no such view, so the op (eager or decomposed by
Inductor) may have to copy to NCHW and back around every norm. ``GroupNormByViews`` splits the channel
dimension instead, (N, C, H, W) -> (N, G, C/G, H, W), which is a view in either memory format, so
Inductor reduces in place and fuses the normalisation with the SiLU and the cast that follow.

Numerics: the statistics are computed in fp32 and the output keeps the input's dtype (under bf16
autocast ``nn.GroupNorm`` would return fp32; the next convolution casts to bf16 anyway).
Eager, this is several kernels instead of one: use it under torch.compile.

Measured on an H100 with the `seed` UNet (BENCHMARKS.md, session 5): 1.2 % faster sampling, 9 %
slower compiled training. So it is a switch, off by default, not the fast path.

``use_group_norm_by_views(model, True)`` switches a model's GroupNorms in place by changing their
class (parameters, state_dict keys and isinstance checks unchanged); ``False`` switches them back.
"""

from __future__ import annotations

import torch
from torch import nn


class GroupNormByViews(nn.GroupNorm):
    """``nn.GroupNorm`` computed from a channel-splitting view (same parameters, same result)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        grouped = x.float().view(n, self.num_groups, c // self.num_groups, *x.shape[2:])
        dims = tuple(range(2, grouped.ndim))
        var, mean = torch.var_mean(grouped, dim=dims, correction=0, keepdim=True)
        y = ((grouped - mean) * torch.rsqrt(var + self.eps)).view(x.shape)
        if self.affine:
            shape = (1, c) + (1,) * (x.ndim - 2)
            y = y * self.weight.float().view(shape) + self.bias.float().view(shape)
        return y.to(x.dtype)


def use_group_norm_by_views(model: nn.Module, enabled: bool = True) -> int:
    """Switch every ``nn.GroupNorm`` of ``model`` to ``GroupNormByViews`` (or back); returns how many."""
    target = GroupNormByViews if enabled else nn.GroupNorm
    count = 0
    for module in model.modules():
        if isinstance(module, nn.GroupNorm):
            module.__class__ = target
            count += 1
    return count
