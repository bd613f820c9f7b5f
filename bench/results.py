"""The results file: one JSON document per run, written atomically.

The schema is documented in results/README.md. Rows are plain dicts so that reporters,
plots and third-party tools read them without importing bench.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import math
import platform
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from bench.atomic import atomic_write_json
from bench.jsonfile import read_json

SCHEMA = "bench.results/1"
# The model name of rows that score renders, not a model (`bench data ceiling`): a reference line.
RENDERS_MODEL = "renders"
LIBRARIES = ("bench", "torch", "diffusers", "torchvision", "torchmetrics", "accelerate", "pluggy", "click")


class MetricsError(ValueError):
    """An evaluator returned what results.json cannot hold as a metric."""


def checked_metrics(evaluator: str, returned: Any, taken: dict[str, str]) -> dict[str, Any]:
    """An evaluator's metrics as a results file holds them: name -> finite number, or name -> dict
    of such numbers (``acc_per_label``); a 0-dim tensor or numpy scalar becomes its number.
    MetricsError names the evaluator and the metric for anything else (a string, NaN, a list), and
    for a name another evaluator of the row gave already (``taken``: metric -> evaluator)."""
    if not isinstance(returned, dict):
        raise MetricsError(
            f"evaluator {evaluator!r} returned {type(returned).__name__}; expected a dict of metric name -> number"
        )

    def number(key: str, value: Any, inner: bool = False) -> Any:
        if inner and value is None:
            return None  # a label absent from the set
        if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
            value = value.item()  # torch / numpy scalar
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise MetricsError(
                f"evaluator {evaluator!r} returned {type(value).__name__} {str(value)[:40]!r} for "
                f"{key!r}; a metric is a number"
            )
        if not math.isfinite(value):
            raise MetricsError(f"evaluator {evaluator!r} returned {value} for {key!r}")
        return value

    checked: dict[str, Any] = {}
    for key, value in returned.items():
        if not isinstance(key, str) or not key:
            raise MetricsError(f"evaluator {evaluator!r} returned a metric named {key!r}")
        if key in _RESERVED_METRIC_NAMES or key.endswith("_error"):
            # A report column of its own (two "images/s" columns, an "error" metric beside the
            # row's error), or the name bench gives an evaluator's failure.
            raise MetricsError(
                f"evaluator {evaluator!r} returned a metric named {key!r}, a name the results rows and "
                "the report use themselves; give it its evaluator's name (brightness, fid-judge...)"
            )
        if key in taken:
            raise MetricsError(
                f"evaluator {evaluator!r} returned {key!r}, which evaluator {taken[key]!r} gave already; "
                "a metric name carries its evaluator's variant (fid-judge, not fid)"
            )
        if isinstance(value, dict):
            checked[key] = {str(k): number(f"{key}[{k}]", v, inner=True) for k, v in value.items()}
        else:
            checked[key] = number(key, value)
    return checked


# The sampling loop's on/off speed switches, by their SamplingOptions (and RunConfig) field, with
# the word `bench report` shows for each that is on: a row's `speed` records every one, a
# --resume compares what they resolved to, and runs that differ in one are two speeds. A new
# switch is added here once.
SPEED_SWITCHES = {
    "autotune": "autotune",
    "tune_kernels": "tuned",
    "cudnn_benchmark": "cudnn-benchmark",
    "group_norm_by_views": "gn-views",
    "group_norm_by_channel_stats": "gn-stats",
    "fold_upsample": "folded",
    "attention_by_sums": "attn-sums",
    "pad_thin_convs": "padded",
    "freeze_weights": "frozen",
    "noise_ahead": "noise-ahead",
    "triton_end_convs": "triton-ends",
}


@dataclass
class Row:
    """One cell of a run matrix for one condition set and one seed."""

    model: str
    scheduler: str
    steps: int
    seed: int
    condition_set: str
    guidance: float = 1.0
    guidance_interval: list[float] | None = None  # [lo, hi] timesteps guided; None: every step
    checkpoint: str = ""
    n_images: int = 0
    # speed: images_per_s, s_per_image, nfe, guided_nfe, peak_memory_mb, batch_size, dtype, device
    speed: dict[str, Any] = field(default_factory=dict)
    # quality: metric name -> number; a count that belongs to a metric is "<metric>_n"
    metrics: dict[str, Any] = field(default_factory=dict)
    images_dir: str = ""
    grid: str = ""
    misses: str = ""  # a sheet of the images with an object the judge did not find ("" when none)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RunResult:
    config: dict[str, Any]
    seeds: list[int]
    rows: list[Row] = field(default_factory=list)
    figures: dict[str, str] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "created": self.created,
            "config": self.config,
            "environment": self.environment or environment(),
            "seeds": self.seeds,
            "figures": self.figures,
            "rows": [r.to_dict() if isinstance(r, Row) else r for r in self.rows],
        }

    def write(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict())


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_revision(cwd: Path | None = None) -> dict[str, Any]:
    cwd = cwd or Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return {"revision": None, "dirty": None}
    if rev.returncode != 0:
        return {"revision": None, "dirty": None}
    return {"revision": rev.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def environment(device: str | None = None, plugins: dict[str, str] | None = None) -> dict[str, Any]:
    """Library versions, the device and the git revision, for the results file; ``plugins``: the
    version of each plugin loaded besides the built-ins (their code makes rows too)."""
    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "libraries": {name: _version(name) for name in LIBRARIES},
        "git": git_revision(),
    }
    if plugins is not None:
        env["plugins"] = dict(sorted(plugins.items()))
    if "torch" in sys.modules or device is not None:
        import torch

        env["cuda"] = torch.version.cuda
        env["device"] = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
            env["gpu_count"] = torch.cuda.device_count()
        env["cpu_threads"] = torch.get_num_threads()
    return env


def largest_costs(costs: Iterable[tuple[float | None, float]]) -> tuple[float | None, float]:
    """Of several (peak memory MB or None, seconds before the clock) figures, the largest of each
    (the peak None when none was measured, off CUDA): what a cell reports for its processes, or
    for itself and the warm-up of its batch shapes."""
    costs = list(costs)
    peaks = [peak for peak, _ in costs if peak is not None]
    return (max(peaks) if peaks else None), max(seconds for _, seconds in costs)


class ResultsError(Exception):
    """A results file that is missing, not JSON, or not in the bench schema."""


# What every row of a results file names: its cell and its condition set.
ROW_KEYS = ("scheduler", "steps", "guidance", "seed", "condition_set")


def load_results(path: str | Path) -> dict[str, Any]:
    """A JSON object from ``path``: a bench results file (its schema and rows checked) or another
    tool's JSON (pytest-benchmark's, which has no ``rows``)."""
    path = Path(path)
    if not path.exists():
        raise ResultsError(f"results file {path} does not exist")
    data = read_json(path, ResultsError)
    if not isinstance(data, dict):
        raise ResultsError(f"results file {path} holds a {type(data).__name__}, expected an object")
    if "rows" in data:
        _check_rows(data, path)
    return data


def _check_rows(data: dict[str, Any], path: Path) -> None:
    """A file edited by hand or by another tool: one line naming what is wrong, not a traceback from
    the middle of a report or a resume (or a row dropped without a word)."""
    schema = data.get("schema")
    if schema is not None and schema != SCHEMA:
        raise ResultsError(f"{path} is in schema {schema!r}; this bench reads {SCHEMA!r}")
    if not isinstance(data["rows"], list):
        raise ResultsError(f"{path}: 'rows' is a {type(data['rows']).__name__}, expected a list of rows")
    for index, row in enumerate(data["rows"]):
        if not isinstance(row, dict):
            raise ResultsError(f"{path}: row {index} is {json.dumps(row)[:40]}, expected an object")
        missing = [key for key in ROW_KEYS if key not in row]
        if missing:
            raise ResultsError(f"{path}: row {index} has no {', '.join(missing)}")
        for key in ("metrics", "speed"):
            if row.get(key) is not None and not isinstance(row[key], dict):
                raise ResultsError(
                    f"{path}: row {index}'s {key!r} is a {type(row[key]).__name__}, expected an object"
                )


# Names a metric may not take: a row's own fields and the report's speed columns, by key and by
# header (checked_metrics reads it when called, after Row is defined).
_RESERVED_METRIC_NAMES = frozenset({f.name for f in fields(Row)}) | {
    "seeds", "images_per_s", "s_per_image", "peak_memory_mb", "nfe", "images/s", "s/image", "peak MB",
}  # fmt: skip
