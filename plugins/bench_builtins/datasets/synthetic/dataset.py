"""The ``synthetic`` dataset: procedural i-CLEVR stand-in, rendered once and cached."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from bench.conditions import load_labels_spec
from bench.progress import Rate, progress
from bench_builtins.datasets.base import (
    ImageConditionDataset,
    cache_key,
    default_cache_dir,
    load_cached,
    resize_uint8,
    save_cached,
)
from bench_builtins.datasets.synthetic.render import render_scenes
from bench_builtins.datasets.synthetic.scene import sample_scenes, scene_labels

RENDER_VERSION = 3  # bump when scene sampling or the renderer changes, so old caches are not reused


def frame_file_name(scene: dict) -> str:
    return f"CLEVR_train_{scene['scene']:06d}_{scene['frame']}.png"


def render_in_chunks(
    frames: list[dict],
    device: str = "cpu",
    chunk: int = 64,
    label: str = "rendering",
    size: int | None = None,
):
    """Yield (start, images) chunk by chunk, at 320x240 or resized to ``size`` (bounded memory)."""
    rate = Rate()
    batch = 64 if str(device).startswith("cuda") else 8
    starts = range(0, len(frames), chunk)
    bar = progress(starts, label=label, length=len(starts), status=lambda: f"{rate.per_second:.0f} img/s")
    for start in bar:
        imgs = render_scenes(frames[start : start + chunk], device=device, batch_size=batch)
        rate.add(len(imgs))
        yield start, (resize_uint8(imgs, size) if size else imgs)


def load_synthetic(
    scenes: int = 6003,
    seed: int = 0,
    split: str = "train",
    max_objects: int = 3,
    min_objects: int = 1,
    frames: int | None = None,
    image_size: int = 64,
    device: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
) -> ImageConditionDataset:
    """Render (or reuse the cached) synthetic set as an ImageConditionDataset."""
    if scenes < 1:
        raise ValueError(f"scenes must be >= 1, got {scenes}")
    labels = load_labels_spec()
    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    key = cache_key(
        {
            "kind": "synthetic",
            "render": RENDER_VERSION,
            "scenes": scenes,
            "seed": seed,
            "split": split,
            "max_objects": max_objects,
            "min_objects": min_objects,
            "frames": frames,
            "size": image_size,
        }
    )
    cache_path = cache_root / "synthetic" / f"{key}.pt"
    payload = load_cached(cache_path) if use_cache else None
    if payload is not None and len(payload.get("conditions", ())) == len(payload["images"]):
        # a cache hit skips scene sampling too (seconds for 6003 scenes)
        images, conditions, files = payload["images"], payload["conditions"], payload["files"]
    else:
        frame_dicts = sample_scenes(
            scenes, seed=seed, frames=frames, max_objects=max_objects, split=split, min_objects=min_objects
        )
        conditions = [scene_labels(f) for f in frame_dicts]
        files = [frame_file_name(f) for f in frame_dicts]
        device = device or "cpu"
        images = torch.empty(len(frame_dicts), 3, image_size, image_size, dtype=torch.uint8)
        label = f"rendering {len(frame_dicts)} synthetic images ({split}) on {device}"
        for start, chunk in render_in_chunks(frame_dicts, device=device, label=label, size=image_size):
            images[start : start + len(chunk)] = chunk
        if use_cache:
            save_cached(cache_path, images, conditions, files, labels)
    info = {
        "scenes": scenes,
        "seed": seed,
        "split": split,
        "max_objects": max_objects,
        "min_objects": min_objects,
        "cache": str(cache_path),
    }
    return ImageConditionDataset(
        images, conditions, labels, files=files, source=f"synthetic:{split}", info=info
    )
