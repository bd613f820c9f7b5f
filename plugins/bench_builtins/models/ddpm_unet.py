"""``ddpm-unet``: diffusers ``UNet2DModel`` conditioned on a multi-hot label vector.

The condition (B, num_labels) goes through ``nn.Linear(num_labels, time_embed_dim)`` and is
added to the timestep embedding (``class_embed_type="identity"``), as in the i-CLEVR reference.
torch and diffusers are imported inside the factory (plugin modules stay light at import).
"""

from __future__ import annotations

import copy
from typing import Any

from bench.weights import shipped_weights

NUM_LABELS = 24

# The reference UNet of docs/iclevr.md, exactly (113.7 M parameters with the Linear(24, 512)).
_SEED = {
    "sample_size": 64,
    "in_channels": 3,
    "out_channels": 3,
    "num_labels": NUM_LABELS,
    "layers_per_block": 2,
    "block_out_channels": [128, 128, 256, 256, 512, 512],
    "down_block_types": ["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "dropout": 0.0,
}

PRESETS: dict[str, dict[str, Any]] = {
    "seed": _SEED,
    # CPU default. On CPU the cost is FLOPs at 64x64/32x32 plus memory-bound norms and
    # activations, so the high-resolution levels are narrow and the parameters (10.0 M) sit at
    # 8x8/4x4, where they are cheap: 1.24 GFLOP per image, about 0.5 s per 64-image forward on
    # 2 cores. Attention at 8x8 (plus the mid block at 4x4).
    "small": {
        **_SEED,
        "layers_per_block": 1,
        "block_out_channels": [16, 32, 64, 128, 256],
        "down_block_types": ["DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"],
        "attention_head_dim": 32,
        "norm_num_groups": 8,
    },
    # Mid-size for quick GPU work: 25.3 M parameters, 17.5 GFLOP per image, attention at 16x16.
    "base": {
        **_SEED,
        "layers_per_block": 2,
        "block_out_channels": [64, 128, 256, 256],
        "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
        "attention_head_dim": 64,
        "norm_num_groups": 32,
    },
    # For tests: a forward in milliseconds.
    "tiny": {
        **_SEED,
        "layers_per_block": 1,
        "block_out_channels": [8, 16],
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
        "attention_head_dim": 8,
        "norm_num_groups": 4,
    },
}

SEED_PARAMETERS = 113_686_019  # asserted by tests/test_model.py

SHIPPED_WEIGHTS = "ddpm-unet-small-synthetic.safetensors"


def _build_class():
    import torch
    from torch import nn

    class DDPMUNet(nn.Module):
        """Noise predictor ``forward(sample, timesteps, conditions) -> eps``."""

        def __init__(self, config: dict[str, Any]) -> None:
            super().__init__()
            from diffusers import UNet2DModel

            self.config = config
            channels = list(config["block_out_channels"])
            time_embed_dim = channels[0] * 4  # UNet2DModel's default time embedding width
            self.unet = UNet2DModel(
                sample_size=config["sample_size"],
                in_channels=config["in_channels"],
                out_channels=config["out_channels"],
                layers_per_block=config["layers_per_block"],
                block_out_channels=tuple(channels),
                down_block_types=tuple(config["down_block_types"]),
                up_block_types=tuple(config["up_block_types"]),
                attention_head_dim=config["attention_head_dim"],
                norm_num_groups=config["norm_num_groups"],
                dropout=config["dropout"],
                class_embed_type="identity",
            )
            self.cond_embed = nn.Linear(config["num_labels"], time_embed_dim)

        def forward(
            self, sample: torch.Tensor, timesteps: torch.Tensor, conditions: torch.Tensor
        ) -> torch.Tensor:
            class_labels = self.cond_embed(conditions.to(self.cond_embed.weight.dtype))
            return self.unet(sample, timesteps, class_labels=class_labels, return_dict=False)[0]

    return DDPMUNet


_CLASS = None


def model_class():
    """The ``DDPMUNet`` class (built lazily so importing this module imports no torch)."""
    global _CLASS
    if _CLASS is None:
        _CLASS = _build_class()
    return _CLASS


def resolve_config(preset: str | None = None, **config: Any) -> dict[str, Any]:
    """The full JSON-serialisable config for ``preset`` with ``config`` overriding it."""
    preset = preset or "small"
    if preset not in PRESETS:
        raise ValueError(f"unknown ddpm-unet preset {preset!r}; known presets: {', '.join(PRESETS)}")
    merged = copy.deepcopy(PRESETS[preset])
    unknown = sorted(set(config) - set(merged))
    if unknown:
        raise ValueError(
            f"unknown ddpm-unet option(s) {', '.join(unknown)}; known options: {', '.join(sorted(merged))}"
        )
    for key, value in config.items():
        merged[key] = list(value) if isinstance(value, tuple) else value
    return {"preset": preset, **merged}


def make_ddpm_unet(preset: str | None = None, **config: Any):
    """Conditional DDPM UNet (diffusers UNet2DModel + Linear label embedding)."""
    return model_class()(resolve_config(preset, **config))


def _default_checkpoint():
    return shipped_weights(SHIPPED_WEIGHTS)


make_ddpm_unet.presets = tuple(PRESETS)
make_ddpm_unet.default_checkpoint = _default_checkpoint
