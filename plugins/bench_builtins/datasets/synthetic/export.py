"""Data commands as plain functions: write a synthetic folder in the real i-CLEVR format,
write condition sets in the test.json format, and draw contact sheets of a dataset."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.atomic import atomic_write, atomic_write_json
from bench.conditions import load_labels_spec
from bench_builtins.datasets.synthetic.scene import COLOURS, SHAPES, sample_scenes, scene_labels


def write_synthetic_folder(
    out_dir: str | os.PathLike,
    scenes: int = 6003,
    seed: int = 0,
    split: str = "train",
    max_objects: int = 3,
    min_objects: int = 1,
    frames: int | None = None,
    images_subdir: bool = True,
    device: str = "cpu",
) -> Path:
    """Render a folder in the real layout: images/CLEVR_train_XXXXXX_k.png (320x240),
    train.json and objects.json. Returns the folder."""
    from PIL import Image

    from bench_builtins.datasets.synthetic.dataset import frame_file_name, render_in_chunks

    out = Path(out_dir)
    image_dir = out / "images" if images_subdir else out
    made = [d for d in (out, image_dir) if not d.exists()]  # folders this call creates
    image_dir.mkdir(parents=True, exist_ok=True)
    frame_dicts = sample_scenes(
        scenes, seed=seed, frames=frames, max_objects=max_objects, split=split, min_objects=min_objects
    )
    label = f"writing {len(frame_dicts)} images to {image_dir}"
    written: list[Path] = []
    try:
        for start, imgs in render_in_chunks(frame_dicts, device=device, label=label):
            for frame, img in zip(frame_dicts[start : start + len(imgs)], imgs, strict=True):
                # plain saves: train.json, written last and atomically, marks the folder complete
                path = image_dir / frame_file_name(frame)
                written.append(path)  # before the save: a half-written PNG goes too
                Image.fromarray(img.numpy()).save(path, format="PNG")
    except BaseException:
        # Ctrl-C or an error: take back what this call wrote, so the folder is as it was (an
        # interrupted render left PNGs without train.json, a folder the retry refused as not empty).
        for path in written:
            path.unlink(missing_ok=True)
        for folder in reversed(made):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise
    atomic_write_json(out / "train.json", {frame_file_name(f): scene_labels(f) for f in frame_dicts})
    write_objects_json(out / "objects.json")
    return out


def write_objects_json(path: str | os.PathLike) -> Path:
    """objects.json: the 24 label names -> index, in index order."""
    return atomic_write_json(path, {name: i for i, name in enumerate(load_labels_spec())})


def make_conditions(
    n: int = 32, objects: tuple[int, int] = (1, 3), seed: int = 0, shared: bool = False
) -> list[list[str]]:
    """``n`` conditions of distinct objects. ``shared``: every condition has 2-3 objects
    and at least two of them share a colour or a shape (like new_test.json)."""
    lo, hi = objects
    if shared:
        lo, hi = max(lo, 2), max(hi, 2)
    if not 1 <= lo <= hi <= 24:
        raise ValueError(f"objects must be a range within 1..24, got {objects}")
    rng = np.random.default_rng([seed, 2, int(shared)])
    out: list[list[str]] = []
    while len(out) < n:
        k = int(rng.integers(lo, hi + 1))
        picks: list[tuple[str, str]] = []
        if shared:
            # a pair sharing one attribute first, then the rest at random
            c, s = COLOURS[rng.integers(8)], SHAPES[rng.integers(3)]
            if rng.random() < 0.5:
                s2 = SHAPES[(SHAPES.index(s) + 1 + rng.integers(2)) % 3]
                picks = [(c, s), (c, s2)]
            else:
                c2 = COLOURS[(COLOURS.index(c) + 1 + rng.integers(7)) % 8]
                picks = [(c, s), (c2, s)]
        while len(picks) < k:
            pick = (COLOURS[rng.integers(8)], SHAPES[rng.integers(3)])
            if pick not in picks:
                picks.append(pick)
        order = rng.permutation(len(picks))
        out.append([f"{picks[i][0]} {picks[i][1]}" for i in order])
    return out


def write_condition_set(
    out_file: str | os.PathLike,
    n: int = 32,
    objects: tuple[int, int] = (1, 3),
    seed: int = 0,
    shared: bool = False,
) -> Path:
    """Write ``make_conditions(...)`` as a test.json-format file (one condition a line)."""
    return write_conditions(out_file, make_conditions(n, objects, seed, shared))


def write_conditions(out_file: str | os.PathLike, conditions: Sequence[Sequence[str]]) -> Path:
    """``conditions`` as a test.json-format file, one condition a line."""
    text = "[\n" + ",\n".join("  " + json.dumps(list(c)) for c in conditions) + "\n]\n"
    path = Path(out_file)
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))
    return path


def _sample_from_folder(folder: Path, n: int) -> tuple[list[Any], list[list[str]]]:
    """The first ``n`` images of a folder and their labels, read as the ``iclevr`` loader reads the
    folder: a malformed train.json or a damaged PNG was a traceback, and PNGs in a folder of their
    own beside train.json (the course layout, which bench train reads) were refused."""
    from bench_builtins.datasets.folder import open_image, read_listing

    _, images, files, conditions, _ = read_listing(folder)
    shown = files[:n]
    pics = []
    for name in shown:
        with open_image(images / name) as im:
            pics.append(im.convert("RGB"))
    return pics, conditions[: len(shown)]


def contact_sheet(
    source: Any,
    out_png: str | os.PathLike,
    n: int = 24,
    columns: int = 6,
    cell_width: int = 240,
    labels: Sequence[Sequence[str]] | None = None,
) -> Path:
    """Draw ``n`` images with their labels underneath into one PNG.

    ``source``: a folder in the i-CLEVR layout (full-size PNGs), a dataset object with
    ``images_uint8()`` and ``conditions``, or a uint8 tensor (N, H, W, 3) with ``labels``.
    """
    from PIL import Image, ImageDraw, ImageFont

    if isinstance(source, (str, os.PathLike)):
        pics, conds = _sample_from_folder(Path(source), n)
    elif hasattr(source, "images_uint8"):
        imgs = source.images_uint8()[:n].permute(0, 2, 3, 1)
        pics = [Image.fromarray(x.numpy()) for x in imgs]
        conds = source.conditions[:n]
    else:
        pics = [Image.fromarray(x.numpy()) for x in source[:n]]
        conds = list(labels or [[] for _ in pics])[:n]
    cell_h = round(cell_width * 3 / 4)
    font = ImageFont.load_default()
    line_h = 12
    text_h = line_h * max(1, max((len(c) for c in conds), default=1)) + 6
    rows = -(-len(pics) // columns)
    sheet = Image.new("RGB", (columns * cell_width, rows * (cell_h + text_h)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (pic, cond) in enumerate(zip(pics, conds, strict=True)):
        x, y = (i % columns) * cell_width, (i // columns) * (cell_h + text_h)
        sheet.paste(pic.resize((cell_width, cell_h), Image.Resampling.BILINEAR), (x, y))
        for j, name in enumerate(cond):
            draw.text((x + 4, y + cell_h + 3 + j * line_h), name, fill=(20, 20, 20), font=font)
    from bench.plotting import save_figure

    # in the format its name says (sheet.jpg was a PNG under that name); a name that is no image is refused
    return save_figure(sheet, out_png)
