"""The ``iclevr`` dataset: a user's folder in the real i-CLEVR layout.

Layout: ``train.json`` (file name -> list of label names), optional ``objects.json``
(name -> index; when present its order must equal the spec's), and the PNGs beside
``train.json``, in ``images/`` or in another folder beside it (8-bit colour: RGB, RGBA or palette). Images are preprocessed once to the model size and cached
under the cache dir, keyed by the folder's contents, so a second load takes a second.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.conditions import ConditionError, labels_from_objects_json, load_labels_spec, validate_conditions
from bench.jsonfile import read_json
from bench.progress import progress
from bench_builtins.datasets.base import (
    ImageConditionDataset,
    cache_key,
    default_cache_dir,
    load_cached,
    resize_uint8,
    save_cached,
)

SOURCE_SIZE = (320, 240)
IMAGE_DIRS = ("images", ".")
# PIL modes that hold no 8-bit colour: refused rather than converted.
NOT_COLOUR = {
    "1": "1-bit",
    "L": "grayscale",
    "LA": "grayscale",
    "I": "32-bit integer",
    "I;16": "16-bit",
    "I;16B": "16-bit",
    "I;16L": "16-bit",
    "F": "floating-point",
}


class DatasetError(Exception):
    """A dataset folder or file the loader cannot use; the message says what is expected."""


LAYOUT = (
    "expected a folder holding train.json, objects.json and the PNG images "
    "(beside train.json or in images/), as the i-CLEVR data is laid out"
)


def resolve_paths(
    data_root: str | os.PathLike | None = None,
    train_json: str | os.PathLike | None = None,
    objects_json: str | os.PathLike | None = None,
    images_dir: str | os.PathLike | None = None,
) -> tuple[Path, Path | None, Path]:
    """(train.json, objects.json or None, image folder) from a root or explicit paths."""
    if data_root is None and train_json is None:
        raise DatasetError(f"the iclevr dataset needs --data-root FOLDER (data_root or train_json): {LAYOUT}")
    root = Path(data_root).expanduser() if data_root is not None else None
    if root is not None and not root.is_dir():
        raise DatasetError(
            f"data root {root} {'is not a folder' if root.exists() else 'not found'}: {LAYOUT}"
        )
    train = Path(train_json).expanduser() if train_json is not None else root / "train.json"
    if not train.is_file():
        raise DatasetError(f"train.json not found at {train}: {LAYOUT}")
    base = root if root is not None else train.parent
    if objects_json is not None:
        objects = Path(objects_json).expanduser()
        if not objects.is_file():
            raise DatasetError(f"objects.json not found at {objects} (given explicitly)")
    else:
        objects = base / "objects.json" if (base / "objects.json").is_file() else None
    if images_dir is not None:
        images = Path(images_dir).expanduser()
        if not images.is_dir():
            raise DatasetError(f"image folder {images} not found (given explicitly)")
    else:
        images = base / "images" if (base / "images").is_dir() else base
    return train, objects, images


def read_train_json(path: Path, labels: list[str]) -> tuple[list[str], list[list[str]]]:
    data = read_json(path, DatasetError)
    if not isinstance(data, dict) or not data:
        raise DatasetError(
            f'{path}: expected a JSON object "image file name" -> [label names], got '
            f"{'an empty object' if data == {} else type(data).__name__}"
        )
    files = list(data)
    try:
        conditions = validate_conditions(list(data.values()), labels, source=str(path), keys=files)
    except ConditionError as error:
        raise DatasetError(str(error)) from None
    return files, conditions


def locate_images(base: Path, images: Path, files: list[str], explicit: bool, train: Path) -> Path:
    """The folder holding the images ``train.json`` names: the one given, else the first of
    ``images/``, ``base`` itself and its other subfolders that holds the first file (course files
    keep the PNGs in a folder of their own; an empty ``images/`` does not hide PNGs beside
    train.json). Every missing file is found here, before minutes of decoding, and named."""
    if not explicit:
        others = sorted(
            d for d in base.iterdir() if d.is_dir() and d.name != "images" and not d.name.startswith(".")
        )
        candidates = [base / "images", base, *others]
        images = next((c for c in candidates if (c / files[0]).is_file()), images)
    missing = [name for name in files if not (images / name).is_file()]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:3]) + (", ..." if len(missing) > 3 else "")
        where = (
            ""
            if explicit
            else f" (nor in any folder beside it in {base})"
            if len(missing) == len(files)
            else ""
        )
        raise DatasetError(
            f"{len(missing)} of the {len(files)} images {train.name} names are not in {images}{where}: {shown}; "
            + (
                "check --images-dir: it names the folder of the PNGs"
                if explicit
                else "put the PNGs beside train.json, in images/ or in a folder of their own beside it"
            )
        )
    return images


def _fingerprint(train: Path, images: Path, files: list[str]) -> str:
    """Changes when train.json or any image file changes (size or mtime)."""
    h = hashlib.sha256(train.read_bytes())
    for name in files:
        try:
            st = (images / name).stat()
        except OSError:
            continue
        h.update(f"{name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


@contextmanager
def open_image(path: Path) -> Iterator[Any]:
    """``PIL.Image.open(path)``, where a truncated file or one that is no image is a DatasetError
    naming the file (among thousands) rather than PIL's error."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            yield im
    except (OSError, ValueError) as error:
        raise DatasetError(f"{path} cannot be read as an image ({error}); replace or remove it") from None


def _read_images(images: Path, files: list[str], train: Path, image_size: int):
    import numpy as np
    import torch

    out = torch.empty(len(files), 3, image_size, image_size, dtype=torch.uint8)
    chunk: list = []
    start = 0
    for i, name in enumerate(progress(files, label=f"reading {len(files)} images", length=len(files))):
        path = images / name
        with open_image(path) as im:
            if im.mode in NOT_COLOUR:
                # Colour labels on grey pixels, or 16-bit values read as white: other data.
                raise DatasetError(
                    f"{path} is a {NOT_COLOUR[im.mode]} image (mode {im.mode}); i-CLEVR renders are "
                    "8-bit colour PNGs (RGB or RGBA), and the labels name colours"
                )
            w, h = im.size
            # Squashing 4:3 to a square is the task's preprocessing; a square image at least
            # image_size wide has been squashed already. Another aspect means other data.
            four_three = abs(w * SOURCE_SIZE[1] - h * SOURCE_SIZE[0]) <= max(w, h)
            if not (four_three or w == h) or w < image_size:
                raise DatasetError(
                    f"{path} is {w}x{h}; i-CLEVR images are {SOURCE_SIZE[0]}x{SOURCE_SIZE[1]} "
                    f"(4:3, at least {image_size} wide), or squares of at least {image_size}"
                )
            pixels = np.asarray(im.convert("RGB"), dtype=np.uint8)
        chunk.append(torch.from_numpy(pixels.copy()))
        if len(chunk) == 256 or i == len(files) - 1:
            same = all(c.shape == chunk[0].shape for c in chunk)
            if same:
                out[start : start + len(chunk)] = resize_uint8(torch.stack(chunk), image_size)
            else:
                for j, c in enumerate(chunk):
                    out[start + j] = resize_uint8(c.unsqueeze(0), image_size)[0]
            start += len(chunk)
            chunk = []
    return out


def read_listing(
    data_root: str | os.PathLike | None = None,
    train_json: str | os.PathLike | None = None,
    objects_json: str | os.PathLike | None = None,
    images_dir: str | os.PathLike | None = None,
) -> tuple[Path, Path, list[str], list[list[str]], list[str]]:
    """What a folder in the i-CLEVR layout lists, checked, before any image is decoded: train.json,
    the folder of its images, their file names, each one's label names, and the label vocabulary."""
    train, objects, images = resolve_paths(data_root, train_json, objects_json, images_dir)
    spec = load_labels_spec()
    try:
        labels = labels_from_objects_json(objects, spec) if objects is not None else spec
    except ConditionError as error:
        raise DatasetError(str(error)) from None
    files, conditions = read_train_json(train, labels)
    base = Path(data_root).expanduser() if data_root is not None else train.parent
    images = locate_images(base, images, files, images_dir is not None, train)
    return train, images, files, conditions, labels


def load_iclevr_folder(
    data_root: str | os.PathLike | None = None,
    *,
    train_json: str | os.PathLike | None = None,
    objects_json: str | os.PathLike | None = None,
    images_dir: str | os.PathLike | None = None,
    image_size: int = 64,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
) -> ImageConditionDataset:
    """Load (and cache) a folder in the i-CLEVR layout as an ImageConditionDataset."""
    train, images, files, conditions, labels = read_listing(data_root, train_json, objects_json, images_dir)
    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    key = cache_key(
        {
            "kind": "iclevr",
            "train": str(train.resolve()),
            "images": str(images.resolve()),
            "size": image_size,
            "content": _fingerprint(train, images, files),
        }
    )
    cache_path = cache_root / "iclevr" / f"{key}.pt"
    payload = load_cached(cache_path) if use_cache else None
    if payload is not None and payload.get("files") == files:
        data = payload["images"]
    else:
        data = _read_images(images, files, train, image_size)
        if use_cache:
            save_cached(cache_path, data, conditions, files, labels)
    return ImageConditionDataset(
        data,
        conditions,
        labels,
        files=files,
        source=str(train.parent),
        info={"train_json": str(train), "images_dir": str(images), "cache": str(cache_path)},
    )
