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

``GroupNormChannelsLast`` keeps ``nn.GroupNorm``'s arithmetic and only hands back a channels_last
input's layout. As torch.compile traces it, ``native_group_norm`` returns NCHW whatever it is given,
so in a training step's backward graph 80 of the `seed` UNet's 96 convolution gradients got a
channels_last gradient and weight beside an NCHW saved input: a layout conversion for cuDNN each
(``scripts/conv_layouts.py``; 20 of 96 with either variant here). For training: +13 % on an H100
with CUDA graphs at batch 128, but forcing Inductor's layout onto the backward graph
(``bench/compile_mode.py``, the default) gained more, +22.5 %, and the two were not yet measured
together (BENCHMARKS.md, session 9), so it stays off.

``GroupNormByChannelStats`` reduces per channel, with the channels contiguous on channels_last, and
combines each group's channels exactly: the statistics pass without a strided walk. Measured on an
H100 with the `seed` UNet (BENCHMARKS.md): 1.20x the compiled sampling speed (session 27) and
1.24x the compiled training speed (session 28), so it is the default of both where the model
compiles on CUDA (``resolved_group_norm``); eager it is several kernels where nn.GroupNorm is one.

``use_group_norm(model, kind)`` switches a model's GroupNorms in place by changing their class
(parameters, state_dict keys and isinstance checks unchanged): ``native``, ``views``,
``channels-last`` or ``channel-stats``; ``chosen_group_norm(options)`` is the kind that sampling's
or training's options ask for (one at most).
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


class GroupNormByChannelStats(nn.GroupNorm):
    """``nn.GroupNorm`` from per-channel statistics (same parameters, same result up to rounding).

    A group's reduction on a channels_last tensor reads C/G channels out of every pixel's C, a
    strided walk; per-channel mean and variance reduce over the pixels with the channels
    contiguous, then combine exactly within each group (equal counts: the group's mean is the
    channels' mean, its variance the mean of their variances plus that of their means). Welford
    inside torch.var_mean keeps it stable where the mean is large against the spread. Eager it is
    several kernels: meant for torch.compile."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim < 3:  # (N, C): no positions to reduce per channel (and dim=() would mean all dims)
            return super().forward(x)
        scale, shift = group_norm_scale_shift(self, x)
        shape = (*scale.shape, *(1,) * (x.ndim - 2))
        return (x.float() * scale.view(shape) + shift.view(shape)).to(x.dtype)


def group_norm_scale_shift(norm: nn.GroupNorm, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The (N, C) fp32 ``scale`` and ``shift`` with ``norm(x) == x * scale + shift`` per image and
    channel, from per-channel statistics (``GroupNormByChannelStats``; x has positions: ndim >= 3)."""
    n, c = x.shape[:2]
    groups, spatial = norm.num_groups, tuple(range(2, x.ndim))
    var_c, mean_c = torch.var_mean(x.float(), dim=spatial, correction=0)  # (N, C)
    mean_in_group = mean_c.view(n, groups, -1)
    mean_g = mean_in_group.mean(-1, keepdim=True)
    var_g = var_c.view(n, groups, -1).mean(-1, keepdim=True) + (mean_in_group - mean_g).square().mean(
        -1, keepdim=True
    )
    rstd = torch.rsqrt(var_g + norm.eps).expand(n, groups, c // groups).reshape(n, c)
    mean = mean_g.expand(n, groups, c // groups).reshape(n, c)
    scale = rstd * norm.weight.float() if norm.affine else rstd
    shift = (norm.bias.float() - mean * scale) if norm.affine else -mean * scale
    return scale, shift


def channels_last_only(x: torch.Tensor) -> bool:
    """A 4-d tensor laid out channels_last and not also contiguous (as a 1x1 image is both): the
    layout a module that builds its output anew should hand back."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


class GroupNormChannelsLast(nn.GroupNorm):
    """``nn.GroupNorm`` whose output has a channels_last input's layout (same arithmetic). Under
    torch.compile the layout should become that of the norm kernel's output, not a copy of its own;
    eager it is one more copy."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        if channels_last_only(x):
            return y.contiguous(memory_format=torch.channels_last)
        return y


GROUP_NORMS: dict[str, type[nn.GroupNorm]] = {
    "native": nn.GroupNorm,
    "views": GroupNormByViews,
    "channels-last": GroupNormChannelsLast,
    "channel-stats": GroupNormByChannelStats,
}


def use_group_norm(model: nn.Module, kind: str) -> int:
    """Switch every GroupNorm of ``model`` to the ``kind`` of ``GROUP_NORMS``; returns how many."""
    if kind not in GROUP_NORMS:
        raise ValueError(f"unknown GroupNorm kind {kind!r}; known: {', '.join(GROUP_NORMS)}")
    count = 0
    for module in model.modules():
        if isinstance(module, nn.GroupNorm):
            module.__class__ = GROUP_NORMS[kind]
            count += 1
    return count


# The option fields (of SamplingOptions and TrainConfig; each holds some) that ask for a GroupNorm
# kind of GROUP_NORMS, one at a time.
GROUP_NORM_SWITCHES = {
    "group_norm_by_views": "views",
    "group_norm_by_channel_stats": "channel-stats",
    "group_norm_channels_last": "channels-last",
}


def chosen_group_norm(options: object) -> str:
    """The ``GROUP_NORMS`` kind that ``options``' switches ask for, ``native`` for none; a
    ValueError naming the fields and their flags where more than one is on."""
    chosen = [field for field in GROUP_NORM_SWITCHES if getattr(options, field, None)]
    if len(chosen) > 1:
        flags = ", ".join("--" + field.replace("_", "-") for field in chosen)
        raise ValueError(f"{' and '.join(chosen)} ({flags}) are GroupNorm variants: choose one")
    return GROUP_NORM_SWITCHES[chosen[0]] if chosen else "native"


def resolved_group_norm(options: object, *, compiled: bool, cuda: bool) -> str:
    """The ``GROUP_NORMS`` kind a model runs with under ``options``: the one asked for, else
    ``channel-stats`` where ``group_norm_by_channel_stats`` is unset (``None``) and the model
    compiles on CUDA, else ``native``; a ValueError where more than one is asked for. Compiled,
    channel statistics are one fused reduction; eager they are several kernels where nn.GroupNorm
    is one, so not the default there. Measured on an H100 (BENCHMARKS.md): sampling 1.20x
    (session 27), training 1.24x (session 28)."""
    kind = chosen_group_norm(options)
    unset = getattr(options, "group_norm_by_channel_stats", None) is None
    if kind == "native" and unset and compiled and cuda:
        return "channel-stats"
    return kind
