"""CSV: one row per config aggregated over seeds, raw numbers (no ± strings) for spreadsheets."""

from __future__ import annotations

import csv
import io
from typing import Any

from bench.guidance import format_interval
from bench.report import CONFIG_KEYS
from bench.selection import cell_key

SPEED = (
    "images_per_s",
    "s_per_image",
    "nfe",
    "guided_nfe",
    "peak_memory_mb",
    "batch_size",
    "dtype",
    "device",
)


def flatten(record: dict[str, Any]) -> dict[str, Any]:
    """``metrics.acc = {mean, std, n}`` -> ``acc_mean``, ``acc_std``, ``acc_n_seeds`` columns."""
    row: dict[str, Any] = {k: record.get(k, "") for k in CONFIG_KEYS}
    row["guidance_interval"] = format_interval(record.get("guidance_interval") or None)  # 300-1000
    row["seeds"] = " ".join(str(s) for s in record.get("seeds", []) if s is not None)
    row["n_seeds"] = record.get("n_seeds", "")
    row["n_images"] = record.get("n_images", "")
    speed = record.get("speed") or {}
    for key in SPEED:
        value = speed.get(key, "")
        # Call counts average to whole numbers: 100, not 100.0.
        row[key] = (
            int(value) if key.endswith("nfe") and isinstance(value, float) and value.is_integer() else value
        )
    for name, value in (record.get("metrics") or {}).items():
        if isinstance(value, dict) and "mean" in value:
            row[f"{name}_mean"] = value["mean"]
            row[f"{name}_std"] = value["std"] if value["n"] > 1 else ""  # one seed has no spread
            row[f"{name}_n_seeds"] = value["n"]
        elif not isinstance(value, dict):
            row[name] = value  # sample counts such as fid-judge_n
    row["error"] = record.get("error") or ""
    return row


class CsvReporter:
    def __init__(self, **options: Any) -> None:
        self.options = options

    def __call__(self, report) -> str:
        rows = [flatten(r) for r in report.records]
        if getattr(report, "selection", None) is not None:  # --select-on: each row's rank (1 = chosen)
            # cells that tie for first all rank 1, as the table's "tie" says
            tied = report.selection.tied
            rank = {
                cell_key(c.config): 1 if i <= tied else i
                for i, c in enumerate(report.selection.cells, 1)
                if c.score is not None
            }
            for row, record in zip(rows, report.records, strict=True):
                row["selection_rank"] = rank.get(cell_key(record), "")
        columns: list[str] = []
        for row in rows:  # union of columns, first-seen order, error last
            columns += [c for c in row if c not in columns and c != "error"]
        columns.append("error")
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue()
