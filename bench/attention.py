"""Few-token attention as broadcast products and sums, for torch.compile to fuse.

The `seed` UNet attends over 16 tokens (4x4) and 4 tokens (2x2), with 64 heads of 8 channels.
torch's attention kernels tile for long sequences and wide heads: on an H100 at batch 512 cuDNN's
flash kernel took 542 us a call, 6 % of the device time of a sampling step (BENCHMARKS.md,
session 26), and the math path's two batched matmuls (32,768 of 16x8 by 8x16) were no better
(session 6). Written as ``q * k`` summed over channels, a softmax over tokens, and ``p * v``
summed over tokens, Inductor makes a few Triton kernels of it that read q, k and v once and never
write the (tokens x tokens x channels) products out.

Numerics: computed in fp32 from the inputs' values (also under bf16 autocast, where SDPA computes
in bf16), so it agrees with SDPA in fp32 to rounding and within bf16 tolerance under autocast.
Uncompiled it writes the products out (B x heads x L x L x channels): meant for compiled runs of
attention over a few dozen tokens; the cost grows with tokens squared (``MAX_TOKENS``).

``use_attention_by_sums(model, enabled)`` sets this processor on every diffusers ``Attention`` of
``model`` that uses diffusers' default ``AttnProcessor2_0`` (or sets that back); others are left
as they are. An image of more than ``MAX_TOKENS`` pixels still runs torch's kernel.

Measured (BENCHMARKS.md, session 26, one H100, batch 512, compile + CUDA graphs, the upsampling
folded in both): 86.5 -> 89.6 and 85.6 -> 89.5 images/s, the two timed in either order. So it is
on by default where sampling compiles on CUDA (``SamplingOptions``).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

# The most tokens (height x width) an attention is computed by sums for; a longer one runs torch's
# kernel. The products cost tokens^2 x channels on the CUDA cores: at 16 (the `seed` UNet's 4x4)
# that is nothing, at 256 (16x16) a fused attention kernel on the tensor cores is the better bet.
MAX_TOKENS = 64


def attention_by_sums(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``F.scaled_dot_product_attention(query, key, value)`` (no mask, no dropout, default scale)
    for (..., L, D) tensors, computed as products and sums in fp32 at least; the result in ``query``'s dtype."""
    wide = torch.promote_types(query.dtype, torch.float32)  # fp32, or fp64 for fp64 inputs
    q, k, v = query.to(wide), key.to(wide), value.to(wide)
    scores = (q.unsqueeze(-2) * k.unsqueeze(-3)).sum(-1) * (1.0 / math.sqrt(q.shape[-1]))  # (..., L, S)
    weights = scores.softmax(-1)
    out = (weights.unsqueeze(-1) * v.unsqueeze(-3)).sum(-2)  # (..., L, D)
    return out.to(query.dtype)


@functools.cache  # one class and one instance: torch.compile's guards see the same object
def _processor() -> object:
    from diffusers.models.attention_processor import AttnProcessor2_0

    class AttnBySumsProcessor(AttnProcessor2_0):
        """diffusers' ``AttnProcessor2_0`` for self-attention over an image (what ``UNet2DModel``'s
        attention blocks run), with :func:`attention_by_sums` in place of SDPA; anything else
        (cross-attention, a mask, normalised q/k, a spatial norm) goes to the default processor."""

        def __call__(
            self,
            attn,
            hidden_states,
            encoder_hidden_states=None,
            attention_mask=None,
            temb=None,
            *args,
            **kwargs,
        ):
            if (
                encoder_hidden_states is not None
                or attention_mask is not None
                or attn.spatial_norm is not None
                or attn.norm_q is not None
                or attn.norm_k is not None
                or hidden_states.ndim != 4
                or hidden_states.shape[-2] * hidden_states.shape[-1] > MAX_TOKENS
            ):
                return super().__call__(
                    attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs
                )
            residual = hidden_states
            batch, channels, height, width = hidden_states.shape
            tokens = hidden_states.view(batch, channels, height * width).transpose(1, 2)
            if attn.group_norm is not None:
                tokens = attn.group_norm(tokens.transpose(1, 2)).transpose(1, 2)
            query, key, value = attn.to_q(tokens), attn.to_k(tokens), attn.to_v(tokens)
            head_dim = key.shape[-1] // attn.heads

            def heads(x: torch.Tensor) -> torch.Tensor:
                return x.view(batch, -1, attn.heads, head_dim).transpose(1, 2)

            out = attention_by_sums(heads(query), heads(key), heads(value))
            out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)
            out = attn.to_out[1](attn.to_out[0](out))  # projection, dropout
            out = out.transpose(-1, -2).reshape(batch, channels, height, width)
            if attn.residual_connection:
                out = out + residual
            return out / attn.rescale_output_factor

    return AttnBySumsProcessor()


def _attention_modules(model: nn.Module) -> list[nn.Module]:
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    kinds = (AttnProcessor2_0, type(_processor()))
    return [m for m in model.modules() if isinstance(m, Attention) and type(m.processor) in kinds]


def switchable_attentions(model: nn.Module) -> int:
    """How many of ``model``'s modules ``use_attention_by_sums`` would switch (in either form)."""
    return len(_attention_modules(model))


def use_attention_by_sums(model: nn.Module, enabled: bool = True) -> int:
    """Switch the attention of ``model``'s diffusers ``Attention`` modules that run the default
    processor to :func:`attention_by_sums` (or back); returns how many. A model without them (a
    plugin's own) is left as it is: 0."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    modules = _attention_modules(model)
    for module in modules:
        module.processor = _processor() if enabled else AttnProcessor2_0()
    return len(modules)
