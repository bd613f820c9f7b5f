"""HTML: ONE self-contained page (tables, the Pareto plot, figures, image grids as data URIs)."""

from __future__ import annotations

import base64
import html
import tempfile
from pathlib import Path
from typing import Any

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 2em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }
th { background: #f3f3f3; }
td.error { color: #b00020; }
.header { font-family: monospace; font-size: 0.85em; background: #f8f8f8; padding: 0.6em; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figure img { max-width: 100%; image-rendering: pixelated; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #555; }
.missing { color: #b00020; font-size: 0.85em; }
"""


def data_uri(path: Path) -> str:
    """A PNG (or any image) inlined so the page travels as one file."""
    suffix = path.suffix.lower().lstrip(".") or "png"
    mime = {"jpg": "jpeg", "svg": "svg+xml"}.get(suffix, suffix)
    return f"data:image/{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


# What a browser shows in <img>; a --plot p.pdf or .tiff was inlined as a broken picture.
_BROWSER_IMAGES = {".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp"}


def _image(path: Path, caption: str) -> str:
    if not path.is_file():  # a moved or deleted grid must not break the page
        return f'<p class="missing">missing image {html.escape(str(path))} ({html.escape(caption)})</p>'
    if path.suffix.lower() not in _BROWSER_IMAGES:
        return (
            f'<p class="missing">{html.escape(caption)}: {html.escape(str(path))} is a {path.suffix} file, '
            "which a browser does not show inline; write the plot as .png for the page</p>"
        )
    return (
        f'<figure><img src="{data_uri(path)}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _table(table) -> str:
    error_col = table.headers.index("error") if "error" in table.headers else -1
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in table.headers)
    body = []
    for row in table.rows:
        cells = "".join(
            f'<td class="error">{html.escape(str(c))}</td>'
            if i == error_col and c
            else f"<td>{html.escape(str(c))}</td>"
            for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return (
        f"<h2>{html.escape(table.title)}</h2>\n<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n"
        + "\n".join(body)
        + "\n</tbody>\n</table>"
    )


class HtmlReporter:
    def __init__(self, title: str = "bench report", **options: Any) -> None:
        self.title = title

    def __call__(self, report) -> str:
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(self.title)}</title><style>{STYLE}</style></head><body>",
            f"<h1>{html.escape(self.title)}</h1>",
        ]
        if report.header:
            parts.append(
                '<div class="header">' + "<br>".join(html.escape(h) for h in report.header) + "</div>"
            )
        parts += [_table(t) for t in report.tables]
        parts.append("<h2>accuracy against speed</h2>")
        parts.append(_plot(report))
        parts += _label_accuracy(report)
        if report.figures:
            parts.append("<h2>figures</h2>")
            parts += [_image(Path(p), name) for name, p in report.figures.items()]
        if report.grids:
            parts.append("<h2>image grids</h2>")
            parts += [_image(Path(p), label) for label, p in report.grids]
        parts.append("</body></html>")
        return "\n".join(parts) + "\n"


def _label_accuracy(report) -> list[str]:
    """The per-label heatmap (``--labels-plot``'s, else drawn now) when any config has per-label
    accuracy; nothing otherwise."""
    from bench.report import draw_label_accuracy
    from bench.results import ResultsError

    if report.labels_plot is not None and Path(report.labels_plot).is_file():
        return ["<h2>accuracy per label</h2>", _image(Path(report.labels_plot), "accuracy per label")]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = draw_label_accuracy(report, Path(tmp) / "labels.png")
        except ResultsError:  # no config has per-label accuracy
            return []
        return ["<h2>accuracy per label</h2>", _image(path, "accuracy per label")]


def _plot(report) -> str:
    """The plot drawn by ``--plot`` if there was one, else drawn now into a temporary file."""
    from bench.report import PARETO_CAPTION, draw_plot, plot_bars
    from bench.results import ResultsError

    if report.plot is not None and Path(report.plot).is_file():
        return _image(Path(report.plot), report.plot_caption or PARETO_CAPTION)
    try:
        bars = plot_bars(report)
    except ResultsError:
        return "<p>no configuration has images/s to plot.</p>"
    with tempfile.TemporaryDirectory() as tmp:
        path, caption = draw_plot(report, Path(tmp) / "plot.png", bars)
        return _image(path, caption)
