"""PNG plots drawn with Pillow (no matplotlib): the training loss curve, the Pareto plot and heatmaps."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# ---------------------------------------------------------------- fonts, ticks, labels (both plots)


class PlotError(ValueError):
    """A figure that cannot be written where it was asked for."""


def save_figure(image: Any, out_path: str | Path) -> Path:
    """Write ``image`` atomically (parent folders made), in the format its suffix names."""
    from PIL import Image

    from bench.atomic import atomic_write

    image_format = Image.registered_extensions().get(Path(out_path).suffix.lower())
    if image_format is None:
        raise PlotError(f"{out_path}: not an image file name; end it with .png")
    return atomic_write(out_path, lambda p: image.save(p, format=image_format))


def load_font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 or no FreeType: the bitmap font, still legible
        return ImageFont.load_default()


def _nice_ticks(lo: float, hi: float, target: int = 6) -> list[float]:
    """Round tick values (1, 2, 5 x 10^k) covering [lo, hi]."""
    import math

    span = hi - lo or abs(hi) or 1.0
    raw = span / max(target - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw * 0.999)
    first = math.floor(lo / step) * step
    ticks = []
    value = first
    while value <= hi + step * 1e-9:
        if value >= lo - step * 1e-9:
            ticks.append(round(value, 12))
        value += step
    return ticks


def _log_ticks(lo: float, hi: float) -> list[float]:
    """1-2-5 ticks per decade for a log axis, thinned to at most ~8."""
    import math

    ticks = []
    for exp in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            v = m * 10.0**exp
            if lo <= v <= hi:
                ticks.append(v)
    while len(ticks) > 8:
        ticks = ticks[::2]
    return ticks


def _tick_label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10 or value == int(value):
        return f"{value:g}"
    return f"{value:.3g}"


def _paste_y_label(image: Any, text: str, font: Any, top: float, bottom: float) -> None:
    """The y-axis label, rotated, centred on [top, bottom] at the left edge (drawn on its own image,
    then pasted: Pillow draws no rotated text)."""
    from PIL import Image, ImageDraw

    width = int(ImageDraw.Draw(image).textlength(text, font=font)) + 4
    label = Image.new("RGB", (width, 22), "white")
    ImageDraw.Draw(label).text((2, 2), text, fill="black", font=font)
    label = label.rotate(90, expand=True)
    image.paste(label, (8, int(top + (bottom - top - width) / 2)))


# ---------------------------------------------------------------- scatter plot (Pareto)

_SCATTER_COLORS = (
    (31, 119, 180),
    (214, 39, 40),
    (44, 160, 44),
    (148, 103, 189),
    (140, 86, 75),
    (23, 190, 207),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (0, 0, 128),
)  # tab10's without its orange (the Pareto ring's), and navy: ten series before a colour repeats
_PARETO_COLOR = (255, 127, 14)
# After ten series the colours come round again with another marker: 40 series stay apart.
_MARKERS = ("circle", "square", "triangle", "diamond")


def series_styles(series: Sequence[str]) -> dict[str, tuple[tuple[int, int, int], str]]:
    """Each series' (colour, marker): ten colours, then the same colours with the next marker."""
    n = len(_SCATTER_COLORS)
    return {s: (_SCATTER_COLORS[i % n], _MARKERS[(i // n) % len(_MARKERS)]) for i, s in enumerate(series)}


def _natural_key(text: str) -> list[Any]:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text)]


def _draw_marker(draw: Any, marker: str, cx: float, cy: float, r: float, fill: Any) -> None:
    if marker == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill, outline="black")
    elif marker == "triangle":
        draw.polygon(
            [(cx, cy - r - 1), (cx + r + 1, cy + r), (cx - r - 1, cy + r)], fill=fill, outline="black"
        )
    elif marker == "diamond":
        r += 1
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill, outline="black")
    else:
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill, outline="black")


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both x and y (larger is better on both)."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (ox >= x and oy >= y) and (ox > x or oy > y) for j, (ox, oy) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def scatter_plot(
    points: Sequence[Mapping[str, Any] | tuple],
    out_path: str | Path,
    title: str = "",
    xlabel: str = "images/s",
    ylabel: str = "accuracy",
    connect_pareto: bool = True,
    size: tuple[int, int] = (800, 600),
    log_x: bool | None = None,
) -> Path:
    """Draw accuracy (y) against images/s (x), one labelled point each, the Pareto front marked.

    ``points``: mappings with ``x``, ``y``, ``label`` and optionally ``series`` (colour and
    legend) and ``yerr`` (a vertical bar), or ``(x, y, label)`` tuples. ``log_x`` (default:
    when x spans over 8x) puts images/s on a log scale. Returns ``out_path``.
    """
    import math

    from PIL import Image, ImageDraw

    pts = []
    for p in points:
        if isinstance(p, Mapping):
            pts.append(
                {
                    "x": float(p["x"]),
                    "y": float(p["y"]),
                    "label": str(p.get("label", "")),
                    "series": str(p.get("series") or ""),
                    "yerr": float(p.get("yerr") or 0.0),
                }
            )
        else:
            pts.append(
                {
                    "x": float(p[0]),
                    "y": float(p[1]),
                    "label": str(p[2]) if len(p) > 2 else "",
                    "series": "",
                    "yerr": 0.0,
                }
            )
    width, height = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font, small, big = load_font(15), load_font(13), load_font(18)
    left, right, top, bottom = 84, 24, 48, 66
    plot_box = (left, top, width - right, height - bottom)
    if title:
        tw = draw.textlength(title, font=big)
        draw.text(((width - tw) / 2, 14), title, fill="black", font=big)
    if ylabel:
        _paste_y_label(image, ylabel, font, top, plot_box[3])
    if xlabel:
        xw = draw.textlength(xlabel, font=font)
        draw.text((left + (plot_box[2] - left - xw) / 2, height - 28), xlabel, fill="black", font=font)
    draw.rectangle(plot_box, outline="black", width=1)
    if not pts:
        msg = "no points: results need both acc and images/s"
        mw = draw.textlength(msg, font=font)
        draw.text(((width - mw) / 2, height / 2), msg, fill=(120, 120, 120), font=font)
        return save_figure(image, out_path)

    xs = [p["x"] for p in pts]
    ys = [p["y"] for p in pts]
    lo_y = min(y - p["yerr"] for y, p in zip(ys, pts, strict=True))
    hi_y = max(y + p["yerr"] for y, p in zip(ys, pts, strict=True))
    if log_x is None:
        log_x = min(xs) > 0 and max(xs) / min(xs) > 8  # step counts 10..100 span ~10x in speed
    if log_x:
        lx0, lx1 = math.log10(min(xs)), math.log10(max(xs))
        pad = (lx1 - lx0) * 0.08 or 0.3
        x0, x1 = 10 ** (lx0 - pad), 10 ** (lx1 + pad)
        xticks = _log_ticks(x0, x1)
    else:
        pad = (max(xs) - min(xs)) * 0.08 or max(abs(max(xs)) * 0.1, 0.5)
        x0, x1 = max(0.0, min(xs) - pad) if min(xs) >= 0 else min(xs) - pad, max(xs) + pad
        xticks = _nice_ticks(x0, x1)
    pad = (hi_y - lo_y) * 0.1 or 0.05
    y0, y1 = lo_y - pad, hi_y + pad
    if all(0 <= y <= 1 for y in ys):  # accuracy: the axis stays inside [0, 1], error bars clipped to it
        y0, y1 = max(0.0, y0), min(1.0, y1) if hi_y < 1 else 1.0 + pad / 2
    yticks = _nice_ticks(y0, y1)
    y0, y1 = min(y0, yticks[0]), max(y1, yticks[-1])
    if not log_x:
        x0, x1 = min(x0, xticks[0]), max(x1, xticks[-1])

    def px(x: float) -> float:
        if log_x:
            return left + (math.log10(x) - math.log10(x0)) / (math.log10(x1) - math.log10(x0)) * (
                plot_box[2] - left
            )
        return left + (x - x0) / ((x1 - x0) or 1) * (plot_box[2] - left)

    def py(y: float) -> float:
        return plot_box[3] - (y - y0) / ((y1 - y0) or 1) * (plot_box[3] - top)

    grid_color, tick_color = (228, 228, 228), (60, 60, 60)
    for t in xticks:
        x = px(t)
        draw.line([(x, top + 1), (x, plot_box[3] - 1)], fill=grid_color)
        draw.line([(x, plot_box[3]), (x, plot_box[3] + 5)], fill="black")
        text = _tick_label(t)
        draw.text(
            (x - draw.textlength(text, font=small) / 2, plot_box[3] + 8), text, fill=tick_color, font=small
        )
    for t in yticks:
        y = py(t)
        draw.line([(left + 1, y), (plot_box[2] - 1, y)], fill=grid_color)
        draw.line([(left - 5, y), (left, y)], fill="black")
        text = _tick_label(t)
        draw.text((left - 9 - draw.textlength(text, font=small), y - 8), text, fill=tick_color, font=small)
    draw.rectangle(plot_box, outline="black", width=1)

    series = sorted({p["series"] for p in pts}, key=_natural_key)  # "set 2" before "set 10"
    styles = series_styles(series)
    colors = {s: style[0] for s, style in styles.items()}
    # the front is computed per series: comparing configs across condition sets means nothing
    front: set[int] = set()
    for s in series:
        idx = [i for i, p in enumerate(pts) if p["series"] == s]
        local = pareto_front([(pts[i]["x"], pts[i]["y"]) for i in idx])
        ordered = [idx[k] for k in local]
        front.update(ordered)
        if connect_pareto and len(ordered) > 1:  # in the series' colour: each set's front its own
            draw.line([(px(pts[i]["x"]), py(pts[i]["y"])) for i in ordered], fill=colors[s], width=2)
    taken: list[tuple[float, float, float, float]] = []
    for p in pts:
        cx, cy = px(p["x"]), py(p["y"])
        taken.append((cx - 6, cy - 6, cx + 6, cy + 6))
        if p["yerr"]:  # keep labels and the legend off the error bars too
            taken.append((cx - 5, py(p["y"] + p["yerr"]), cx + 5, py(p["y"] - p["yerr"])))
    for i, p in enumerate(pts):
        cx, cy = px(p["x"]), py(p["y"])
        color = colors[p["series"]]
        if p["yerr"]:
            top_y, bot_y = py(min(p["y"] + p["yerr"], y1)), py(max(p["y"] - p["yerr"], y0))
            draw.line([(cx, top_y), (cx, bot_y)], fill=color, width=1)
            draw.line([(cx - 4, top_y), (cx + 4, top_y)], fill=color)
            draw.line([(cx - 4, bot_y), (cx + 4, bot_y)], fill=color)
        if i in front:
            draw.ellipse((cx - 9, cy - 9, cx + 9, cy + 9), outline=_PARETO_COLOR, width=3)
        _draw_marker(draw, styles[p["series"]][1], cx, cy, 5, color)
    crowded = 0  # labels left out: no clear spot, and one on top of another reads as neither
    for p in pts:
        if not p["label"]:
            continue
        cx, cy = px(p["x"]), py(p["y"])
        tw, th = draw.textlength(p["label"], font=small), 14
        # the first spot that overlaps no point, label or the frame
        for dx, dy in (
            (12, -th - 2),
            (12, 2),
            (-12 - tw, -th - 2),
            (-12 - tw, 2),
            (-tw / 2, -th - 12),
            (-tw / 2, 10),
        ):
            box = (cx + dx, cy + dy, cx + dx + tw, cy + dy + th)
            inside = (
                box[0] > left + 2
                and box[2] < plot_box[2] - 2
                and box[1] > top + 2
                and box[3] < plot_box[3] - 2
            )
            clear = all(box[2] < o[0] or box[0] > o[2] or box[3] < o[1] or box[1] > o[3] for o in taken)
            if inside and clear:
                break
        else:
            crowded += 1
            continue
        taken.append(box)
        # a faint leader line says which point a displaced label belongs to
        near = (min(max(cx, box[0]), box[2]), min(max(cy, box[1]), box[3]))
        dist = ((near[0] - cx) ** 2 + (near[1] - cy) ** 2) ** 0.5
        if dist > 12:
            start = (cx + (near[0] - cx) * 7 / dist, cy + (near[1] - cy) * 7 / dist)
            draw.line([start, near], fill=(170, 170, 170))
        draw.text((box[0], box[1] - 2), p["label"], fill="black", font=small)

    # legend: series markers and the front's ring, in the corner of the frame that covers nothing,
    # else to the right of the frame on a wider canvas
    entries = [(s or "configs", colors[s], styles[s][1]) for s in series]
    if front:
        entries.append(("Pareto front (each set's joined in its colour)", _PARETO_COLOR, None))
    lw = max(draw.textlength(e[0], font=small) for e in entries) + 34
    lh = 18 * len(entries) + 8
    corners = [
        (plot_box[2] - lw - 8, plot_box[3] - lh - 8),
        (left + 8, top + 8),
        (left + 8, plot_box[3] - lh - 8),
        (plot_box[2] - lw - 8, top + 8),
    ]

    def _overlap(c):
        return sum(
            1 for o in taken if not (c[0] + lw < o[0] or c[0] > o[2] or c[1] + lh < o[1] or c[1] > o[3])
        )

    lx, ly = min(corners, key=_overlap)
    if _overlap((lx, ly)):
        wider = Image.new("RGB", (width + int(lw) + 8, max(height, int(top + lh + 8))), "white")
        wider.paste(image, (0, 0))
        image, draw = wider, ImageDraw.Draw(wider)
        lx, ly = plot_box[2] + 8, top
    draw.rectangle((lx, ly, lx + lw, ly + lh), fill="white", outline=(150, 150, 150))
    for k, (name, color, marker) in enumerate(entries):
        cy = ly + 13 + 18 * k
        if marker is None:  # the front's ring
            draw.ellipse((lx + 8, cy - 7, lx + 22, cy + 7), outline=color, width=3)
        else:
            _draw_marker(draw, marker, lx + 15, cy, 5, color)
        draw.text((lx + 28, cy - 8), name, fill="black", font=small)
    if crowded:
        # in a strip of its own below the canvas: at the old bottom it sat on the x-axis label, and
        # in the middle of a canvas the legend had made taller
        with_note = Image.new("RGB", (image.width, image.height + 22), "white")
        with_note.paste(image, (0, 0))
        note = f"{crowded} label(s) left out: no room beside their points"
        ImageDraw.Draw(with_note).text((8, image.height + 2), note, fill=(120, 120, 120), font=small)
        image = with_note
    return save_figure(image, out_path)


# ---------------------------------------------------------------- line plot (loss curve)


def line_plot(
    xs: Sequence[float],
    ys: Sequence[float],
    out_path: str | Path,
    title: str,
    xlabel: str,
    ylabel: str,
    *,
    log_y: bool = False,
    size: tuple[int, int] = (800, 500),
) -> Path:
    """Draw ``ys`` against ``xs`` as one line (e.g. the training loss curve) to a PNG, atomically.
    ``log_y``: a log scale, for a loss that falls over decades (non-positive values are left out)."""
    import math

    from PIL import Image, ImageDraw

    points = [
        (float(x), float(y))
        for x, y in zip(xs, ys, strict=False)
        if math.isfinite(float(x)) and math.isfinite(float(y)) and (not log_y or float(y) > 0)
    ]
    width, height = size
    left, right, top, bottom = 84, 28, 40, 56
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = load_font(13)
    draw.text((width // 2, 12), title, fill="black", font=font, anchor="mt")
    draw.text(((left + width - right) // 2, height - 12), xlabel, fill="black", font=font, anchor="mb")
    box = (left, top, width - right, height - bottom)
    _paste_y_label(image, ylabel, font, box[1], box[3])
    draw.rectangle(box, outline="black")
    if not points:
        draw.text(
            ((box[0] + box[2]) // 2, (box[1] + box[3]) // 2), "no data", fill="gray", font=font, anchor="mm"
        )
        return save_figure(image, out_path)

    fy = math.log10 if log_y else (lambda v: v)
    x_lo, x_hi = min(p[0] for p in points), max(p[0] for p in points)
    x_hi = x_hi if x_hi > x_lo else x_lo + 1
    y_min, y_max = min(p[1] for p in points), max(p[1] for p in points)
    if log_y:
        y_lo, y_hi = math.log10(y_min), math.log10(y_max)
        pad = (y_hi - y_lo) * 0.05 or 0.1
        y_lo, y_hi = y_lo - pad, y_hi + pad
        yticks = _log_ticks(10**y_lo, 10**y_hi)
        if len(yticks) < 2:  # less than a decade: plain round values, still on the log scale
            yticks = [t for t in _nice_ticks(10**y_lo, 10**y_hi, 4) if t > 0]
    else:
        pad = (y_max - y_min) * 0.05 or 1.0
        y_lo, y_hi = y_min - pad, y_max + pad
        if y_min >= 0:
            y_lo = max(y_lo, 0.0)  # a loss is never negative: no axis below 0
        yticks = _nice_ticks(y_lo, y_hi, 5)
    xticks = [t for t in _nice_ticks(x_lo, x_hi, 6) if x_lo <= t <= x_hi]

    def to_px(x: float, y: float) -> tuple[float, float]:
        px = box[0] + (x - x_lo) / (x_hi - x_lo) * (box[2] - box[0])
        py = box[3] - (fy(y) - y_lo) / (y_hi - y_lo) * (box[3] - box[1])
        return px, py

    for tick in xticks:
        px = to_px(tick, y_max)[0]
        draw.line([(px, box[3]), (px, box[3] + 5)], fill="black")
        draw.text((px, box[3] + 8), _tick_label(tick), fill="black", font=font, anchor="mt")
    for tick in yticks:
        py = to_px(x_lo, tick)[1]
        if not box[1] <= py <= box[3]:
            continue
        draw.line([(box[0] - 5, py), (box[0], py)], fill="black")
        draw.line([(box[0], py), (box[2], py)], fill=(230, 230, 230))
        draw.text((box[0] - 8, py), _tick_label(tick), fill="black", font=font, anchor="rm")
    pixels = [to_px(x, y) for x, y in points]
    if len(pixels) == 1:
        px, py = pixels[0]
        draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=(31, 119, 180))
    else:
        draw.line(pixels, fill=(31, 119, 180), width=2)
    draw.rectangle(box, outline="black")  # again: the grid lines drew over it
    return save_figure(image, out_path)


def bar_chart(
    labels: Sequence[str],
    values: Sequence[float],
    out_path: str | Path,
    title: str,
    xlabel: str,
    *,
    marker: tuple[float, str] | None = None,
    size: tuple[int, int] = (800, 0),
) -> Path:
    """Horizontal bars of ``values`` (one per label, top to bottom, each with its value written
    beside it) to a PNG, atomically; ``marker`` ``(value, text)`` draws a dashed vertical line
    there (a target, say). A height of 0 fits the bars (28 px each); labels too long for the width
    widen the picture."""
    from PIL import Image, ImageDraw

    if len(labels) != len(values):
        raise PlotError(f"{len(labels)} labels for {len(values)} values")
    bars = [
        (str(label), float(v)) for label, v in zip(labels, values, strict=True) if math.isfinite(float(v))
    ]
    font = load_font(13)
    label_width = int(max((font.getbbox(label)[2] for label, _ in bars), default=0))
    width = max(size[0], label_width + 16 + 420)  # long labels widen the picture, not cut the bars
    left, right, top, bottom = label_width + 16, 70, 40, 56
    height = size[1] or top + bottom + 28 * max(len(bars), 1) + 8
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((width // 2, 12), title, fill="black", font=font, anchor="mt")
    draw.text(((left + width - right) // 2, height - 12), xlabel, fill="black", font=font, anchor="mb")
    box = (left, top, width - right, height - bottom)
    if not bars:
        draw.rectangle(box, outline="black")
        draw.text(
            ((box[0] + box[2]) // 2, (box[1] + box[3]) // 2), "no data", fill="gray", font=font, anchor="mm"
        )
        return save_figure(image, out_path)
    hi = max([v for _, v in bars] + ([marker[0]] if marker else []) + [0.0])
    ticks = _nice_ticks(0.0, hi or 1.0, 6)
    hi = max(ticks[-1], hi * 1.04) or 1.0  # room for the longest bar's value

    def to_px(v: float) -> float:
        return box[0] + max(v, 0.0) / hi * (box[2] - box[0])

    for tick in ticks:
        px = to_px(tick)
        draw.line([(px, box[1]), (px, box[3])], fill=(230, 230, 230))
        draw.line([(px, box[3]), (px, box[3] + 5)], fill="black")
        draw.text((px, box[3] + 8), _tick_label(tick), fill="black", font=font, anchor="mt")
    step = (box[3] - box[1]) / len(bars)
    colours = [_SCATTER_COLORS[i % len(_SCATTER_COLORS)] for i in range(len(bars))]
    for i, (label, value) in enumerate(bars):
        y0, y1 = box[1] + i * step + 4, box[1] + (i + 1) * step - 4
        draw.rectangle([box[0], y0, to_px(value), y1], fill=colours[i])
        draw.text((box[0] - 8, (y0 + y1) / 2), label, fill="black", font=font, anchor="rm")
        value_text = _tick_label(round(value, 2))
        draw.text((to_px(value) + 4, (y0 + y1) / 2), value_text, fill="black", font=font, anchor="lm")
    if marker:
        px = to_px(marker[0])
        for y in range(int(box[1]), int(box[3]), 8):
            draw.line([(px, y), (px, min(y + 4, box[3]))], fill=(200, 0, 0), width=2)
        draw.text((px, box[1] - 4), marker[1], fill=(200, 0, 0), font=font, anchor="mb")
    draw.rectangle(box, outline="black")
    return save_figure(image, out_path)


def heatmap(
    row_labels: Sequence[str],
    columns: Sequence[tuple[str, str]],
    values: Sequence[Sequence[float | None]],
    out_path: str | Path,
    title: str,
    *,
    note: str = "",
) -> Path:
    """A table of values in [0, 1] as coloured cells (white at 1, red at 0.5 and below, grey where
    there is no value), each cell printed with its value. ``columns``: (group, name) pairs; neighbouring
    columns of one group share a header above their names (an i-CLEVR label "red cube" is the
    column "red" of the group "cube"). ``note``: a line under the table (what the values are)."""
    from PIL import Image, ImageDraw

    if len(values) != len(row_labels) or any(len(row) != len(columns) for row in values):
        raise PlotError(
            f"heatmap: {len(row_labels)} row labels and {len(columns)} columns do not fit the values"
        )
    font, small = load_font(13), load_font(11)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_width(text: str, f: Any) -> int:
        return int(probe.textlength(text, font=f))

    cell_w = max([40] + [text_width(name, small) + 8 for _, name in columns])
    cell_h, pad = 22, 12
    left = pad + max([0] + [text_width(label, small) for label in row_labels]) + 8
    top = 34 + 2 * cell_h  # title, then the group row and the name row
    width = max(
        left + cell_w * len(columns) + pad,
        text_width(title, font) + 2 * pad,
        text_width(note, small) + 2 * pad,
    )
    height = top + cell_h * len(row_labels) + (30 if note else 12)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((width // 2, 10), title, fill="black", font=font, anchor="mt")
    start = 0
    for i in range(1, len(columns) + 1):  # group headers over runs of one group
        if i == len(columns) or columns[i][0] != columns[start][0]:
            x0, x1 = left + start * cell_w, left + i * cell_w
            draw.text(
                ((x0 + x1) // 2, 34 + cell_h // 2), columns[start][0], fill="black", font=font, anchor="mm"
            )
            draw.line([(x0 + 2, 34 + cell_h - 2), (x1 - 2, 34 + cell_h - 2)], fill="gray")
            start = i
    for j, (_, name) in enumerate(columns):
        draw.text(
            (left + j * cell_w + cell_w // 2, 34 + cell_h + cell_h // 2),
            name,
            fill="black",
            font=small,
            anchor="mm",
        )
    for i, (label, row) in enumerate(zip(row_labels, values, strict=True)):
        y = top + i * cell_h
        draw.text((left - 8, y + cell_h // 2), label, fill="black", font=small, anchor="rm")
        for j, value in enumerate(row):
            box = (left + j * cell_w, y, left + (j + 1) * cell_w - 1, y + cell_h - 1)
            if value is None:
                draw.rectangle(box, fill=(228, 228, 236))  # bluish: no text antialiasing makes it
                continue
            # white at 1, full red at 0.5 and below: the misses that matter sit between 0.8 and 1
            miss = min(2.0 * (1.0 - max(float(value), 0.0)), 1.0)
            fill = (255, round(255 - 200 * miss), round(255 - 220 * miss))
            draw.rectangle(box, fill=fill, outline=(200, 200, 200))
            draw.text(
                ((box[0] + box[2]) // 2, (box[1] + box[3]) // 2),
                f"{value:.2f}",
                fill="black",
                font=small,
                anchor="mm",
            )
    if note:
        draw.text((pad, height - 10), note, fill="dimgray", font=small, anchor="lb")
    return save_figure(image, out_path)
