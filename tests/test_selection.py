"""Choosing a cell on validation sets (bench report --select-on, bench/selection.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.cli import main
from bench.report import load_report, render_report
from bench.results import ResultsError, Row, RunResult
from bench.selection import parse_select_on, select_cell

# (steps, guidance) -> accuracy per set, seeds 0 and 1. The validation sets prefer 100 steps at
# guidance 4; test alone would prefer 25 steps at guidance 5.
ACC = {
    (100, 4.0): {"val-a": (0.96, 0.98), "val-b": (0.97, 0.97), "test": (0.90, 0.92)},
    (100, 5.0): {"val-a": (0.95, 0.95), "val-b": (0.96, 0.96), "test": (0.95, 0.95)},
    (25, 5.0): {"val-a": (0.93, 0.93), "val-b": (0.94, 0.94), "test": (0.99, 0.97)},
}


def _rows() -> list[Row]:
    rows = []
    for (steps, guidance), sets in ACC.items():
        for condition_set, accs in sets.items():
            for seed, acc in enumerate(accs):
                rows.append(
                    Row(
                        model="ddpm-unet",
                        scheduler="cosine",
                        steps=steps,
                        seed=seed,
                        condition_set=condition_set,
                        guidance=guidance,
                        checkpoint="ck",
                        metrics={"acc": acc, "acc_n": 32},
                    )
                )
    # A cell scored on one validation set only, and a failed one: neither can be chosen.
    for scheduler, outcome in (("cosine", {"metrics": {"acc": 1.0}}), ("heun", {"error": "out of memory"})):
        rows.append(
            Row(
                model="ddpm-unet",
                scheduler=scheduler,
                steps=10,
                seed=0,
                condition_set="val-a",
                guidance=5.0,
                checkpoint="ck",
                **outcome,
            )
        )
    return rows


@pytest.fixture()
def results_file(tmp_path: Path) -> Path:
    return RunResult(config={}, seeds=[0, 1], rows=_rows()).write(tmp_path / "results.json")


def test_cells_are_ranked_by_mean_accuracy_on_the_selection_sets(results_file: Path) -> None:
    selection = select_cell(load_report([results_file]).records, ["val-a", "val-b"])
    order = [(c.config["steps"], c.config["guidance"]) for c in selection.cells]
    # means: 0.9700, 0.9550, 0.9350; the 10-step cell lacks val-b and goes last, unscored
    assert order == [(100, 4.0), (100, 5.0), (25, 5.0), (10, 5.0)]
    assert selection.chosen is selection.cells[0]
    assert selection.chosen.score == pytest.approx(0.97)
    assert selection.cells[-1].score is None
    assert selection.other_sets == ["test"]
    # test is read off the chosen cell, not used to choose: it is that cell's worst set here
    assert selection.chosen.accuracy["test"]["mean"] == pytest.approx(0.91)
    assert selection.chosen.accuracy["test"]["std"] > 0


def test_one_selection_set_is_enough(results_file: Path) -> None:
    selection = select_cell(load_report([results_file]).records, ["test"])
    assert (selection.chosen.config["steps"], selection.chosen.config["guidance"]) == (25, 5.0)
    assert selection.other_sets == ["val-a", "val-b"]


def test_table_first_with_the_chosen_row_on_top(results_file: Path) -> None:
    text = render_report([results_file], "plain", select_on=["val-a", "val-b"])
    lines = text.splitlines()
    title = next(
        i for i, line in enumerate(lines) if line.startswith("cells ranked by accuracy on val-a + val-b")
    )
    assert title < next(i for i, line in enumerate(lines) if line.startswith("condition set:"))
    header, rule, first, *rest = lines[title + 2 : title + 8]
    assert header.split()[:4] == ["rank", "scheduler", "steps", "guidance"]
    assert "mean ↑" in header and "test acc ↑" in header
    assert first.split()[:4] == ["chosen", "cosine", "100", "4.0"]
    assert "0.9700" in first and "0.910 ± 0.014" in first
    assert rest[-1].split()[0] == "-"  # the cell without val-b


def test_a_tie_for_first_is_said(tmp_path: Path) -> None:
    """Cells that read the same on the selection sets: the first read is marked chosen, the others
    'tie', and the title says the sets cannot tell them apart."""
    rows = [r for r in _rows() if r.condition_set == "val-a" and r.error is None and r.steps != 10]
    for r in rows:
        r.metrics = {"acc": 0.95, "acc_n": 32}
    path = RunResult(config={}, seeds=[0, 1], rows=rows).write(tmp_path / "results.json")
    selection = select_cell(load_report([path]).records, ["val-a"])
    assert selection.tied == 3
    text = render_report([path], "plain", select_on=["val-a"])
    assert "3 cells tie for first, the first read is marked chosen" in text
    ranks = [line.split()[0] for line in text.splitlines() if line.split()[:1] in (["chosen"], ["tie"])]
    assert ranks == ["chosen", "tie", "tie"]
    clear = RunResult(config={}, seeds=[0, 1], rows=_rows()).write(tmp_path / "clear" / "results.json")
    assert select_cell(load_report([clear]).records, ["val-a", "val-b"]).tied == 1
    assert "tie for first" not in render_report([clear], "plain", select_on=["val-a", "val-b"])


def test_unknown_selection_set_says_which_sets_there_are(results_file: Path) -> None:
    with pytest.raises(ResultsError, match=r"cannot choose on val-c: .*they hold: val-a, val-b, test"):
        select_cell(load_report([results_file]).records, ["val-a", "val-c"])


def test_cli_select_on_json_and_error(results_file: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        main, ["report", str(results_file), "--select-on", "val-a,val-b", "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["tables"][0]["rows"][0][0] == "chosen"
    assert doc["selection"]["select_on"] == ["val-a", "val-b"]
    assert doc["selection"]["cells"][0]["config"]["guidance"] == 4.0
    bad = runner.invoke(main, ["report", str(results_file), "--select-on", "validation"])
    assert bad.exit_code != 0
    assert "cannot choose on validation" in bad.output and "Traceback" not in bad.output


def test_parse_select_on() -> None:
    assert parse_select_on(("val-a,val-b", "val-b", " test ")) == ["val-a", "val-b", "test"]
    assert parse_select_on(()) == []


def test_renders_are_a_reference_not_a_candidate(tmp_path: Path) -> None:
    from bench.results import RENDERS_MODEL

    rows = _rows() + [
        Row(model=RENDERS_MODEL, scheduler="synthetic renderer", steps=0, seed=0, condition_set=s,
            metrics={"acc": 1.0})
        for s in ("val-a", "val-b", "test")
    ]  # fmt: skip
    path = RunResult(config={}, seeds=[0, 1], rows=rows).write(tmp_path / "results.json")
    selection = select_cell(load_report([path]).records, ["val-a", "val-b"])
    assert selection.chosen.config["model"] == "ddpm-unet"
    assert all(c.config["model"] != RENDERS_MODEL for c in selection.cells)


def test_csv_carries_each_rows_rank(results_file: Path) -> None:
    import csv
    import io

    text = render_report([results_file], "csv", select_on=["val-a", "val-b"])
    ranks = {
        (r["steps"], r["guidance"], r["condition_set"]): r["selection_rank"]
        for r in csv.DictReader(io.StringIO(text))
    }
    assert ranks[("100", "4.0", "test")] == ranks[("100", "4.0", "val-a")] == "1"
    assert ranks[("25", "5.0", "test")] == "3" and ranks[("10", "5.0", "val-a")] == ""  # unscored: no rank


def test_a_cell_scored_on_fewer_seeds_says_so_and_failed_cells_are_named(tmp_path: Path) -> None:
    """A failed seed leaves its cell a mean over fewer seeds, which may top the ranking by noise
    alone: the seeds column shows it; the failed cell-seeds are named, not silently missing."""
    rows = [r for r in _rows() if not (r.steps == 25 and r.seed == 1 and r.condition_set.startswith("val"))]
    for set_name in ("val-a", "val-b"):  # seed 1 of 25 steps failed on the choice sets
        rows.append(Row(model="ddpm-unet", scheduler="cosine", steps=25, seed=1, condition_set=set_name,
                        guidance=5.0, checkpoint="ck", error="RuntimeError: boom"))  # fmt: skip
    path = RunResult(config={}, seeds=[0, 1], rows=rows).write(tmp_path / "results.json")
    from bench.selection import selection_table

    table = selection_table(select_cell(load_report([path]).records, ["val-a", "val-b"]))
    column = table.headers.index("seeds")
    assert {(r[table.headers.index("steps")], r[column]) for r in table.rows if r[0] != "-"} == {
        (100, 2), (25, 1)
    }  # fmt: skip
    assert table.title.endswith(
        "; 2 failed cell-seed(s) are not ranked (heun/10 g5.0 seed 0, cosine/25 g5.0 seed 1)"
    )


def test_tied_cells_all_rank_first_in_csv(tmp_path: Path) -> None:
    import csv
    import io

    rows = [r for r in _rows() if r.steps != 10]
    for r in rows:
        if r.condition_set.startswith("val"):
            r.metrics = {"acc": 0.95, "acc_n": 32}  # every cell ties on the choice sets
    path = RunResult(config={}, seeds=[0, 1], rows=rows).write(tmp_path / "results.json")
    text = render_report([path], "csv", select_on=["val-a", "val-b"])
    assert {r["selection_rank"] for r in csv.DictReader(io.StringIO(text))} == {"1"}
