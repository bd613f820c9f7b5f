"""Tables from results files: grouping by config, aggregation over seeds, never re-running.

``load_report`` reads bench results JSON (schema in results/README.md) and pytest-benchmark
JSON (``--benchmark-json``) into a :class:`Report`; reporter plugins render it.
"""

from __future__ import annotations

import itertools
import math
import re
import statistics
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.atomic import why_unwritable
from bench.guidance import format_interval
from bench.results import SPEED_SWITCHES, ResultsError, load_results

UP, DOWN = "↑", "↓"
CONFIG_KEYS = (
    "model",
    "checkpoint",
    "weights",
    "preset",
    "dtype",
    "judge",
    "ref_n",
    "conditions",
    "device",
    "sampling",
    "scheduler",
    "steps",
    "guidance",
    "guidance_interval",
    "condition_set",
)
# Part of a row's identity, shown only where rows differ in them: the sha256 (12 digits) of the
# weights sampled (two models saved under one path), the preset of random weights (a checkpoint
# carries its own), the sampling dtype, the judge and FID reference size the metrics used, and the
# sha256 of the condition set's content (two files called test.json), the device (a GPU's name) and
# how the loop ran (batch size, channels_last, compile, CUDA graphs, and each of SPEED_SWITCHES, so
# that a run with one is compared with one without, not refused as the same seed twice). Seeds that differ in any of
# them are two cells, never one mean: not of their accuracy, and not of their speed.
VARIANT_KEYS = ("weights", "preset", "dtype", "judge", "ref_n", "conditions", "device", "sampling")
# Identifying columns whose header is not the row key itself.
ID_TITLES = {"guidance_interval": "guidance interval"}
# Metric families where smaller is better; everything accuracy-like is larger-is-better.
LOWER_IS_BETTER = ("fid", "kid", "lpips", "loss")


@dataclass
class Table:
    """One rendered table: display strings, ready for tabulate."""

    title: str
    headers: list[str]
    rows: list[list[Any]]


@dataclass
class Report:
    """Everything a reporter renders; plain data so reporters need not import bench."""

    tables: list[Table] = field(default_factory=list)
    # aggregated groups with raw numbers (csv/json reporters and plots read these)
    records: list[dict[str, Any]] = field(default_factory=list)
    # plot points: {"x": images/s, "y": acc mean, "label": ..., "series": ...}
    points: list[dict[str, Any]] = field(default_factory=list)
    # the config header: one line per results file (device, git revision, versions)
    header: list[str] = field(default_factory=list)
    figures: dict[str, Path] = field(default_factory=dict)
    grids: list[tuple[str, Path]] = field(default_factory=list)
    sources: list[Path] = field(default_factory=list)
    plot: Path | None = None  # a plot already drawn (render_report --plot; plot_bars chose which)
    plot_caption: str = ""  # what that plot shows, for a page that embeds it
    labels_plot: Path | None = None  # a per-label heatmap already drawn (--labels-plot)
    selection: Any = None  # bench.selection.Selection when cells were ranked (--select-on)


# ---------------------------------------------------------------- reading files


def _is_pytest_benchmark(data: dict[str, Any]) -> bool:
    return "benchmarks" in data and "rows" not in data


def _benchmark_rows(data: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    """pytest-benchmark entries -> result rows with speed figures only. An entry with no timing at
    all (an edited or truncated file) is an error, not a row of blank cells."""
    rows = []
    for bench in data.get("benchmarks", []):
        extra = dict(bench.get("extra_info") or {})
        params = bench.get("params") or {}
        stats = bench.get("stats") or {}
        median = stats.get("median") or stats.get("mean")
        batch = extra.get("batch_size") or params.get("batch_size") or 1
        ips = extra.get("images_per_s")
        if ips is None and median:
            ips = batch / median  # one benchmarked call produces one batch
        if not ips:
            name = bench.get("fullname") or bench.get("name") or "a benchmark"
            raise ResultsError(
                f"{path}: {name} has no timing (neither extra_info.images_per_s nor stats.median or "
                "stats.mean); is it a file written by pytest --benchmark-json, whole?"
            )
        speed = {
            "images_per_s": ips,
            "s_per_image": extra.get("s_per_image") or (1.0 / ips if ips else None),
            "nfe": extra.get("nfe"),
            "guided_nfe": extra.get("guided_nfe"),
            "peak_memory_mb": extra.get("peak_memory_mb"),
            "batch_size": batch,
            "dtype": extra.get("dtype"),
            "device": extra.get("device"),
            "rounds": stats.get("rounds"),
            "median_s": median,
        }
        rows.append(
            {
                "model": extra.get("model") or params.get("model") or "",
                "checkpoint": extra.get("checkpoint", ""),
                # a benchmark without a scheduler is named by its test
                "scheduler": extra.get("scheduler") or params.get("scheduler") or bench.get("name", "?"),
                "steps": extra.get("steps") or params.get("steps") or "",
                "guidance": extra.get("guidance", params.get("guidance", "")),
                "guidance_interval": extra.get("guidance_interval", params.get("guidance_interval")),
                "seed": extra.get("seed"),
                "condition_set": extra.get("condition_set", ""),
                "preset": extra.get("preset") or params.get("preset") or "",
                "dtype": speed["dtype"] or "",
                "device": _device_name(extra.get("device"), extra.get("gpu")),
                "n_images": extra.get("n_images", 0),
                "speed": speed,
                "metrics": {},
                "grid": "",
                "error": None,
                "benchmark": bench.get("fullname") or bench.get("name"),
                # two benchmarks of one file at two batch sizes were refused as one measured twice
                "sampling": _sampling_text(
                    {**speed, "compile": extra.get("compile"), "cuda_graphs": extra.get("cuda_graphs")},
                    {"channels_last": extra.get("channels_last")},
                ),
            }
        )
    return rows


def _benchmark_header(data: dict[str, Any], path: Path) -> str:
    machine = data.get("machine_info") or {}
    commit = data.get("commit_info") or {}
    parts = [f"{path} (pytest-benchmark {data.get('version', '?')})"]
    # The benchmarks' own device (a GPU's name) first: the machine info names only the host's CPU.
    devices = {
        str(d) for b in data.get("benchmarks") or [] if (d := (b.get("extra_info") or {}).get("device"))
    }
    if devices:
        parts.append(f"device: {', '.join(sorted(devices))}")
    cpu = (machine.get("cpu") or {}).get("brand_raw")
    if cpu:
        parts.append(f"cpu: {cpu}")
    if machine.get("python_version"):
        parts.append(f"python {machine['python_version']}")
    if commit.get("id"):
        parts.append(f"git {commit['id'][:10]}{' (dirty)' if commit.get('dirty') else ''}")
    return ", ".join(parts)


def _results_header(data: dict[str, Any], path: Path) -> str:
    env = data.get("environment") or {}
    parts = [f"{path} ({data.get('schema', '?')}, {data.get('created', '?')})"]
    device = env.get("gpu") or env.get("device")
    if device:
        on_gpu = bool(env.get("gpu")) or str(env.get("device", "")).startswith("cuda")
        # torch's CUDA build is said for a GPU run only: "cpu (cuda 13.0)" read as a GPU somewhere
        parts.append(f"device: {device}" + (f" (cuda {env['cuda']})" if on_gpu and env.get("cuda") else ""))
    git = env.get("git") or {}
    if git.get("revision"):
        parts.append(f"git {git['revision'][:10]}{' (dirty)' if git.get('dirty') else ''}")
    if env.get("python"):
        parts.append(f"python {env['python']}")
    libs = env.get("libraries") or {}
    versions = [f"{name} {v}" for name, v in libs.items() if v]
    if versions:
        parts.append(", ".join(versions))
    config = data.get("config") or {}
    shown = {k: v for k, v in config.items() if not isinstance(v, dict | list) and v not in (None, "")}
    if shown:
        parts.append("config: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
    return ", ".join(parts)


def _read(path: Path) -> dict[str, Any]:
    data = load_results(path)
    if _is_pytest_benchmark(data):
        return data
    if "rows" not in data:
        raise ResultsError(
            f"{path} is neither a bench results file (no 'rows') nor pytest-benchmark JSON "
            f"(no 'benchmarks'); pass files written by `bench run --out` or `pytest --benchmark-json`"
        )
    return data


# ---------------------------------------------------------------- aggregation


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def id_text(row: dict[str, Any], key: str) -> str:
    """A config value as shown and grouped: a guidance interval as ``300-1000``, none as ``""``."""
    value = row.get(key, "")
    if key == "guidance_interval":
        return format_interval(value) if isinstance(value, list | tuple) and len(value) == 2 else ""
    return str(value)


def _config_key(row: dict[str, Any]) -> tuple:
    return tuple(id_text(row, k) for k in CONFIG_KEYS)


def _quality_metrics(rows: Iterable[dict[str, Any]]) -> list[str]:
    """Scalar metric names to show as columns: acc first, then FID/KID variants, in file order."""
    names: list[str] = []
    for row in rows:
        metrics = row.get("metrics") or {}
        for name, value in metrics.items():
            if name in names or _num(value) is None or _is_attribute(name, metrics):
                continue
            names.append(name)
    return sorted(names, key=lambda n: (n != "acc", not n.startswith("fid"), not n.startswith("kid")))


def _is_attribute(name: str, metrics: dict[str, Any]) -> bool:
    """``acc_n``, ``fid-judge_ref_n``, ``acc_per_image_mean``: a value that belongs to another metric
    of the row (its name and ``_``), not a column. A plugin's ``clip_score`` is a column of its own."""
    parts = name.split("_")
    return any("_".join(parts[:i]) in metrics for i in range(1, len(parts)))


def _direction(metric: str, lower: Collection[str] = ()) -> str:
    """↓ for the known lower-is-better families (``fid``, ``fid-judge``, ``kid_std``; not a
    plugin's ``fidelity``) and for the metrics an evaluator declared so."""
    family = re.split(r"[-_]", metric.lower(), maxsplit=1)[0]
    return DOWN if metric in lower or family in LOWER_IS_BETTER else UP


def _metric_title(metric: str, lower: Collection[str] = ()) -> str:
    """``acc ↑``, ``FID-judge ↓``: an acronym family (FID, KID, LPIPS) upper-cased, its variant
    kept; any other name (a plugin's ``clip_score``) as it is."""
    family, _, variant = metric.partition("-")
    base = family.upper() if family.lower() in ("fid", "kid", "lpips") else family
    return f"{base}{'-' + variant if variant else ''} {_direction(metric, lower)}"


def _same_draw(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two rows of one config that cannot be two draws of a mean: the same seed, or two
    pytest-benchmark measurements (they have no seed: each is the whole measurement)."""
    if a.get("benchmark") and b.get("benchmark"):
        return True
    return b.get("seed") is not None and a.get("seed") == b["seed"]


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group successful rows by config and aggregate over seeds; errored rows stay single."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    records: list[dict[str, Any]] = []
    for row in rows:
        if row.get("error"):
            continue
        members = groups.setdefault(_config_key(row), [])
        twin = next((m for m in members if _same_draw(m, row)), None)
        if twin is not None and row.get("benchmark"):
            where = " and ".join(dict.fromkeys(str(r.get("source", "?")) for r in (twin, row)))
            raise ResultsError(
                f"benchmark {row['benchmark']} on {row.get('device') or 'the same device'} appears twice, in "
                f"{where}: two measurements of one benchmark are not seeds to average; report those files "
                "separately (files from other devices are kept apart by their device column)"
            )
        if twin is not None:
            # Two runs of one seed (a copied file, or runs that differ in what a row does not name,
            # such as its condition file's content) would be averaged as if they were two seeds.
            where = " and ".join(dict.fromkeys(str(r.get("source", "?")) for r in (twin, row)))
            raise ResultsError(
                f"seed {row['seed']} of {row.get('scheduler')}/{row.get('steps')} "
                f"(guidance {row.get('guidance')}, set {row.get('condition_set')}) appears twice, in {where}: "
                "two runs of one seed cannot be averaged; report those files separately"
            )
        members.append(row)
    order: list[tuple[str, Any]] = []
    seen: set[tuple] = set()
    for row in rows:  # keep file order; an errored row stays where it was
        key = _config_key(row)
        if row.get("error"):
            order.append(("error", row))
        elif key not in seen:
            seen.add(key)
            order.append(("group", key))
    for kind, item in order:
        if kind == "error":
            row = item
            rec = {k: row.get(k, "") for k in CONFIG_KEYS}
            rec.update(seeds=[row.get("seed")], n_seeds=1, error=row["error"], metrics={}, speed={})
            records.append(rec)
            continue
        members = groups[item]
        first = members[0]
        rec = {k: first.get(k, "") for k in CONFIG_KEYS}
        rec["seeds"] = [m.get("seed") for m in members]
        rec["n_seeds"] = len(members)
        rec["n_images"] = sum(m.get("n_images") or 0 for m in members)
        rec["error"] = None
        rec["speed"] = _aggregate_speed(members)
        rec["metrics"] = _aggregate_metrics(members)
        rec["grids"] = [m["grid"] for m in members if m.get("grid")]
        # an evaluator that failed leaves "<name>_error" in metrics: show it, never drop it silently
        rec["metric_errors"] = sorted(
            {
                f"{k}: {v}"
                for m in members
                for k, v in (m.get("metrics") or {}).items()
                if k.endswith("_error")
            }
        )
        records.append(rec)
    return records


def _aggregate_speed(members: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("images_per_s", "s_per_image", "nfe", "guided_nfe"):
        values = [v for m in members if (v := _num((m.get("speed") or {}).get(key))) is not None]
        if values:
            out[key] = statistics.fmean(values)
    times = [_num((m.get("speed") or {}).get("s_per_image")) for m in members]
    if times and all(t for t in times):
        # Over seeds, throughput is images over time: 1 / mean s/image (a mean of rates let one
        # fast seed hide a slow one, and the two columns disagreed).
        out["images_per_s"] = 1.0 / statistics.fmean(times)
    # memory: the worst seed is what a user must provision for
    mem = [v for m in members if (v := _num((m.get("speed") or {}).get("peak_memory_mb"))) is not None]
    if mem:
        out["peak_memory_mb"] = max(mem)
    for key in ("batch_size", "dtype", "device"):
        values = {v for m in members if (v := (m.get("speed") or {}).get(key)) not in (None, "")}
        if len(values) == 1:
            out[key] = values.pop()  # as the file has it (a batch size stays a number)
        elif values:
            out[key] = ",".join(sorted(map(str, values)))
    return out


def _aggregate_metrics(members: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    names = {n for m in members for n in (m.get("metrics") or {})}
    for name in sorted(names):
        values = [v for m in members if (v := _num((m.get("metrics") or {}).get(name))) is not None]
        if not values:
            continue
        if name.endswith("_n"):
            out[name] = int(values[0]) if len(set(values)) == 1 else int(sum(values) / len(values))
            continue
        mean, std = _mean_std(values)
        out[name] = {"mean": mean, "std": std, "n": len(values)}
    # Accuracy per object count and per label: mean and std over the seeds, key by key. Labels keep
    # the evaluator's order (objects.json's); counts are sorted.
    for nested in ("acc_by_objects", "acc_per_label"):
        per_key: dict[str, list[float]] = {}
        for m in members:
            per_row = (m.get("metrics") or {}).get(nested)
            for k, v in (per_row if isinstance(per_row, dict) else {}).items():
                if _num(v) is not None:
                    per_key.setdefault(str(k), []).append(float(v))
        items = list(per_key.items())
        if nested == "acc_by_objects":
            items.sort(key=lambda kv: _sort_int(kv[0]))
        if items:
            out[nested] = {
                k: dict(zip(("mean", "std"), _mean_std(v), strict=True)) | {"n": len(v)} for k, v in items
            }
    return out


def _sort_int(text: str) -> tuple[int, str]:
    return (int(text), text) if text.isdigit() else (10**9, text)


# ---------------------------------------------------------------- formatting


def _fmt(value: float | None, digits: int = 3) -> str:
    """``digits`` decimals; a negative ``digits`` means that many significant figures below 1
    (s/image: 0.000397 on an H100 against 0.000383 on an H200, where 4 decimals read 0.0004 twice)."""
    if value is None:
        return ""
    if digits < 0:
        if abs(value) < 1:
            # fixed point, not .g's exponent (4e-05 s/image at 25,000 images/s)
            decimals = -digits - 1 - math.floor(math.log10(abs(value))) if value else 0
            return f"{value:.{decimals}f}"
        digits = 2
    if value == int(value) and abs(value) < 1e6 and digits <= 1:
        return str(int(value))
    return f"{value:.{digits}f}" if abs(value) < 1000 else f"{value:,.0f}"


def mean_pm(stats: dict[str, Any], digits: int = 3) -> str:
    """``0.812 ± 0.013`` over several seeds, ``0.812`` for one (no spread to show)."""
    text = _fmt(stats["mean"], digits)
    return f"{text} ± {_fmt(stats['std'], digits)}" if stats.get("n", 1) > 1 else text


def format_metric(name: str, stats: dict[str, Any], count: int | None = None) -> str:
    """``0.812 ± 0.013 (n=2)`` for accuracy (``0.812 (n=1)`` for one seed); ``12.3 (N=64)`` for
    FID/KID with its sample count."""
    n = stats["n"]
    text = mean_pm(stats, 3 if name.startswith(("acc", "kid")) else 2)
    if name.startswith("acc"):
        return f"{text} (n={n})"
    notes = [f"N={count}"] if count else []
    if n > 1:
        notes.append(f"n={n}")
    return f"{text} ({', '.join(notes)})" if notes else text


SPEED_COLUMNS = (
    ("images_per_s", f"images/s {UP}", 2),
    ("s_per_image", f"s/image {DOWN}", -3),
    ("nfe", f"NFE {DOWN}", 0),
    ("guided_nfe", f"guided NFE {DOWN}", 0),  # shown only beside a guidance interval
    ("peak_memory_mb", f"peak MB {DOWN}", 0),
)


def _tables(records: list[dict[str, Any]], lower: Collection[str] = ()) -> list[Table]:
    tables = []
    by_set: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        by_set.setdefault(str(rec.get("condition_set") or ""), []).append(rec)
    for cond, recs in by_set.items():
        metrics = _quality_metrics(
            {
                "metrics": {
                    k: v["mean"] for k, v in r["metrics"].items() if isinstance(v, dict) and "mean" in v
                }
            }
            for r in recs
        )
        show_ckpt = any(r.get("checkpoint") for r in recs)
        show_guidance = len({str(r.get("guidance")) for r in recs}) > 1 or any(
            _num(r.get("guidance")) not in (None, 1.0) for r in recs
        )
        show_interval = any(id_text(r, "guidance_interval") for r in recs)
        speed_cols = [
            c
            for c in SPEED_COLUMNS
            if any(c[0] in r["speed"] for r in recs) and (c[0] != "guided_nfe" or show_interval)
        ]
        has_error = any(r.get("error") or r.get("metric_errors") for r in recs)
        # The columns that tell rows apart; the by-object-count table repeats them. A model or a
        # checkpoint that every row of a set shares is said once, in the title, not on every row
        # (a checkpoint's path alone was wider than the rest of the table).
        shared = {
            key: values.pop()
            for key in ("model", "checkpoint")
            if cond and len(values := {str(r.get(key) or "") for r in recs}) == 1 and values != {""}
        }
        id_keys = [k for k in ["model"] + (["checkpoint"] if show_ckpt else []) if k not in shared]
        id_keys += [k for k in VARIANT_KEYS if tells_apart(recs, k)]
        id_keys += ["scheduler", "steps"]
        id_keys += ["guidance"] if show_guidance else []
        id_keys += ["guidance_interval"] if show_interval else []
        id_titles = [ID_TITLES.get(key, key) for key in id_keys]
        headers = [*id_titles, "seeds"]
        headers += [title for _, title, _ in speed_cols] + [_metric_title(m, lower) for m in metrics]
        headers += ["error"] if has_error else []
        rows = []
        for r in recs:
            row: list[Any] = [id_cell(r, key) for key in id_keys]
            seeds = [s for s in r.get("seeds", []) if s is not None]
            row.append(",".join(str(s) for s in seeds) if seeds else "")
            row += [_fmt(r["speed"].get(key), digits) for key, _, digits in speed_cols]
            for m in metrics:
                stats = r["metrics"].get(m)
                row.append(format_metric(m, stats, r["metrics"].get(f"{m}_n")) if stats else "")
            if has_error:
                row.append(_short(r.get("error") or "; ".join(r.get("metric_errors") or [])))
            rows.append(row)
        title = f"condition set: {cond}" if cond else "speed (pytest-benchmark)"
        title += "".join(f", {key} {value}" for key, value in shared.items())
        tables.append(Table(title, headers, rows))
        objects = sorted({k for r in recs for k in r["metrics"].get("acc_by_objects", {})}, key=_sort_int)
        if objects:
            heads = id_titles + [f"acc@{k} obj {UP}" for k in objects]
            body = [
                [id_cell(r, key) for key in id_keys] + [mean_pm(by[k]) if k in by else "" for k in objects]
                for r in recs
                if (by := r["metrics"].get("acc_by_objects"))
            ]
            tables.append(Table(f"{title}: accuracy by number of objects", heads, body))
    return tables


def tells_apart(records: Sequence[dict[str, Any]], key: str) -> bool:
    """Whether a VARIANT_KEYS column says something the others do not: its values differ, and for
    the weights, between rows of one checkpoint (other checkpoints' weights differ anyway)."""
    records = [r for r in records if not r.get("error")]  # a failed cell has no speed, so no dtype
    if key != "weights":
        return len({str(r.get(key) or "") for r in records}) > 1
    by_checkpoint: dict[str, set[str]] = {}
    for r in records:
        by_checkpoint.setdefault(str(r.get("checkpoint") or ""), set()).add(str(r.get("weights") or ""))
    return any(len(values) > 1 for values in by_checkpoint.values())


def _short_path(path: str, paths: Sequence[str]) -> str:
    """The fewest trailing parts of ``path`` that no other of ``paths`` ends with
    (``trA/checkpoint`` beside ``trB/checkpoint``, ``a.safetensors`` beside ``b.safetensors``)."""
    parts = Path(path).parts
    for n in range(1, len(parts) + 1):
        tail = parts[-n:]
        if all(Path(p).parts[-n:] != tail for p in paths if p != path):
            return str(Path(*tail))
    return path


def model_labels(records: Sequence[dict[str, Any]]) -> list[str]:
    """What tells each record's model apart from the others', in a few words for a plot legend, a
    heatmap row or a grid caption: the model, the checkpoint's shortest telling path and the
    identity columns that differ (``trA/checkpoint``, ``ckpt weights 82e5707fb780``); ""
    for every record when they share all of them."""
    several_models = len({str(r.get("model") or "") for r in records}) > 1
    checkpoints = list(dict.fromkeys(str(r.get("checkpoint") or "") for r in records))
    keys = [key for key in VARIANT_KEYS if key != "conditions" and tells_apart(records, key)]
    labels = []
    for record in records:
        parts = [str(record.get("model") or "")] if several_models else []
        if len(checkpoints) > 1:
            parts.append(_short_path(str(record.get("checkpoint") or ""), checkpoints))
        parts += [f"{key} {record.get(key) or '-'}" for key in keys]
        labels.append(" ".join(p for p in parts if p))
    return labels


def id_cell(record: dict[str, Any], key: str) -> Any:
    """An identifying cell: the value as in the record (numbers stay numbers), intervals as text."""
    return id_text(record, key) if key == "guidance_interval" else record.get(key, "")


def _interval_label(row: dict[str, Any]) -> str:
    """`` [300-1000]`` for a plot or grid label when the row has a guidance interval, else ``""``."""
    text = id_text(row, "guidance_interval")
    return f" [{text}]" if text else ""


def _points(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One point per config with both accuracy and speed: accuracy against images/s."""
    usable = [
        r for r in records if not r.get("error") and "acc" in r["metrics"] and r["speed"].get("images_per_s")
    ]
    guidances = {str(r.get("guidance")) for r in usable}
    # a series per model and condition set; none when every point shares both
    series_of = [
        f"{who} {r.get('condition_set') or ''}".strip()
        for who, r in zip(model_labels(usable), usable, strict=True)
    ]
    if len(set(series_of)) <= 1:
        series_of = [""] * len(usable)
    points = []
    for r, series in zip(usable, series_of, strict=True):
        label = f"{r['scheduler']}/{r['steps']}"
        if len(guidances) > 1:
            label += f" w={r['guidance']}"
        label += _interval_label(r)
        points.append(
            {
                "x": r["speed"]["images_per_s"],
                "y": r["metrics"]["acc"]["mean"],
                "yerr": r["metrics"]["acc"]["std"],
                "label": label,
                "series": series,
                "scheduler": r.get("scheduler"),
                "steps": r.get("steps"),
                "guidance": r.get("guidance"),
                "guidance_interval": r.get("guidance_interval"),
            }
        )
    return points


# ---------------------------------------------------------------- public API


def label_accuracy(records: list[dict[str, Any]]) -> tuple[list[str], list[str], list[list[float | None]]]:
    """Per-label accuracy, mean over seeds: (one row label per config and condition set, the labels
    in objects.json's order, or as first met when they are not i-CLEVR's, a value or None per row
    and label). Rows without per-label accuracy (no iclevr-acc evaluator, an errored cell) are
    left out."""
    from bench.conditions import load_labels_spec

    usable = [r for r in records if (r.get("metrics") or {}).get("acc_per_label")]
    labels: list[str] = []
    for r in usable:
        labels += [k for k in r["metrics"]["acc_per_label"] if k not in labels]
    known = load_labels_spec()
    if set(labels) <= set(known):  # the i-CLEVR labels: in objects.json's order, whichever set came first
        labels.sort(key=known.index)
    names, values = [], []
    for r, who in zip(usable, model_labels(usable), strict=True):
        name = f"{r.get('scheduler')}/{r.get('steps')} w={r.get('guidance')}{_interval_label(r)}"
        name += f" · {r.get('condition_set') or ''}"
        if who:
            name = f"{who}: {name}"
        per_label = r["metrics"]["acc_per_label"]
        names.append(f"{name.strip(' ·')} · {r['n_seeds']} seed{'s' if r['n_seeds'] != 1 else ''}")
        values.append([per_label[k]["mean"] if k in per_label else None for k in labels])
    return names, labels, values


def speed_bars(records: list[dict[str, Any]]) -> tuple[list[str], list[float]]:
    """One bar per configuration with images/s (a cell's rows of several condition sets share one
    speed, so they make one bar), labelled like the Pareto plot's points and legend."""
    usable = [r for r in records if not r.get("error") and (r.get("speed") or {}).get("images_per_s")]
    guidances = {str(r.get("guidance")) for r in usable}
    bars: dict[str, float] = {}
    for who, r in zip(model_labels(usable), usable, strict=True):
        label = f"{who} {r['scheduler']}/{r['steps']}".strip()
        if len(guidances) > 1:
            label += f" w={r['guidance']}"
        label += _interval_label(r)
        speed = float(r["speed"]["images_per_s"])
        if label in bars and bars[label] != speed:  # one configuration timed apart per condition set
            label += f" {r.get('condition_set') or ''}".rstrip()
        bars.setdefault(label, speed)
    return list(bars), list(bars.values())


PARETO_CAPTION = "accuracy (↑) against images/s (↑); Pareto front ringed"
SPEED_CAPTION = "images/s (↑) of each configuration (no accuracy in these files)"
NOTHING_TO_PLOT = (
    "--plot: no configuration has both accuracy and images/s, nor images/s alone (accuracy comes from "
    "the iclevr-acc evaluator; images/s from bench run or pytest-benchmark)"
)


def plot_bars(report: Report) -> tuple[list[str], list[float]] | None:
    """What ``bench report --plot`` draws: None for accuracy against images/s (the Pareto plot)
    where configurations have both, else the images/s bars (speed files, runs without the judge);
    a ResultsError where there is neither."""
    if report.points:
        return None
    labels, values = speed_bars(report.records)
    if not labels:
        raise ResultsError(NOTHING_TO_PLOT)
    return labels, values


def draw_plot(
    report: Report, out_path: str | Path, bars: tuple[list[str], list[float]] | None
) -> tuple[Path, str]:
    """The plot :func:`plot_bars` chose (``bars``) to ``out_path``; returns the file and a caption."""
    from bench.plotting import bar_chart, scatter_plot

    if bars is None:
        path = scatter_plot(
            report.points,
            out_path,
            title="accuracy against speed",
            xlabel="images/s (higher is better)",
            ylabel="accuracy (higher is better)",
        )
        return path, PARETO_CAPTION
    return bar_chart(*bars, out_path, "speed", "images/s (higher is better)"), SPEED_CAPTION


def draw_label_accuracy(report: Report, out_path: str | Path) -> Path:
    """The per-label accuracy of every config as a heatmap: i-CLEVR labels "<colour> <shape>" are
    grouped by shape, so a colour or a shape that the model misses stands out as a red column."""
    from bench.plotting import heatmap

    names, labels, values = label_accuracy(report.records)
    if not names:
        raise ResultsError(
            "--labels-plot: no per-label accuracy in these files: it comes from the iclevr-acc evaluator "
            "(acc_per_label)"
        )
    split = [label.rsplit(" ", 1) for label in labels]
    if all(len(parts) == 2 for parts in split):  # "<colour> <shape>": group the columns by shape
        shapes = list(dict.fromkeys(parts[1] for parts in split))
        order = sorted(range(len(labels)), key=lambda i: shapes.index(split[i][1]))
        columns = [(split[i][1], split[i][0]) for i in order]
    else:
        order, columns = list(range(len(labels))), [("", label) for label in labels]
    return heatmap(
        names,
        columns,
        [[row[i] for i in order] for row in values],
        out_path,
        "accuracy per label (mean over seeds)",
        note="white: every object of that label found; red: half or fewer; grey: not in the condition set",
    )


def _results_file(path: str | Path) -> Path:
    """A `bench run --out` folder is read as its results.json; a folder without one stays itself."""
    path = Path(path)
    return path / "results.json" if path.is_dir() and (path / "results.json").is_file() else path


def _run_identity(config: dict[str, Any], row: dict[str, Any], environment: dict[str, Any]) -> dict[str, str]:
    """The VARIANT_KEYS of a results row, read off its run's config (files before a field was
    recorded leave it empty): what must match for two seeds to be averaged."""
    meta = config.get("model_meta") or {}
    files = meta.get("files") or {}
    weights = meta.get("weights_sha256") or files.get("ema.safetensors") or files.get("model.safetensors")
    weights = str(weights or "")[:12]
    if not weights and meta.get("step") is not None:
        # files from before the weights' sha256 was recorded: the training step tells models apart
        weights = f"step {meta['step']}"
    metrics = row.get("metrics") or {}
    judged = any(k == "acc" or k.endswith("-judge") for k in metrics)  # the judge scored or featured it
    referenced = any(k.endswith("_ref_n") for k in metrics)  # FID / KID against a reference
    condition_set = str(row.get("condition_set") or "")
    return {
        "weights": weights,
        # random weights' --preset, else the preset the checkpoint's model was built with
        "preset": str(
            row.get("preset") or config.get("preset") or (meta.get("model_config") or {}).get("preset") or ""
        ),
        "dtype": str((row.get("speed") or {}).get("dtype") or ""),
        "judge": str(config.get("judge") or "") if judged else "",
        "ref_n": _reference_text(config) if referenced else "",
        "conditions": str((config.get("condition_sha256") or {}).get(condition_set) or "")[:12],
        "device": _device_name(environment.get("device"), environment.get("gpu")),
        "sampling": _sampling_text(row.get("speed") or {}, config.get("sampling") or {}),
    }


def _reference_text(config: dict[str, Any]) -> str:
    """The FID reference: its size, and its dataset where not the synthetic renders (FID against
    a folder and against renders were averaged as one cell)."""
    text = str(config.get("ref_n") or "")
    data = config.get("data")
    if data and data != "synthetic":
        text += f" {data}" + (f":{config['data_root']}" if config.get("data_root") else "")
    return text


def _device_name(device: Any, gpu: Any = None) -> str:
    """``cpu``, or the GPU's name (``NVIDIA H100 80GB HBM3``) where it is known."""
    kind = str(device or "").split(":")[0]
    return str(gpu) if gpu and kind != "cpu" else kind


def _sampling_text(speed: dict[str, Any], sampling: dict[str, Any]) -> str:
    """How a row's loop ran, in a few words (``b64 cl compile graphs tuned``): two runs that differ
    in it are two speeds. Rows written before a switch was recorded lack it: read as off."""
    # The batch only where the user gave one: sample() picks it per cell otherwise (32, 16 guided
    # on the CPU), and a guidance sweep was split in two by it.
    given = sampling.get("batch_size", speed.get("batch_size"))
    parts = [f"b{speed['batch_size']}"] if speed.get("batch_size") and given else []
    flags = (
        ("cl", sampling.get("channels_last")),
        ("compile", speed.get("compile")),
        ("graphs", speed.get("cuda_graphs")),
        *((word, speed.get(switch)) for switch, word in SPEED_SWITCHES.items()),
    )
    return " ".join(parts + [word for word, on in flags if on])


def load_report(paths: Sequence[str | Path]) -> Report:
    """Read results files (bench or pytest-benchmark JSON) into tables, plot points and images."""
    if not paths:
        raise ResultsError("no results files given; pass one or more files written by `bench run --out`")
    report = Report()
    rows: list[dict[str, Any]] = []
    figures: list[tuple[str, Path, Path]] = []  # name, results file, picture
    lower: set[str] = set()
    seen: dict[Path, Path] = {}
    for raw in paths:
        path = _results_file(raw)
        if path.is_dir():
            raise ResultsError(f"{path} is a folder without a results.json; pass a results file")
        # The same file twice would count each seed twice (n=2 from one run).
        if path.resolve() in seen:
            raise ResultsError(
                f"{path} is given twice ({seen[path.resolve()]} and {path}): each results file counts once"
            )
        seen[path.resolve()] = path
        data = _read(path)
        report.sources.append(path)
        base = path.resolve().parent
        if _is_pytest_benchmark(data):
            rows.extend(dict(row, source=str(path)) for row in _benchmark_rows(data, path))
            report.header.append(_benchmark_header(data, path))
            continue
        report.header.append(_results_header(data, path))
        for name, rel in (data.get("figures") or {}).items():
            figures.append((name, path, (base / rel).resolve()))
        config = data.get("config") or {}
        lower.update(config.get("lower_is_better") or ())  # declared by the run's evaluators
        for row in data.get("rows") or []:
            row = dict(row, source=str(path), **_run_identity(config, row, data.get("environment") or {}))
            if row.get("grid"):
                row["grid"] = str((base / row["grid"]).resolve())
                if row.get("misses"):
                    row["misses"] = str((base / row["misses"]).resolve())
            rows.append(row)
    # The same weights (by sha256) read from two paths (two clones, a copied file) are one model:
    # its first path names it, so its seeds average as one cell rather than split by folder.
    first_path: dict[str, str] = {}
    for row in rows:
        weights = row.get("weights") or ""
        if weights and not weights.startswith("step "):
            row["checkpoint"] = first_path.setdefault(weights, row.get("checkpoint", ""))
    # A figure of each run: named by its run where several runs have one of that name.
    files = [str(source) for _, source, _ in figures]
    for name, source, picture in figures:
        several = sum(n == name for n, _, _ in figures) > 1
        report.figures[f"{name} ({_short_path(str(source), files)})" if several else name] = picture
    # captioned once every file is read: the model named only where models differ
    pictured = [row for row in rows if row.get("grid")]  # a speed file's rows tell no grid apart
    for row, who in zip(pictured, model_labels(pictured), strict=True):
        if row.get("grid"):
            label = f"{who or row.get('model', '')} {row.get('scheduler', '')}/{row.get('steps', '')}"
            label += f" w={row.get('guidance')}{_interval_label(row)}"
            label = " ".join(f"{label} {row.get('condition_set', '')} seed {row.get('seed')}".split())
            report.grids.append((label, Path(row["grid"])))
            if row.get("misses"):
                report.grids.append((f"{label}: images with a miss", Path(row["misses"])))
    report.records = aggregate(rows)
    report.tables = _tables(report.records, lower)
    report.points = _points(report.records)
    return report


def render_report(
    paths: Sequence[str | Path],
    fmt: str = "plain",
    plot: str | Path | None = None,
    out: str | Path | None = None,
    labels_plot: str | Path | None = None,
    select_on: Sequence[str] = (),
) -> str:
    """What ``bench report`` does: load, optionally rank the cells on the ``select_on`` condition
    sets (a table first, bench/selection.py), draw the Pareto plot and the per-label heatmap,
    render, optionally write.

    ``fmt`` is a registered reporter name (plain, github, latex, csv, json, html); an unknown
    one raises RegistryError listing close matches.
    """
    from bench.plugins import BUILTIN_PLUGINS, get

    reporter = get("reporters", fmt)
    _check_outputs(paths, {"--out": out, "--plot": plot, "--labels-plot": labels_plot})
    report = load_report(paths)
    if select_on:
        from bench.selection import select_cell, selection_table

        report.selection = select_cell(report.records, select_on)
        report.tables.insert(0, selection_table(report.selection))
    # What each plot needs is checked before either is drawn: a refused one leaves no file behind.
    bars = plot_bars(report) if plot is not None else None
    if labels_plot is not None:  # before the other plot: a heatmap with no data raises, drawing nothing
        report.labels_plot = draw_label_accuracy(report, labels_plot)
    if plot is not None:
        report.plot, report.plot_caption = draw_plot(report, plot, bars)
    try:
        text = reporter.factory()(report)
    except Exception as error:
        if reporter.plugin in BUILTIN_PLUGINS:
            raise  # bench's own bug: the traceback
        # a plugin's bug: one line naming it
        raise ResultsError(
            f"reporter {fmt!r} (plugin {reporter.plugin!r}) failed: {type(error).__name__}: {error}"
        ) from error
    if not isinstance(text, str):
        raise ResultsError(
            f"reporter {fmt!r} (plugin {reporter.plugin!r}) returned {type(text).__name__}; "
            "a reporter returns the text to print"
        )
    if out is not None:
        from bench.atomic import atomic_write_text

        atomic_write_text(out, text)
    return text


def _check_outputs(paths: Sequence[str | Path], outputs: dict[str, str | Path | None]) -> None:
    """No output onto a results file being read (--out results.json erased the run's results), and
    no two outputs onto one file (the second replaced the first)."""
    inputs = {_results_file(p).resolve() for p in paths}  # a run folder's input is its results.json
    given = {option: Path(path).resolve() for option, path in outputs.items() if path is not None}
    for option, path in given.items():
        if path in inputs:
            raise ResultsError(
                f"{option} {outputs[option]} is one of the files read; write the report elsewhere"
            )
    for (a, path_a), (b, path_b) in itertools.combinations(given.items(), 2):
        if path_a == path_b:
            raise ResultsError(f"{a} and {b} name the same file {outputs[a]}; give each its own")
    for option, path in given.items():
        problem = why_unwritable(path.parent)
        if problem:
            raise ResultsError(f"{option} {outputs[option]}: {problem}; write the report elsewhere")


def _short(message: str, limit: int = 160) -> str:
    """An error cell short enough for a table; results.json keeps the whole message."""
    return message if len(message) <= limit else message[: limit - 1].rstrip() + "…"
