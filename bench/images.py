"""PNG output: one file per image, 8-per-row grids, the denoising strip. All writes are atomic.

Images are float tensors (B, 3, H, W) in [-1, 1], as everywhere between stages.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from bench.atomic import atomic_write


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3), rounded like torchvision's save_image."""
    images = images.detach().float().cpu().clamp(-1, 1)
    return ((images + 1) * 127.5 + 0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def _save_png(array: torch.Tensor, path: str | os.PathLike) -> Path:
    from PIL import Image

    image = Image.fromarray(array.numpy())
    return atomic_write(path, lambda p: image.save(p, format="PNG"))


def save_images(images: torch.Tensor, out_dir: str | os.PathLike) -> list[Path]:
    """Write ``<out_dir>/<i>.png`` for every image, in order (the hand-in layout)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [_save_png(array, out_dir / f"{i}.png") for i, array in enumerate(to_uint8(images))]


def make_grid(images: torch.Tensor, nrow: int = 8, padding: int = 2, pad_value: float = 0.0) -> torch.Tensor:
    """One (3, H', W') image of ``nrow`` images per row, as ``torchvision.utils.make_grid`` draws it.

    Values stay in [-1, 1]; ``pad_value`` is in [0, 1] like torchvision's (0 = black).
    """
    images = images.detach().float().cpu()
    n, c, h, w = images.shape
    ncol = min(nrow, n)
    nrows = (n + ncol - 1) // ncol
    cell_h, cell_w = h + padding, w + padding
    grid = torch.full((c, nrows * cell_h + padding, ncol * cell_w + padding), pad_value * 2 - 1)
    for i in range(n):
        row, col = divmod(i, ncol)
        top, left = row * cell_h + padding, col * cell_w + padding
        grid[:, top : top + h, left : left + w] = images[i]
    return grid


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int = 8) -> Path:
    """Write the images as one PNG grid of ``nrow`` per row (torchvision's make_grid layout)."""
    return _save_png(to_uint8(make_grid(images, nrow=nrow)[None])[0], path)


def save_denoising_strip(frames: torch.Tensor | list[torch.Tensor], path: str | os.PathLike) -> Path:
    """Write frames (F, 3, H, W), pure noise first, final image last, as one row of a PNG.

    ``frames`` may also be ``SampleResult.frames[:, i]`` for image ``i``; at least 8 frames are
    expected for the i-CLEVR denoising figure.
    """
    if isinstance(frames, list):
        frames = torch.stack([f.reshape(f.shape[-3:]) for f in frames])
    if frames.ndim != 4:
        raise ValueError(f"frames must be (F, 3, H, W), got shape {tuple(frames.shape)}")
    return save_grid(frames, path, nrow=len(frames))


def save_misses_sheet(
    images: torch.Tensor,
    misses: list[tuple[int, list[str], list[str]]],
    path: str | os.PathLike,
    tile: int = 192,
    columns: int = 8,
) -> Path:
    """The images with a miss, enlarged, each captioned with its index, the objects the judge did
    not find (red) and what it ranked there instead (blue): what the model gets wrong, at a glance.
    ``misses``: (index into ``images``, missed labels, labels said instead), as the accuracy
    evaluator's ``misses`` gives them."""
    from PIL import Image, ImageDraw

    from bench.plotting import load_font, save_figure

    caption, font = 34, load_font(12)
    rows = max(1, -(-len(misses) // columns))
    sheet = Image.new("RGB", (min(len(misses), columns) * tile or tile, rows * (tile + caption)), "white")
    arrays = to_uint8(images)
    for n, (index, missed, said) in enumerate(misses):
        x, y = (n % columns) * tile, (n // columns) * (tile + caption)
        sheet.paste(Image.fromarray(arrays[index].numpy()).resize((tile, tile), Image.NEAREST), (x, y))
        draw = ImageDraw.Draw(sheet)
        draw.text((x + 3, y + 3), str(index), fill="white", font=font, stroke_width=2, stroke_fill="black")
        draw.text((x + 2, y + tile + 2), "miss: " + ", ".join(missed), fill=(200, 0, 0), font=font)
        draw.text((x + 2, y + tile + 17), "said: " + ", ".join(said), fill=(0, 0, 200), font=font)
    return save_figure(sheet, path)
