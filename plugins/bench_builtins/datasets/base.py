"""The dataset object both dataset plugins return, and the shared preprocessing and cache.

Images are held as one uint8 tensor (N, 3, S, S) already resized to the model size, so a
training loop can move the whole set to the GPU at once (``images_uint8()``); items are
converted to float in [-1, 1] on access, as the hook contract says.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.atomic import atomic_write
from bench.conditions import multi_hot

CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """``$BENCH_CACHE_DIR`` or ``~/.cache/bench``."""
    env = os.environ.get("BENCH_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "bench"


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, H, W, 3) or (N, 3, H, W) uint8 -> (N, 3, size, size) uint8.

    The i-CLEVR preprocessing: squash to a square, bilinear with antialiasing (what
    torchvision's ``Resize((64, 64))`` does); normalisation to [-1, 1] happens on access.
    """
    if images.shape[-1] == 3 and images.shape[1] != 3:
        images = images.permute(0, 3, 1, 2)
    if images.shape[-2:] == (size, size):
        return images.contiguous()
    out = []
    for chunk in images.split(256):  # bounded memory for 18k images
        x = F.interpolate(
            chunk.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
        out.append(x.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out)


def to_model_range(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 -> float in [-1, 1] (mean 0.5, std 0.5 normalisation)."""
    return images_uint8.float().div(127.5).sub(1.0)


class ImageConditionDataset(torch.utils.data.Dataset):
    """Items ``(image float (3, S, S) in [-1, 1], multi-hot float (len(labels),))``."""

    def __init__(
        self,
        images: torch.Tensor,
        conditions: Sequence[Sequence[str]],
        labels: Sequence[str],
        files: Sequence[str] | None = None,
        source: str = "",
        info: dict[str, Any] | None = None,
    ):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (N, 3, S, S), got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(conditions):
            raise ValueError(f"{len(images)} images but {len(conditions)} conditions")
        self._images = images
        self.conditions = [list(c) for c in conditions]
        self.labels = list(labels)
        self.files = list(files) if files is not None else [f"{i}.png" for i in range(len(images))]
        self.image_size = int(images.shape[-1])
        self.source = source
        self.info = dict(info or {})
        self._hot = multi_hot(self.conditions, self.labels)

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return to_model_range(self._images[index]), self._hot[index]

    def images_uint8(self) -> torch.Tensor:
        """All images as one (N, 3, S, S) uint8 tensor (no copy)."""
        return self._images

    def conditions_multi_hot(self) -> torch.Tensor:
        """All conditions as one (N, num_labels) float tensor."""
        return self._hot

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} images {self.image_size}x{self.image_size}, {self.source})"


def cache_key(parts: dict[str, Any]) -> str:
    blob = json.dumps({"format": CACHE_FORMAT, **parts}, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def save_cached(
    path: Path, images: torch.Tensor, conditions: list[list[str]], files: list[str], labels: list[str]
) -> None:
    payload = {"images": images.contiguous(), "conditions": conditions, "files": files, "labels": labels}
    atomic_write(path, lambda p: torch.save(payload, p))


def load_cached(path: Path) -> dict[str, Any] | None:
    """The cached payload, or None when absent or unreadable (it is then rebuilt)."""
    if not path.exists():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a corrupt cache is rebuilt, never fatal
        return None
    if not isinstance(payload, dict) or payload.get("images") is None:
        return None
    return payload


def random_dataset(n: int, size: int = 64, seed: int = 0) -> ImageConditionDataset:
    """``n`` random uint8 images with 1-3 random labels each: for speed runs, which do not depend on content."""
    from bench.conditions import BUILTIN_LABELS

    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    labels = list(BUILTIN_LABELS)
    conditions = [
        [labels[int(i)] for i in torch.randperm(len(labels), generator=g)[: 1 + row % 3]] for row in range(n)
    ]
    return ImageConditionDataset(images, conditions, labels, source="random (speed runs)")
