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
from bench_builtins.datasets.synthetic.scene import sample_scenes, scene_labels, scenes_for_conditions

RENDER_VERSION = 4  # bump when scene sampling or the renderer changes, so old caches are not reused


def frame_file_name(scene: dict) -> str:
    return f"CLEVR_train_{scene['scene']:06d}_{scene['frame']}.png"


def render_workers() -> int:
    """Processes to render with: ``$BENCH_RENDER_WORKERS``, else one per core beyond two.

    The renderer spends its time in Python per object, so a GPU does not speed it up (measured
    ~100 images/s on an H200, as on 2 CPU cores); many cores do, one process each.
    """
    env = os.environ.get("BENCH_RENDER_WORKERS")
    if env:
        return max(1, int(env))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores if cores > 2 else 1


def _render_chunk(frames: list[dict], device: str, batch: int, size: int | None) -> torch.Tensor:
    imgs = render_scenes(frames, device=device, batch_size=batch)
    return resize_uint8(imgs, size) if size else imgs


def _render_chunk_in_worker(frames: list[dict], size: int | None) -> torch.Tensor:
    torch.set_num_threads(1)  # one process per core: threads would only contend
    return _render_chunk(frames, "cpu", 8, size)


def render_in_chunks(
    frames: list[dict],
    device: str = "cpu",
    chunk: int = 64,
    label: str = "rendering",
    size: int | None = None,
    workers: int | None = None,
):
    """Yield (start, images) chunk by chunk in order, at 320x240 or resized to ``size``.

    On the CPU with several cores the chunks render in a pool of processes (same pixels:
    each chunk is rendered by the same code, only elsewhere).
    """
    rate = Rate()
    batch = 64 if str(device).startswith("cuda") else 8
    starts = range(0, len(frames), chunk)
    bar = progress(starts, label=label, length=len(starts), status=lambda: f"{rate.per_second:.0f} img/s")
    workers = render_workers() if workers is None else workers
    if workers > 1 and str(device) == "cpu" and len(starts) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            chunks = pool.map(
                _render_chunk_in_worker, [frames[s : s + chunk] for s in starts], [size] * len(starts)
            )
            for start, imgs in zip(bar, chunks, strict=True):
                rate.add(len(imgs))
                yield start, imgs
        return
    for start in bar:
        imgs = _render_chunk(frames[start : start + chunk], device, batch, size)
        rate.add(len(imgs))
        yield start, imgs


def render_frames(
    frames: list[dict], image_size: int = 64, device: str = "cpu", label: str = "rendering"
) -> torch.Tensor:
    """Frame dicts rendered and resized to (N, 3, image_size, image_size) uint8, with a progress bar."""
    images = torch.empty(len(frames), 3, image_size, image_size, dtype=torch.uint8)
    for start, chunk in render_in_chunks(frames, device=device, label=label, size=image_size):
        images[start : start + len(chunk)] = chunk
    return images


def render_conditions(
    conditions: list[list[str]],
    per_condition: int = 20,
    seed: int = 0,
    image_size: int = 64,
    device: str = "cpu",
) -> torch.Tensor:
    """``per_condition`` renders of each condition, condition by condition: (N, 3, S, S) uint8 whose
    objects are exactly the condition's (``scene.scenes_for_conditions``)."""
    frames = scenes_for_conditions(conditions, per_condition, seed)
    return render_frames(
        frames, image_size, device, f"rendering {len(frames)} scenes of the conditions on {device}"
    )


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
        label = f"rendering {len(frame_dicts)} synthetic images ({split}) on {device}"
        images = render_frames(frame_dicts, image_size, device, label)
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
