"""``bench run --resume``: keep the finished cells of an interrupted (or smaller) run.

``bench run`` writes ``results.json`` after every cell. With ``--resume`` the cells already there
are kept, not sampled again, when they were made by the same configuration on the same machine and
code; the matrix (schedulers, steps, guidance, seeds) may grow, so more seeds can be added to a run.
A cell that failed is sampled again. Anything else refuses, naming what differs, so that one
results file never mixes two machines' speeds or two configurations' images.

Without ``--resume`` a new run replaces the file, and first removes the pictures it names
(``remove_replaced_outputs``), so that no grid of a cell the new run does not have is left beside
the new ones."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from bench.results import SPEED_SWITCHES, ResultsError, Row, load_results

CellKey = tuple[str, int, float, int]  # scheduler, steps, guidance, seed

# What may differ between the run that wrote the file and the one resuming it: the matrix (each
# row names its own cell), where the folder was named from, and what no row depends on.
_FREE_KEYS = frozenset(
    {"schedulers", "steps", "seeds", "guidance", "guidance_from", "resume", "out_dir", "denoising_figure"}
    # The sampling switches and the device as typed: what they resolve to is compared instead (the
    # config's `sampling`, the environment's device), so `--device cpu` resumes a run of `auto`
    # on a CPU, and `--dtype bf16` one of the default where bf16 is the default.
    | {"device", "dtype", "channels_last", "compile", "cuda_graphs"}
    | set(SPEED_SWITCHES)
)
# What decides the speed and the images besides the configuration.
_ENVIRONMENT_KEYS = ("device", "gpu", "gpu_count", "cpu_threads", "libraries", "plugins")


class ResumeError(Exception):
    """The results file in --out was not written by this configuration, machine or code."""


def cell_key(row: dict[str, Any]) -> CellKey:
    return (row["scheduler"], int(row["steps"]), float(row["guidance"]), int(row["seed"]))


def _as_json(value: Any) -> Any:
    """Compare as the file stores it (tuples become lists)."""
    return json.loads(json.dumps(value, default=str))


def _differences(old: dict[str, Any], new: dict[str, Any], keys: Iterable[str]) -> list[str]:
    """Each key whose value differs, with both values (a nested one only where it changed)."""

    def shown(value: Any) -> str:
        text = json.dumps(value, default=str)
        return text if len(text) <= 60 else text[:57] + "..."

    out = []
    for key in sorted(k for k in keys if old.get(k) != new.get(k)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [
                f"{key}.{k}: {shown(a.get(k))} -> {shown(b.get(k))}"
                for k in sorted(set(a) | set(b))
                if a.get(k) != b.get(k)
            ]
        else:
            out.append(f"{key}: {shown(a)} -> {shown(b)}")
    return out


def finished_cells(
    path: Path,
    config: dict[str, Any],
    environment: dict[str, Any],
    cells: list[CellKey],
    set_names: list[str],
    scheduler_name: Callable[[str], str] = str,
) -> dict[CellKey, list[Row]]:
    """The rows of every cell of ``cells`` that ``path`` holds finished (a row for each condition
    set, none with an error); {} when there is no file. Raises ResumeError when the file's run
    differs from this one in anything but its matrix, or holds cells this matrix leaves out.
    ``scheduler_name`` gives a row's scheduler the name ``cells`` use (the registered one); kept
    rows carry that name."""
    if not path.exists():
        return {}
    try:
        old = load_results(path)
    except ResultsError as error:
        raise ResumeError(f"--resume: {error}; use another --out") from None
    old_config, new_config = old.get("config", {}), _as_json(config)
    differs = _differences(old_config, new_config, (set(old_config) | set(new_config)) - _FREE_KEYS)
    old_env, new_env = old.get("environment", {}), _as_json(environment)
    for env in (old_env, new_env):  # each process of a launch has its own cuda:N; the kind counts
        env["device"] = str(env.get("device", "")).split(":")[0]
        env.setdefault("plugins", {})  # a file from before plugins were recorded: none besides bench's
    # Files before session 22 recorded every loaded plugin: only those this run uses count.
    old_env["plugins"] = {k: v for k, v in old_env["plugins"].items() if k in new_env["plugins"]}
    differs += [f"environment.{k}" for k in _differences(old_env, new_env, _ENVIRONMENT_KEYS)]
    revisions = [(env.get("git") or {}).get("revision") for env in (old_env, new_env)]
    if revisions[0] != revisions[1]:
        differs.append(f"environment.git.revision: {revisions[0]} -> {revisions[1]}")
    if differs:
        raise ResumeError(
            f"--resume: {path} was written by another configuration or machine "
            f"({'; '.join(differs)}); run without --resume to start over, or use another --out"
        )
    by_cell: dict[CellKey, list[dict[str, Any]]] = {}
    for row in old.get("rows", []):
        # A file written before bench run recorded registered names may hold an alias: same cell.
        row = {**row, "scheduler": scheduler_name(row["scheduler"])}
        by_cell.setdefault(cell_key(row), []).append(row)
    outside = sorted(set(by_cell) - set(cells))
    if outside:
        shown = ", ".join(f"{s} {n} steps g{g:g} seed {seed}" for s, n, g, seed in outside[:4])
        raise ResumeError(
            f"--resume: {path} holds {len(outside)} cell(s) this matrix leaves out ({shown}"
            f"{' ...' if len(outside) > 4 else ''}); add them to the matrix or use another --out"
        )
    return {
        key: [Row(**r) for r in rows]  # the same code wrote them (its git revision was compared)
        for key, rows in by_cell.items()
        if sorted(r["condition_set"] for r in rows) == sorted(set_names)
        and all(r.get("error") is None for r in rows)
    }


# Where a replaced run's results.json goes, with its images deleted: its numbers are kept, and a
# run interrupted before its first cell leaves no results.json naming images that are gone (which
# --resume then took for finished cells).
REPLACED_RESULTS = "results.replaced.json"


def remove_replaced_outputs(out_dir: Path) -> int:
    """Delete what the results.json in ``out_dir`` says its run wrote: each row's images (the
    numbered PNGs of its folder), grid and misses sheet, and the figures; then move the file
    itself to ``REPLACED_RESULTS``. Only paths inside ``out_dir``, nothing the file does not name;
    folders left empty go too. A file that cannot be read removes nothing and stays. Returns how
    many files were deleted."""
    out_dir = out_dir.resolve()
    try:
        old = load_results(out_dir / "results.json")
    except ResultsError:
        return 0
    os.replace(out_dir / "results.json", out_dir / REPLACED_RESULTS)
    named: set[Path] = set()
    folders: set[Path] = set()
    for row in old.get("rows", []):
        for key in ("grid", "misses"):
            if isinstance(row.get(key), str):
                named.add(out_dir / row[key])
        if isinstance(row.get("images_dir"), str):
            folder = out_dir / row["images_dir"]
            folders.add(folder)
            if folder.is_dir():
                named.update(p for p in folder.glob("*.png") if p.stem.isdigit())
    figures = old.get("figures")
    if isinstance(figures, dict):
        named.update(out_dir / f for f in figures.values() if isinstance(f, str))

    def inside(path: Path) -> bool:
        return path.is_relative_to(out_dir) and path != out_dir

    removed = 0
    for path in {p.resolve() for p in named}:
        if inside(path) and path.is_file():
            path.unlink()
            removed += 1
    # Then the folders this left empty, deepest first, up to (not including) out_dir.
    parents = {p for f in folders | named for p in [f.resolve(), *f.resolve().parents] if inside(p)}
    for folder in sorted(parents, key=lambda p: len(p.parts), reverse=True):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    return removed
