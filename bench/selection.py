"""Choosing a cell on validation sets: rank every sampling config by its mean accuracy on the
condition sets named for the choice, and read the others (test, new_test) off the chosen one.

A cell is a config without its condition set (model, checkpoint, preset, dtype, scheduler, steps,
guidance, interval); ``bench run`` scores each cell on every ``--conditions`` set. Choosing the guidance or
step count on test itself flatters the number reported on test; choosing on sets written for the
purpose (``bench data conditions``) does not. Works on ``bench report``'s aggregated records.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.report import CONFIG_KEYS, UP, VARIANT_KEYS, Table, id_cell, id_text, mean_pm, tells_apart
from bench.results import RENDERS_MODEL, ResultsError

# The condition set and the hash of its content belong to the set, not to the cell.
# A cell is what was sampled and judged: not the condition set, and not what cannot change its
# accuracy (the FID reference's size, how the loop was batched or compiled, the device). Left in,
# validation scored with iclevr-acc alone and test with fid too were two cells: the test accuracy
# went missing from the chosen row.
CELL_KEYS = tuple(
    k for k in CONFIG_KEYS if k not in ("condition_set", "conditions", "ref_n", "sampling", "device")
)


def cell_key(record: dict[str, Any]) -> tuple:
    """What identifies a record's cell: its config without the condition set, as shown."""
    return tuple(id_text(record, k) for k in CELL_KEYS)


@dataclass
class RankedCell:
    """One cell: its config, its mean accuracy on the selection sets, and its accuracy per set."""

    config: dict[str, Any]
    score: float | None  # None: not scored on every selection set, so ranked last
    accuracy: dict[str, dict[str, Any]] = field(default_factory=dict)  # set -> {"mean", "std", "n"}


@dataclass
class Selection:
    select_on: list[str]
    other_sets: list[str]
    cells: list[RankedCell]  # best first
    failed: list[str] = field(default_factory=list)  # the failed cell-seeds, which rank nowhere

    @property
    def chosen(self) -> RankedCell | None:
        return self.cells[0] if self.cells and self.cells[0].score is not None else None

    @property
    def tied(self) -> int:
        """How many cells share the chosen one's score (1: a clear choice; 0: none scored)."""
        best = self.chosen
        if best is None or best.score is None:
            return 0
        return sum(1 for c in self.cells if c.score is not None and abs(c.score - best.score) < 1e-12)


def parse_select_on(values: Sequence[str]) -> list[str]:
    """``("val-101,val-102",)`` or ``("val-101", "val-102")`` -> ``["val-101", "val-102"]``."""
    names: list[str] = []
    for value in values:
        for name in str(value).split(","):
            if name.strip() and name.strip() not in names:
                names.append(name.strip())
    if values and not names:  # --select-on '' ranked nothing without a word
        raise ResultsError(
            f"--select-on {','.join(values)!r} names no condition set (e.g. val-101,val-102-shared)"
        )
    return names


def select_cell(records: list[dict[str, Any]], select_on: Sequence[str]) -> Selection:
    """Rank the cells of ``records`` by mean pooled accuracy over the ``select_on`` sets.

    Raises ResultsError when a selection set is not in the records, or when no cell has accuracy.
    """
    select_on = list(select_on)
    if not select_on:
        raise ResultsError("name one or more condition sets to choose on (e.g. val-101,val-102-shared)")
    # Renders (`bench data ceiling`) are what a perfect generator would score: a reference, not a cell.
    scored = [
        r
        for r in records
        if not r.get("error") and "acc" in (r.get("metrics") or {}) and r.get("model") != RENDERS_MODEL
    ]
    present = list(dict.fromkeys(str(r.get("condition_set") or "") for r in scored))
    missing = [s for s in select_on if s not in present]
    if missing:
        held = ", ".join(s for s in present if s) or "none with accuracy"
        raise ResultsError(
            f"cannot choose on {', '.join(missing)}: no accuracy on such a condition set in these "
            f"results (they hold: {held}); name sets as `bench run` did (the file names without .json)"
        )
    cells: dict[tuple, RankedCell] = {}
    for rec in scored:
        cell = cells.setdefault(cell_key(rec), RankedCell({k: rec.get(k, "") for k in CELL_KEYS}, None))
        name = str(rec.get("condition_set") or "")
        if name in cell.accuracy:
            # Two files called val_a with other conditions (or one set judged twice): one silently
            # replaced the other's accuracy in the score.
            raise ResultsError(
                f"--select-on: the cell {_describe(cell.config)} has two results for condition set {name!r} "
                "(two files of that name with other conditions, or the same cell run twice on another "
                "device or batch size); rename one set's file, or report the runs apart"
            )
        cell.accuracy[name] = rec["metrics"]["acc"]
    for cell in cells.values():
        if all(s in cell.accuracy for s in select_on):
            cell.score = statistics.fmean(cell.accuracy[s]["mean"] for s in select_on)
    # Best first; unscored cells last; ties keep the files' order (sorted() is stable).
    ranked = sorted(cells.values(), key=lambda c: (c.score is None, -(c.score or 0.0)))
    others = [s for s in present if s not in select_on]
    failed = [
        f"{r.get('scheduler')}/{r.get('steps')} g{r.get('guidance')} seed {(r.get('seeds') or ['?'])[0]}"
        for r in records
        if r.get("error") and r.get("condition_set") in select_on
    ]
    return Selection(select_on, others, ranked, list(dict.fromkeys(failed)))


def selection_table(selection: Selection) -> Table:
    """The ranking as a table: the chosen cell first, then the rest, each set's accuracy beside it."""
    cells = selection.cells
    # Identify cells by what differs between them (a shared model or checkpoint goes to the title).
    shared = {
        k: values.pop()
        for k in ("model", "checkpoint")
        if len(values := {str(c.config.get(k) or "") for c in cells}) == 1
    }
    id_keys = [k for k in CELL_KEYS if k not in shared]
    id_keys = [k for k in id_keys if k not in VARIANT_KEYS or tells_apart([c.config for c in cells], k)]
    if not any(id_text(c.config, "guidance_interval") for c in cells):
        id_keys.remove("guidance_interval")
    names = " + ".join(selection.select_on)
    # Seeds scored on the choice sets, shown where cells differ in them: a mean over fewer seeds
    # (a failed seed) is noisier, and may top the ranking by that alone.
    seeds = [
        min((c.accuracy[s].get("n") or 0 for s in selection.select_on if s in c.accuracy), default=0)
        for c in cells
    ]
    show_seeds = len({n for n, c in zip(seeds, cells, strict=True) if c.score is not None}) > 1
    headers = ["rank", *id_keys, *(["seeds"] if show_seeds else [])]
    headers += [f"{s} acc {UP}" for s in selection.select_on]
    headers += [f"mean {UP}"] if len(selection.select_on) > 1 else []
    headers += [f"{s} acc {UP}" for s in selection.other_sets]
    rows = []
    for i, cell in enumerate(cells, 1):
        rank = (
            ("chosen" if i == 1 else "tie" if i <= selection.tied else str(i))
            if cell.score is not None
            else "-"
        )
        row: list[Any] = [rank, *(id_cell(cell.config, k) for k in id_keys)]
        row += [seeds[i - 1]] if show_seeds else []
        row += [mean_pm(cell.accuracy[s]) if s in cell.accuracy else "" for s in selection.select_on]
        if len(selection.select_on) > 1:
            row.append(f"{cell.score:.4f}" if cell.score is not None else "")
        row += [mean_pm(cell.accuracy[s]) if s in cell.accuracy else "" for s in selection.other_sets]
        rows.append(row)
    title = f"cells ranked by accuracy on {names}"
    if selection.other_sets:
        title += " (chosen on these alone; the other sets are only read)"
    if selection.tied > 1:
        title += f"; {selection.tied} cells tie for first, the first read is marked chosen: the sets cannot tell them apart"
    title += "".join(f", {k} {v}" for k, v in shared.items() if v)
    if selection.failed:
        shown = ", ".join(selection.failed[:4]) + (" ..." if len(selection.failed) > 4 else "")
        title += f"; {len(selection.failed)} failed cell-seed(s) are not ranked ({shown})"
    return Table(title, headers, rows)


def _describe(config: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in config.items() if v not in ("", None))
