"""JSON: the report as data (header, display tables, aggregated records, plot points, images)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any


class JsonReporter:
    def __init__(self, indent: int = 2, **options: Any) -> None:
        self.indent = indent

    def __call__(self, report) -> str:
        doc = {
            "header": report.header,
            "sources": [str(p) for p in report.sources],
            "tables": [{"title": t.title, "headers": t.headers, "rows": t.rows} for t in report.tables],
            "records": report.records,
            "points": report.points,
            "figures": {name: str(path) for name, path in report.figures.items()},
            "grids": [{"label": label, "path": str(path)} for label, path in report.grids],
        }
        if getattr(report, "selection", None) is not None:  # --select-on: the ranking as data
            doc["selection"] = dataclasses.asdict(report.selection)
        return json.dumps(doc, indent=self.indent, ensure_ascii=False, default=str) + "\n"
