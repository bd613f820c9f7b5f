"""bench.report: tables from results files, aggregation over seeds, every reporter format."""

from __future__ import annotations

import base64
import csv
import io
import json
import statistics
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from bench.plugins import get
from bench.report import label_accuracy, load_report, render_report
from bench.results import ResultsError, Row, RunResult
from bench.selection import select_cell, selection_table

ENV = {
    "python": "3.11.9",
    "device": "cuda",
    "gpu": "NVIDIA H100",
    "cuda": "12.4",
    "git": {"revision": "0123456789abcdef", "dirty": True},
    "libraries": {"bench": "0.1.0", "torch": "2.4.0", "diffusers": "0.30.0"},
}
NO_VALUE = (228, 228, 236)  # the heatmap's cell where a condition set has no object of a label
ACC = {("ddim", 0): 0.50, ("ddim", 1): 0.60, ("cosine", 0): 0.80, ("cosine", 1): 0.84}


def _row(scheduler: str, steps: int, seed: int, images_per_s: float, **extra) -> Row:
    return Row(
        model="ddpm-unet",
        scheduler=scheduler,
        steps=steps,
        seed=seed,
        condition_set="test",
        checkpoint="shipped",
        n_images=32,
        speed={
            "images_per_s": images_per_s,
            "s_per_image": 1 / images_per_s,
            "nfe": steps,
            "peak_memory_mb": 1000 + seed,
            "batch_size": 32,
            "dtype": "bf16",
            "device": "cuda",
        },
        metrics={
            "acc": ACC[(scheduler, seed)],
            "acc_n": 32,
            "acc_by_objects": {"1": 0.9, "2": 0.7},
            # in the evaluator's order, which need not be objects.json's
            "acc_per_label": {"blue sphere": 1.0, "red cube": 1.0 if seed == 0 else 0.5, "gray cube": 0.75},
            "fid-judge": 20.0 + seed,
            "fid-judge_n": 32,
            "fid-judge_ref_n": 500,
            "kid-judge": 0.01,
        },
        grid=f"grids/{scheduler}-{seed}.png",
        **extra,
    )


def _minimal_row(condition_set: str, metrics: dict) -> Row:
    return Row(
        model="m",
        scheduler="ddim",
        steps=2,
        seed=0,
        condition_set=condition_set,
        checkpoint="c",
        metrics=metrics,
    )


def _one_seed_file(tmp_path: Path, rows: list[Row]) -> Path:
    """A results.json of seed 0 holding ``rows``."""
    return RunResult(config={}, seeds=[0], rows=rows, environment=ENV).write(tmp_path / "results.json")


@pytest.fixture()
def results_file(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    (run / "grids").mkdir(parents=True)
    for name in ("ddim-0", "ddim-1", "cosine-0", "cosine-1"):
        Image.new("RGB", (64, 16), (200, 30, 30)).save(run / "grids" / f"{name}.png")
    Image.new("RGB", (40, 30), "blue").save(run / "denoising.png")
    rows = [
        _row("ddim", 10, 0, 100.0),
        _row("ddim", 10, 1, 110.0),
        _row("cosine", 50, 0, 20.0),
        _row("cosine", 50, 1, 22.0),
        Row(
            model="ddpm-unet",
            scheduler="heun",
            steps=5,
            seed=0,
            condition_set="test",
            checkpoint="shipped",
            error="CUDA out of memory: tried to allocate 2.00 GiB",
        ),
    ]
    result = RunResult(
        config={"model": "ddpm-unet"},
        seeds=[0, 1],
        rows=rows,
        figures={"denoising": "denoising.png"},
        environment=ENV,
    )
    return result.write(run / "results.json")


@pytest.fixture()
def benchmark_file(tmp_path: Path) -> Path:
    doc = {
        "machine_info": {"python_version": "3.11.9", "cpu": {"brand_raw": "AMD EPYC"}},
        "commit_info": {"id": "fedcba9876543210", "dirty": False},
        "version": "4.0.0",
        "benchmarks": [
            {
                "name": "test_sampling[euler]",
                "fullname": "benchmarks/test_speed.py::test_sampling[euler]",
                "params": {"scheduler": "euler"},
                "stats": {"median": 0.5, "mean": 0.55, "rounds": 5},
                "extra_info": {
                    "batch_size": 8,
                    "nfe": 20,
                    "steps": 20,
                    "model": "ddpm-unet",
                    "dtype": "bf16",
                },
            },
            {
                "name": "test_unet_forward",
                "fullname": "benchmarks/test_speed.py::test_unet_forward",
                "params": None,
                "stats": {"median": 0.01, "rounds": 100},
                "extra_info": {"images_per_s": 640.0, "device": "cpu"},
            },
        ],
    }
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(doc))
    return path


def _table(report, title_part: str):
    return next(t for t in report.tables if title_part in t.title)


def test_grouping_and_mean_std_over_seeds(results_file: Path) -> None:
    report = load_report([results_file])
    table = _table(report, "condition set: test")
    assert len(table.rows) == 3  # ddim, cosine, and the errored heun row
    acc_col = table.headers.index("acc ↑")
    ddim = next(r for r in table.rows if r[table.headers.index("scheduler")] == "ddim")
    std = statistics.stdev([0.5, 0.6])
    assert ddim[acc_col] == f"0.550 ± {std:.3f} (n=2)"
    # images over time: 1 / mean(1/100, 1/110) s per image, not the mean of the two rates (105)
    assert (
        ddim[table.headers.index("images/s ↑")]
        == f"{1 / statistics.fmean([1 / 100, 1 / 110]):.2f}"
        == "104.76"
    )
    # three significant figures, not 4 decimals: 0.00955, where 0.0095 hid H100 from H200 timings
    assert ddim[table.headers.index("s/image ↓")] == f"{1 / 104.76:.3g}" == "0.00955"
    assert ddim[table.headers.index("seeds")] == "0,1"
    fid = ddim[table.headers.index("FID-judge ↓")]
    assert fid.startswith("20.50 ± 0.71") and "N=32" in fid
    record = next(r for r in report.records if r["scheduler"] == "ddim")
    assert record["metrics"]["acc"]["mean"] == pytest.approx(0.55)
    assert record["metrics"]["acc"]["std"] == pytest.approx(std)
    assert record["speed"]["peak_memory_mb"] == 1001  # the worst seed


def test_arrows_in_headers(results_file: Path) -> None:
    headers = _table(load_report([results_file]), "condition set: test").headers
    for column in ("images/s ↑", "s/image ↓", "NFE ↓", "peak MB ↓", "acc ↑", "FID-judge ↓", "KID-judge ↓"):
        assert column in headers


def test_error_row_is_shown(results_file: Path) -> None:
    table = _table(load_report([results_file]), "condition set: test")
    heun = next(r for r in table.rows if "heun" in r)
    assert heun[table.headers.index("error")].startswith("CUDA out of memory")
    assert heun[table.headers.index("acc ↑")] == ""


def test_config_header_and_images(results_file: Path) -> None:
    report = load_report([results_file])
    header = report.header[0]
    for part in ("NVIDIA H100", "0123456789", "dirty", "torch 2.4.0", "diffusers 0.30.0"):
        assert part in header
    assert header.startswith(f"{results_file} (")  # the path as given: files of one name tell apart
    assert report.figures["denoising"] == (results_file.parent / "denoising.png").resolve()
    assert len(report.grids) == 4 and all(p.is_file() for _, p in report.grids)
    assert {p["label"] for p in report.points} == {"ddim/10", "cosine/50"}


def test_accuracy_by_objects_table(results_file: Path) -> None:
    report = load_report([results_file])
    table = _table(report, "by number of objects")
    assert table.headers[-2:] == ["acc@1 obj ↑", "acc@2 obj ↑"]
    # Its rows carry the main table's identifying columns (guidance too, when it varies).
    main = _table(report, "condition set: test")
    ids = table.headers[:-2]
    assert ids == main.headers[: len(ids)] and "steps" in ids
    keyed = [tuple(r[: len(ids)]) for r in table.rows]
    assert keyed == [tuple(r[: len(ids)]) for r in main.rows if r[main.headers.index("acc ↑")]]


def test_pytest_benchmark_rows(benchmark_file: Path) -> None:
    report = load_report([benchmark_file])
    table = _table(report, "pytest-benchmark")
    rows = {r[table.headers.index("scheduler")]: r for r in table.rows}
    assert rows["euler"][table.headers.index("images/s ↑")] == "16.00"  # batch 8 / median 0.5 s
    assert rows["euler"][table.headers.index("NFE ↓")] == "20"
    assert rows["test_unet_forward"][table.headers.index("images/s ↑")] == "640.00"
    assert "AMD EPYC" in report.header[0] and "fedcba9876" in report.header[0]


def test_a_benchmark_without_any_timing_is_named_not_shown_blank(benchmark_file: Path) -> None:
    doc = json.loads(benchmark_file.read_text())
    del doc["benchmarks"][0]["stats"]  # a truncated or hand-edited file
    benchmark_file.write_text(json.dumps(doc))
    with pytest.raises(
        ResultsError, match=r"bench.json: benchmarks/test_speed.py::test_sampling\[euler\] has no timing"
    ):
        load_report([benchmark_file])


def test_benchmark_header_names_the_device_the_benchmarks_ran_on(benchmark_file: Path) -> None:
    # The machine info names only the host's CPU: a GPU benchmark read as a CPU one.
    assert "device: cpu, cpu: AMD EPYC" in load_report([benchmark_file]).header[0]


def test_mixed_files(results_file: Path, benchmark_file: Path) -> None:
    report = load_report([results_file, benchmark_file])
    assert len(report.header) == 2
    assert any("pytest-benchmark" in t.title for t in report.tables)


def test_the_same_file_twice_is_refused(results_file: Path) -> None:
    with pytest.raises(ResultsError, match=r"is given twice"):
        load_report([results_file, results_file.parent / ".." / "run" / "results.json"])
    with pytest.raises(ResultsError, match=r"is given twice"):
        load_report([results_file, results_file])


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["rows"].__setitem__(0, None), r"row 0 is null, expected an object"),
        (lambda d: d["rows"][1].pop("scheduler"), r"row 1 has no scheduler"),
        (
            lambda d: d.__setitem__("schema", "bench.results/99"),
            r"schema 'bench.results/99'; this bench reads",
        ),
        (lambda d: d["rows"][0].__setitem__("metrics", "acc=1"), r"row 0's 'metrics' is a str"),
        (lambda d: d.__setitem__("rows", {"0": {}}), r"'rows' is a dict"),
    ],
)
def test_a_malformed_results_file_is_one_line_naming_what_is_wrong(
    results_file: Path, tmp_path: Path, edit, message
) -> None:
    """A file edited by hand was an AttributeError from the aggregation, or lost a row silently."""
    data = json.loads(results_file.read_text())
    edit(data)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(ResultsError, match=message):
        load_report([bad])


def test_a_per_label_metric_that_is_no_mapping_is_left_out(results_file: Path, tmp_path: Path) -> None:
    data = json.loads(results_file.read_text())
    data["rows"][0]["metrics"]["acc_per_label"] = "red cube: 1.0"
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(data))
    first = data["rows"][0]
    record = next(
        r
        for r in load_report([edited]).records
        if (r["scheduler"], r["steps"], r["condition_set"])
        == (first["scheduler"], first["steps"], first["condition_set"])
    )
    # the other seeds' labels are kept, from one row fewer
    assert {v["n"] for v in record["metrics"]["acc_per_label"].values()} == {record["n_seeds"] - 1}


def test_one_seed_twice_in_a_cell_is_refused(results_file: Path, tmp_path: Path) -> None:
    # A copied results file (or runs that differ only in what a row does not name) merged as n=4.
    copy = tmp_path / "copy" / "results.json"
    copy.parent.mkdir()
    copy.write_bytes(results_file.read_bytes())
    with pytest.raises(
        ResultsError,
        match=r"seed 0 of ddim/10 .* appears twice, in .*run/results.json and .*copy/results.json",
    ):
        load_report([results_file, copy])


def test_outputs_never_replace_an_input_or_each_other(results_file: Path, tmp_path: Path) -> None:
    before = results_file.read_bytes()
    with pytest.raises(ResultsError, match=r"--out .*results.json is one of the files read"):
        render_report([results_file], "json", out=results_file)
    assert results_file.read_bytes() == before
    same = tmp_path / "p.png"
    with pytest.raises(ResultsError, match=r"--plot and --labels-plot name the same file"):
        render_report([results_file], "plain", plot=same, labels_plot=same)
    assert not same.exists()


def test_an_output_onto_the_results_file_of_a_run_folder_read_is_refused(results_file: Path) -> None:
    before = results_file.read_bytes()
    for option in ("out", "plot"):
        with pytest.raises(ResultsError, match=r"is one of the files read"):
            render_report([results_file.parent], "json", **{option: results_file})
    assert results_file.read_bytes() == before


def test_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text('{"hello": 1}')
    with pytest.raises(ResultsError, match="neither"):
        load_report([bad])
    with pytest.raises(ResultsError, match="does not exist"):
        load_report([tmp_path / "missing.json"])


@pytest.mark.parametrize("fmt", ["plain", "github", "latex", "csv", "json", "html"])
def test_every_format_renders(results_file: Path, benchmark_file: Path, fmt: str) -> None:
    text = get("reporters", fmt).factory()(load_report([results_file, benchmark_file]))
    assert "ddim" in text and "cosine" in text and "CUDA out of memory" in text


def test_plain_is_tabulate_simple(results_file: Path) -> None:
    text = render_report([results_file], "plain")
    assert "acc ↑" in text and "---" in text
    assert "0.550 ± 0.071 (n=2)" in text


def test_github_markdown(results_file: Path) -> None:
    text = render_report([results_file], "github")
    assert "### condition set: test, model ddpm-unet, checkpoint shipped" in text and "FID-judge ↓" in text
    assert "| ddim " in text and "| ddpm-unet" not in text  # said once in the title, not on every row


def test_a_model_or_checkpoint_that_differs_between_rows_keeps_its_column(tmp_path: Path) -> None:
    rows = [_row("ddim", 10, 0, 100.0), _row("ddim", 10, 0, 100.0)]
    rows[1].checkpoint = "other"
    path = _one_seed_file(tmp_path, rows)
    table = _table(load_report([path]), "condition set: test")
    assert table.title == "condition set: test, model ddpm-unet"
    assert table.headers[:2] == ["checkpoint", "scheduler"] and [r[0] for r in table.rows] == [
        "shipped",
        "other",
    ]


def test_runs_that_differ_in_dtype_or_preset_are_separate_rows_with_that_column(tmp_path: Path) -> None:
    """Seeds 0 and 1 of a bf16 and an fp32 run (or of two random-weight presets) are two cells, not
    one mean over n=2; the column that tells them apart appears only when it differs."""

    def run(name: str, seed: int, dtype: str, preset: str | None) -> Path:
        row = _row("ddim", 10, seed, 100.0)
        row.speed["dtype"] = dtype
        result = RunResult(config={"preset": preset}, seeds=[seed], rows=[row], environment=ENV)
        return result.write(tmp_path / name / "results.json")

    bf16, fp32 = run("bf16", 0, "bf16", None), run("fp32", 1, "fp32", None)
    table = _table(load_report([bf16, fp32]), "condition set: test")
    assert table.headers[:2] == ["dtype", "scheduler"]
    assert [(r[0], r[table.headers.index("seeds")]) for r in table.rows] == [("bf16", "0"), ("fp32", "1")]
    same = run("bf16-seed1", 1, "bf16", None)
    table = _table(load_report([bf16, same]), "condition set: test")
    assert "dtype" not in table.headers and [r[table.headers.index("seeds")] for r in table.rows] == ["0,1"]
    tiny, small = run("tiny", 0, "bf16", "tiny"), run("small", 1, "bf16", "small")
    report = load_report([tiny, small])
    assert _table(report, "condition set: test").headers[0] == "preset"
    ranked = select_cell(report.records, ["test"])
    assert [c.config["preset"] for c in ranked.cells] == ["small", "tiny"]  # acc 0.60 over 0.50
    assert selection_table(ranked).headers[:3] == ["rank", "preset", "scheduler"]


def test_a_trained_checkpoints_preset_fills_the_preset_column(tmp_path: Path) -> None:
    """Only random weights' --preset was read: two checkpoints of two presets showed it blank."""

    def run(name: str, preset: str, sha: str) -> Path:
        meta = {"model_config": {"preset": preset}, "weights_sha256": sha}
        result = RunResult(
            config={"model_meta": meta}, seeds=[0], rows=[_row("ddim", 10, 0, 100.0)], environment=ENV
        )
        return result.write(tmp_path / name / "results.json")

    table = _table(
        load_report([run("a", "tiny", "a" * 64), run("b", "small", "b" * 64)]), "condition set: test"
    )
    assert table.headers[:2] == ["weights", "preset"] and [r[1] for r in table.rows] == ["tiny", "small"]


def test_seeds_of_other_weights_references_or_condition_contents_are_not_averaged(tmp_path: Path) -> None:
    """Two models saved under one path, FID against 50 and against 500 renders, two files called
    test.json with other conditions: each pair is two rows, the column that differs shown."""

    def run(
        name: str, seed: int, weights: str = "a" * 64, ref_n: int = 50, conditions: str = "c" * 64
    ) -> Path:
        rows = [_row("ddim", 10, seed, 100.0), _row("ddim", 10, seed, 100.0)]
        rows[1].condition_set = "val"
        config = {
            "model_meta": {"weights_sha256": weights},
            "ref_n": ref_n,
            "condition_sha256": {"test": conditions, "val": "v" * 64},
        }
        return RunResult(config=config, seeds=[seed], rows=rows, environment=ENV).write(
            tmp_path / name / "results.json"
        )

    base = run("base", 0)
    cases = {"weights": run("retrained", 1, weights="b" * 64), "ref_n": run("ref500", 1, ref_n=500)}
    cases["conditions"] = run("other-test", 1, conditions="d" * 64)
    for column, other in cases.items():
        table = _table(load_report([base, other]), "condition set: test")
        assert table.headers[0] == column, (column, table.headers)
        assert [r[table.headers.index("seeds")] for r in table.rows] == ["0", "1"]
    # the same weights, reference and conditions: one row over both seeds, no extra column
    table = _table(load_report([base, run("seed1", 1)]), "condition set: test")
    assert table.headers[0] == "scheduler" and [r[table.headers.index("seeds")] for r in table.rows] == [
        "0,1"
    ]
    # a cell is scored on sets of different contents: still one cell per config in the ranking
    ranked = select_cell(load_report([base]).records, ["val"])
    assert len(ranked.cells) == 1 and set(ranked.cells[0].accuracy) == {"test", "val"}


def test_plot_heatmap_and_captions_name_the_model_where_models_differ(tmp_path: Path) -> None:
    """Two exports in one folder, and one path holding two trainings: the legend, the heatmap rows
    and the grid captions say which model is which (the folder's name alone said ``ex`` twice)."""
    from bench.report import model_labels

    def run(name: str, checkpoint: str, weights: str) -> Path:
        folder = tmp_path / name
        (folder / "grids").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(folder / "grids" / "ddim-0.png")
        row = _row("ddim", 10, 0, 100.0)
        row.checkpoint = checkpoint
        config = {"model_meta": {"weights_sha256": weights}}
        return RunResult(config=config, seeds=[0], rows=[row], environment=ENV).write(folder / "results.json")

    a, b = run("a", "ex/a.safetensors", "1" * 64), run("b", "ex/b.safetensors", "2" * 64)
    report = load_report([a, b])
    assert sorted(p["series"] for p in report.points) == ["a.safetensors test", "b.safetensors test"]
    names, _, _ = label_accuracy(report.records)
    assert [n.split(":")[0] for n in names] == ["a.safetensors", "b.safetensors"]
    assert [caption.split(" ddim")[0] for caption, _ in report.grids] == ["a.safetensors", "b.safetensors"]
    again = run("again", "runs/x/checkpoint", "3" * 64)
    retrained = run("retrained", "runs/x/checkpoint", "4" * 64)
    report = load_report([again, retrained])
    assert model_labels(report.records) == [
        "weights 333333333333",
        "weights 444444444444",
    ]
    one = load_report([a])
    assert one.points[0]["series"] == "" and model_labels(one.records) == [""]


def test_latex_escapes(results_file: Path) -> None:
    text = render_report([results_file], "latex")
    assert r"acc $\uparrow$" in text and r"$\pm$" in text and r"\toprule" in text
    assert "↑" not in text and "±" not in text
    from bench_builtins.reporters.tabular import latex_escape

    assert latex_escape("out of memory | tried <1 GiB> 50% a_b #1") == (
        r"out of memory \textbar{} tried \textless{}1 GiB\textgreater{} 50\% a\_b \#1"
    )


def test_csv_raw_numbers(results_file: Path, tmp_path: Path) -> None:
    rows = list(csv.DictReader(io.StringIO(render_report([results_file], "csv"))))
    ddim = next(r for r in rows if r["scheduler"] == "ddim")
    assert float(ddim["acc_mean"]) == pytest.approx(0.55)
    assert ddim["n_seeds"] == "2" and ddim["fid-judge_n"] == "32"
    assert ddim["nfe"] == "10" and float(ddim["acc_std"]) > 0
    assert next(r for r in rows if r["scheduler"] == "heun")["error"].startswith("CUDA")
    one = list(
        csv.DictReader(
            io.StringIO(render_report([_one_seed_file(tmp_path, [_row("ddim", 10, 0, 100.0)])], "csv"))
        )
    )
    assert one[0]["acc_std"] == "" and one[0]["acc_n_seeds"] == "1"  # one seed: no spread, as in the tables


def test_a_run_folder_reads_as_its_results_file(results_file: Path, tmp_path: Path) -> None:
    assert load_report([results_file.parent]).records == load_report([results_file]).records
    with pytest.raises(ResultsError, match="is a folder without a results.json"):
        load_report([tmp_path / "run" / "grids"])


def test_json_round_trip(results_file: Path) -> None:
    doc = json.loads(render_report([results_file], "json"))
    assert {"header", "tables", "records", "points", "grids", "figures"} <= set(doc)


def test_unknown_format_suggests(results_file: Path) -> None:
    from bench.registry import RegistryError

    with pytest.raises(RegistryError, match="Did you mean: html"):
        render_report([results_file], "htm")


def test_plot_png(results_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "pareto.png"
    render_report([results_file], "plain", plot=out)
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (800, 600)


def test_plot_goes_into_new_folders_in_the_format_its_name_asks(results_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "new" / "dir" / "pareto.jpg"  # the folders did not exist: a traceback once
    render_report([results_file], "plain", plot=out)
    with Image.open(out) as image:
        assert image.format == "JPEG"
    assert [p.name for p in out.parent.iterdir()] == ["pareto.jpg"]  # no temporary file left


def test_cli_says_where_the_plots_went(results_file: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from bench import cli

    plot, labels = tmp_path / "pareto.png", tmp_path / "labels.png"
    args = ["report", str(results_file), "--plot", str(plot), "--labels-plot", str(labels)]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 0, result.output
    assert f"plot: {plot}" in result.output and f"labels plot: {labels}" in result.output
    assert plot.is_file() and labels.is_file()


def test_plot_with_no_image_suffix_is_refused(results_file: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from bench import cli

    result = CliRunner().invoke(cli.main, ["report", str(results_file), "--plot", str(tmp_path / "pareto")])
    assert result.exit_code == 2 and "not an image file name; end it with .png" in result.output
    assert "Traceback" not in result.output


def test_html_is_one_page(results_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    text = render_report([results_file], "html", out=out)
    assert out.read_text() == text
    assert "<table>" in text and "acc ↑" in text and "0.550 ± 0.071 (n=2)" in text
    uris = text.split('src="data:image/png;base64,')[1:]
    assert len(uris) == 1 + 1 + 1 + 4  # the plot, the per-label heatmap, the denoising figure, four grids
    sizes = []
    for uri in uris:
        with Image.open(io.BytesIO(base64.b64decode(uri.split('"', 1)[0]))) as image:
            sizes.append(image.size)
    assert sizes[0] == (800, 600) and set(sizes[2:]) == {(40, 30), (64, 16)}
    assert "<h2>accuracy per label</h2>" in text
    assert 'src="/' not in text and "file://" not in text  # nothing outside the page


def test_html_uses_given_plot(results_file: Path, tmp_path: Path) -> None:
    text = render_report([results_file], "html", plot=tmp_path / "p.png", labels_plot=tmp_path / "l.png")
    assert text.count("data:image/png;base64,") == 7
    with Image.open(tmp_path / "l.png") as given:
        page_heatmap = text.split('src="data:image/png;base64,')[2].split('"', 1)[0]
        with Image.open(io.BytesIO(base64.b64decode(page_heatmap))) as shown:
            assert shown.size == given.size


def test_html_says_a_plot_a_browser_cannot_show_instead_of_inlining_it(
    results_file: Path, tmp_path: Path
) -> None:
    """A --plot p.pdf was inlined as data:image/pdf, a broken picture."""
    text = render_report([results_file], "html", plot=tmp_path / "p.pdf")
    assert "data:image/pdf" not in text and "which a browser does not show inline" in text
    assert (tmp_path / "p.pdf").read_bytes().startswith(b"%PDF")  # the file itself is still written


def test_per_label_accuracy_is_the_mean_over_seeds_in_objects_json_order(results_file: Path) -> None:
    from bench.report import label_accuracy

    names, labels, values = label_accuracy(load_report([results_file]).records)
    assert labels == ["gray cube", "red cube", "blue sphere"]  # objects.json's order, not the file's
    assert names == [
        "ddim/10 w=1.0 · test · 2 seeds",
        "cosine/50 w=1.0 · test · 2 seeds",
    ]  # errored heun: none
    assert values == [[0.75, 0.75, 1.0], [0.75, 0.75, 1.0]]


def test_labels_plot_draws_one_cell_per_config_and_label(results_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "labels.png"
    render_report([results_file], "plain", labels_plot=out)
    with Image.open(out) as image:
        pixels = image.convert("RGB")
        colours = {pixels.getpixel((x, y)) for x in range(image.width) for y in range(image.height)}
    assert (255, 155, 145) in colours  # 0.75: half way from white to the full red of 0.5
    assert (255, 255, 255) in colours  # 1.0
    assert NO_VALUE not in colours  # every label is in every row


def test_a_label_missing_from_a_condition_set_is_a_grey_cell(tmp_path: Path) -> None:
    rows = [
        _minimal_row(name, metrics)
        for name, metrics in (
            ("a", {"acc": 1.0, "acc_per_label": {"red cube": 1.0}}),
            ("b", {"acc": 1.0, "acc_per_label": {"red cube": 1.0, "gray cube": 1.0}}),
        )
    ]
    path = _one_seed_file(tmp_path, rows)
    render_report([path], "plain", labels_plot=tmp_path / "l.png")
    with Image.open(tmp_path / "l.png") as image:
        pixels = image.convert("RGB")
        colours = {pixels.getpixel((x, y)) for x in range(image.width) for y in range(image.height)}
    assert NO_VALUE in colours


def test_labels_plot_without_per_label_accuracy_says_where_it_comes_from(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from bench import cli

    path = _one_seed_file(tmp_path, [_minimal_row("test", {"acc": 1.0})])
    result = CliRunner().invoke(cli.main, ["report", str(path), "--labels-plot", str(tmp_path / "l.png")])
    assert result.exit_code != 0 and "comes from the iclevr-acc evaluator" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "l.png").exists()


def test_a_plot_without_what_it_draws_is_refused_before_any_file(tmp_path: Path) -> None:
    path = _one_seed_file(tmp_path, [_minimal_row("test", {"fid-judge": 20.0})])  # no accuracy
    plot, labels = tmp_path / "p.png", tmp_path / "l.png"
    with pytest.raises(ResultsError, match=r"--plot: no configuration has both accuracy and images/s"):
        render_report([path], "plain", plot=plot, labels_plot=labels)
    with_acc = _one_seed_file(tmp_path / "b", [_minimal_row("test", {"acc": 1.0})])  # no per-label, no speed
    with pytest.raises(ResultsError, match=r"--labels-plot: no per-label accuracy"):
        render_report([with_acc], "plain", labels_plot=labels)
    assert not plot.exists() and not labels.exists()


def test_metric_attributes_are_not_columns_and_evaluator_errors_show(tmp_path: Path) -> None:
    row = Row(
        model="m",
        scheduler="ddim",
        steps=4,
        seed=0,
        condition_set="test",
        speed={"images_per_s": 5.0},
        metrics={
            "acc": 0.5,
            "acc_hits": 3,
            "kid-judge": 0.02,
            "kid-judge_std": 0.001,
            "kid-judge_subset_size": 50,
            "fid-judge_error": "FidError: needs 2 images",
        },
    )
    path = _one_seed_file(tmp_path, [row])
    table = _table(load_report([path]), "condition set: test")
    assert not [h for h in table.headers if "_" in h]
    assert table.rows[0][table.headers.index("error")] == "fid-judge_error: FidError: needs 2 images"
    assert table.rows[0][table.headers.index("acc ↑")] == "0.500 (n=1)"  # one seed: no spread


def test_a_plugin_metric_with_an_underscore_is_a_column(tmp_path: Path) -> None:
    # Every name with "_" was taken for an attribute: a plugin's clip_score vanished from the tables.
    path = _one_seed_file(
        tmp_path, [_minimal_row("test", {"acc": 0.5, "clip_score": 0.31, "clip_score_n": 32})]
    )
    headers = _table(load_report([path]), "condition set: test").headers
    assert "clip_score ↑" in headers and not [h for h in headers if h.startswith("clip_score_n")]


def test_accuracy_by_objects_of_one_seed_shows_no_spread(tmp_path: Path) -> None:
    path = _one_seed_file(tmp_path, [_row("ddim", 10, 0, 100.0)])
    table = _table(load_report([path]), "by number of objects")
    assert table.rows[0][-2:] == ["0.900", "0.700"]


def test_a_plugin_reporter_that_fails_or_returns_no_text_is_one_line(
    results_file: Path, tmp_path: Path
) -> None:
    from bench.plugins import get_plugins

    reporters = get_plugins().registry("reporters")
    reporters.add("t-none", lambda **options: lambda report: None, plugin="test-plugin")
    reporters.add("t-boom", lambda **options: lambda report: 1 / 0, plugin="test-plugin")
    out = tmp_path / "r.txt"
    try:
        with pytest.raises(
            ResultsError, match=r"reporter 't-none' \(plugin 'test-plugin'\) returned NoneType"
        ):
            render_report([results_file], "t-none", out=out)
        with pytest.raises(
            ResultsError, match=r"reporter 't-boom' \(plugin 'test-plugin'\) failed: ZeroDivisionError"
        ):
            render_report([results_file], "t-boom", out=out)
        assert not out.exists()
    finally:
        reporters.remove_plugin("test-plugin")


def test_the_lower_is_better_families_match_whole_names_only() -> None:
    from bench.report import _metric_title

    assert [_metric_title(m) for m in ("fid", "fid-judge", "kid_std", "loss")] == [
        "FID ↓", "FID-judge ↓", "kid_std ↓", "loss ↓"
    ]  # fmt: skip
    assert _metric_title("fidelity") == "fidelity ↑"  # a plugin's metric that only starts like one
    assert _metric_title("fidelity", lower={"fidelity"}) == "fidelity ↓"  # unless it says so


def test_seeds_sampled_on_other_devices_or_loops_are_not_averaged(tmp_path: Path) -> None:
    """Speed depends on the card and on how the loop ran: seeds of an H100 and an H200 run, of
    batch 32 and batch 1, or with and without a speed switch (--tune-kernels, --fold-upsample), are
    two rows with the column that differs (their mean was one speed; the same seed was refused)."""

    def run(
        name: str, seed: int, gpu: str = "NVIDIA H100", batch: int = 32, compiled: bool = True, **switches
    ) -> Path:
        row = _row("ddim", 10, seed, 100.0 if batch == 32 else 5.0)
        row.speed.update(batch_size=batch, compile=compiled, cuda_graphs=compiled, **switches)
        config = {"sampling": {"channels_last": True}}
        return RunResult(config=config, seeds=[seed], rows=[row], environment={**ENV, "gpu": gpu}).write(
            tmp_path / name / "results.json"
        )

    base = run("base", 0)
    for column, other, shown in [
        ("device", run("h200", 1, gpu="NVIDIA H200"), ["NVIDIA H100", "NVIDIA H200"]),
        ("sampling", run("b1", 1, batch=1), ["b32 cl compile graphs", "b1 cl compile graphs"]),
        ("sampling", run("eager", 1, compiled=False), ["b32 cl compile graphs", "b32 cl"]),
        # the same seed with and without a switch: two cells side by side, not one seed twice
        (
            "sampling",
            run("tuned", 0, tune_kernels=True),
            ["b32 cl compile graphs", "b32 cl compile graphs tuned"],
        ),
        (
            "sampling",
            run("folded", 0, fold_upsample=True, group_norm_by_views=True, attention_by_sums=True),
            ["b32 cl compile graphs", "b32 cl compile graphs gn-views folded attn-sums"],
        ),
    ]:
        table = _table(load_report([base, other]), "condition set: test")
        assert table.headers[0] == column and [r[0] for r in table.rows] == shown
        other_seed = json.loads(other.read_text())["seeds"][0]
        assert [r[table.headers.index("seeds")] for r in table.rows] == ["0", str(other_seed)]
    table = _table(load_report([base, run("seed1", 1)]), "condition set: test")
    assert table.headers[0] == "scheduler" and len(table.rows) == 1  # the same card and loop: one mean


def test_files_without_the_weights_hash_tell_models_apart_by_their_training_step(tmp_path: Path) -> None:
    def run(name: str, seed: int, step: int) -> Path:
        config = {"model_meta": {"step": step}}  # as written before weights_sha256 was recorded
        return RunResult(
            config=config, seeds=[seed], rows=[_row("ddim", 10, seed, 100.0)], environment=ENV
        ).write(tmp_path / name / "results.json")

    table = _table(load_report([run("old", 0, 8461), run("new", 1, 11470)]), "condition set: test")
    assert table.headers[0] == "weights" and [r[0] for r in table.rows] == ["step 8461", "step 11470"]


def test_one_benchmark_in_two_files_of_one_device_is_refused(benchmark_file: Path, tmp_path: Path) -> None:
    """pytest-benchmark rows have no seed: two files' measurements were merged as if they were two."""
    copy = tmp_path / "copy.json"
    copy.write_text(benchmark_file.read_text())
    with pytest.raises(ResultsError, match="appears twice, in .*bench.json and .*copy.json"):
        load_report([benchmark_file, copy])
    other = json.loads(benchmark_file.read_text())
    for entry in other["benchmarks"]:
        entry["extra_info"]["device"] = "cuda:0"
        entry["extra_info"]["gpu"] = "NVIDIA H200"
    copy.write_text(json.dumps(other))
    table = _table(load_report([benchmark_file, copy]), "speed")
    assert "device" in table.headers and len(table.rows) == 4  # two devices: kept apart


def test_each_run_keeps_its_figure_and_a_failed_cell_adds_no_column(
    results_file: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    row = _row("ddim", 10, 1, 100.0)
    row.checkpoint = "other"
    failed = Row(model="ddpm-unet", scheduler="cosine", steps=10, seed=1, condition_set="test",
                 checkpoint="other", error="RuntimeError: boom")  # fmt: skip
    RunResult(
        config={}, seeds=[5], rows=[row, failed], environment=ENV, figures={"denoising": "d.png"}
    ).write(other / "results.json")
    first = json.loads(results_file.read_text())
    first["figures"] = {"denoising": "denoising.png"}
    results_file.write_text(json.dumps(first))
    report = load_report([results_file, other / "results.json"])
    assert sorted(report.figures) == ["denoising (other/results.json)", "denoising (run/results.json)"]
    assert "dtype" not in _table(load_report([other / "results.json"]), "condition set: test").headers


def test_the_pareto_plot_gives_eight_series_eight_colours(tmp_path: Path) -> None:
    """Two runs on four condition sets are eight series; the palette of six repeated two of them."""
    from bench.plotting import _SCATTER_COLORS, scatter_plot

    points = [{"x": 10.0 + k, "y": 0.5 + k / 20, "series": f"set {k}", "label": ""} for k in range(8)]
    image = Image.open(scatter_plot(points, tmp_path / "p.png", title="t", xlabel="x", ylabel="y"))
    present = {image.getpixel((x, y)) for x in range(image.width) for y in range(image.height)}
    assert set(_SCATTER_COLORS[:8]) <= present


def test_series_past_ten_get_another_marker_and_a_crowded_frame_puts_the_legend_outside(
    tmp_path: Path,
) -> None:
    """Colours repeated after ten series (the 16-series campaign plot read as ten), and the legend
    was drawn over points when every corner of the frame held some."""
    from bench.plotting import scatter_plot, series_styles

    styles = series_styles([f"s{k}" for k in range(40)])
    assert len(set(styles.values())) == 40 and styles["s0"][0] == styles["s10"][0]
    # points in all four corners and the middle: no corner is free for the legend
    corners = [(0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0), (0.5, 0.5)]
    points = [{"x": 10 + 90 * x, "y": 0.2 + 0.6 * y, "series": f"set {k}", "label": ""}
              for k in range(12) for x, y in corners]  # fmt: skip
    image = Image.open(scatter_plot(points, tmp_path / "p.png", size=(800, 600)))
    assert image.width > 800  # the legend went to the right of the frame, over no point
    roomy = [{"x": 10.0 + k, "y": 0.5, "series": "a", "label": ""} for k in range(3)]
    assert Image.open(scatter_plot(roomy, tmp_path / "q.png", size=(800, 600))).size == (800, 600)


def test_labels_left_out_are_counted_in_a_strip_below_the_plot(tmp_path: Path) -> None:
    """The note sat at the canvas's old bottom: on the x-axis label, or mid-canvas where the
    legend had made it taller."""
    from bench.plotting import scatter_plot

    piled = [{"x": 10.0, "y": 0.5, "series": "a", "label": f"label {k}"} for k in range(6)]
    image = Image.open(scatter_plot(piled, tmp_path / "p.png", xlabel="images/s", size=(800, 600)))
    assert image.size == (800, 622)
    strip = {image.getpixel((x, y)) for x in range(300) for y in range(600, 622)}
    assert (120, 120, 120) in strip  # the note's grey text, below everything else
    roomy = [{"x": 10.0 + 40 * k, "y": 0.2 + 0.3 * k, "series": "a", "label": f"l{k}"} for k in range(3)]
    assert Image.open(scatter_plot(roomy, tmp_path / "q.png", size=(800, 600))).size == (800, 600)


def _seed_file(tmp_path: Path, name: str, seed: int, config: dict, sets: dict[str, float], **speed) -> Path:
    rows = []
    for set_name, acc in sets.items():
        row = _row("ddim", 10, seed, 100.0)
        row.condition_set = set_name
        row.metrics = {"acc": acc, "acc_n": 32}
        row.speed.update(speed)
        rows.append(row)
    return RunResult(config=config, seeds=[seed], rows=rows, environment=ENV).write(
        tmp_path / name / "results.json"
    )


def test_select_on_reads_test_off_the_chosen_cell_whatever_the_fid_reference(tmp_path: Path) -> None:
    """Validation judged with iclevr-acc alone and test with fid too were two cells (their ref_n
    differed): the chosen row's test accuracy was empty."""
    val = _seed_file(tmp_path, "val", 0, {}, {"val_a": 0.8})
    test = _seed_file(tmp_path, "test", 0, {"ref_n": 32}, {"test": 0.7})
    data = json.loads(test.read_text())
    data["rows"][0]["metrics"].update({"fid": 100.0, "fid_ref_n": 32})
    test.write_text(json.dumps(data))
    ranked = select_cell(load_report([val, test]).records, ["val_a"])
    assert ranked.cells[0].accuracy["test"]["mean"] == 0.7


def test_select_on_refuses_two_sets_of_one_name_with_other_conditions(tmp_path: Path) -> None:
    """The second file's accuracy silently replaced the first's in the score."""
    a = _seed_file(tmp_path, "a", 0, {"condition_sha256": {"val_a": "1" * 64}}, {"val_a": 0.5})
    b = _seed_file(tmp_path, "b", 1, {"condition_sha256": {"val_a": "2" * 64}}, {"val_a": 1.0})
    with pytest.raises(ResultsError, match="has two results for condition set 'val_a'"):
        select_cell(load_report([a, b]).records, ["val_a"])


def test_fid_against_another_reference_dataset_is_another_row(tmp_path: Path) -> None:
    def fid_run(name: str, seed: int, config: dict) -> Path:
        path = _seed_file(tmp_path, name, seed, {"ref_n": 32, **config}, {"test": 0.5})
        data = json.loads(path.read_text())
        data["rows"][0]["metrics"].update({"fid": 100.0 + seed, "fid_ref_n": 32})
        path.write_text(json.dumps(data))
        return path

    synthetic = fid_run("s", 0, {"data": "synthetic"})
    folder = fid_run("f", 1, {"data": "iclevr", "data_root": "/data/own"})
    table = _table(load_report([synthetic, folder]), "condition set: test")
    assert [r[table.headers.index("ref_n")] for r in table.rows] == ["32", "32 iclevr:/data/own"]


def test_an_automatic_batch_size_does_not_split_a_guidance_sweep(tmp_path: Path) -> None:
    """sample() picks 32 unguided and 16 guided on the CPU: the two halves of one sweep had two
    sampling columns, two legends and two Pareto fronts."""
    auto = {"sampling": {"batch_size": None, "channels_last": True}}
    runs = [
        _seed_file(tmp_path, f"s{seed}", seed, auto, {"test": 0.5}, batch_size=b)
        for seed, b in ((0, 32), (1, 16))
    ]
    table = _table(load_report(runs), "condition set: test")
    assert [r[table.headers.index("seeds")] for r in table.rows] == ["0,1"]
    given = {"sampling": {"batch_size": 8, "channels_last": True}}
    runs.append(_seed_file(tmp_path, "s2", 1, given, {"test": 0.5}, batch_size=8))
    table = _table(load_report(runs), "condition set: test")
    assert table.headers[0] == "sampling" and [r[0] for r in table.rows] == ["cl", "b8 cl"]


def test_two_benchmarks_of_one_file_at_two_batch_sizes_are_two_rows(tmp_path: Path) -> None:
    def bench(batch: int) -> dict:
        extra = {"model": "ddpm-unet/tiny", "scheduler": "ddim", "steps": 2, "images_per_s": 10.0 * batch,
                 "batch_size": batch, "device": "cpu", "dtype": "fp32"}  # fmt: skip
        return {"name": f"test_sample[{batch}]", "fullname": f"b.py::test_sample[{batch}]",
                "extra_info": extra, "stats": {"median": 1.0, "rounds": 1}}  # fmt: skip

    path = tmp_path / "pb.json"
    path.write_text(json.dumps({"benchmarks": [bench(8), bench(16)], "machine_info": {}, "commit_info": {}}))
    rendered = render_report([path], "csv")
    assert "b8" in rendered and "b16" in rendered


def test_a_github_table_cell_keeps_its_pipes_and_newlines_inside(tmp_path: Path) -> None:
    row = _row("ddim", 10, 0, 100.0)
    row.error = "RuntimeError: shape mismatch | expected [16, 3]\nsecond line"
    rendered = render_report([_one_seed_file(tmp_path, [row])], "github")
    line = next(line for line in rendered.splitlines() if "shape mismatch" in line)
    assert "mismatch \\| expected [16, 3] second line" in line
    header = next(line for line in rendered.splitlines() if line.startswith("| scheduler"))
    assert line.count(" | ") == header.count(" | ")  # no column of its own


@pytest.mark.parametrize(
    "content",
    ['{"benchmarks": [1]}', '{"benchmarks": {"a": 1}}'],
)
def test_a_file_with_a_field_of_the_wrong_type_is_one_line(tmp_path: Path, content: str) -> None:
    from click.testing import CliRunner

    from bench.cli import main

    path = tmp_path / "odd.json"
    path.write_text(content)
    result = CliRunner().invoke(main, ["report", str(path)])
    assert result.exit_code == 1 and f"could not read {path}: a field holds what" in result.output
    assert "Traceback" not in result.output


def test_the_same_weights_from_two_paths_are_one_cell(tmp_path: Path) -> None:
    """Two clones sampling the shipped weights made two rows, one per folder."""

    def run(name: str, seed: int, checkpoint: str) -> Path:
        row = _row("ddim", 10, seed, 100.0)
        row.checkpoint = checkpoint
        config = {"model_meta": {"weights_sha256": "a" * 64}}
        return RunResult(config=config, seeds=[seed], rows=[row], environment=ENV).write(
            tmp_path / name / "results.json"
        )

    table = _table(
        load_report([run("one", 0, "/clone1/w.safetensors"), run("two", 1, "/clone2/w.safetensors")]), "test"
    )
    assert [r[table.headers.index("seeds")] for r in table.rows] == ["0,1"] and "clone1" in table.title


def test_select_on_naming_no_set_is_an_error_and_a_cpu_run_is_not_said_to_have_cuda(
    results_file: Path,
) -> None:
    from bench.selection import parse_select_on

    with pytest.raises(ResultsError, match="names no condition set"):
        parse_select_on([","])  # ranked nothing without a word
    data = json.loads(results_file.read_text())
    data["environment"].update({"device": "cpu", "cuda": "13.0", "gpu": None})
    results_file.write_text(json.dumps(data))
    header = render_report([results_file], "plain").splitlines()[0]
    assert "device: cpu," in header and "cuda 13.0" not in header


def test_seconds_per_image_below_one_reads_as_a_plain_decimal() -> None:
    """Three significant figures, never .g's exponent: 25,000 images/s read 4e-05 s/image."""
    from bench.report import _fmt

    assert [_fmt(v, -3) for v in (0.000396, 0.0000396, 0.00955, 0.5)] == [
        "0.000396",
        "0.0000396",
        "0.00955",
        "0.500",
    ]
    assert _fmt(0.0, -3) == "0" and _fmt(1.234, -3) == "1.23"


def test_speed_files_plot_as_bars_one_per_configuration(benchmark_file: Path, tmp_path: Path) -> None:
    """--plot on files without accuracy (pytest-benchmark, a run without the judge) draws images/s as
    bars instead of refusing; a cell's rows of several condition sets make one bar; an html page
    embeds the bars with a caption that says what they are."""
    from bench.plotting import _SCATTER_COLORS
    from bench.report import SPEED_CAPTION, speed_bars

    labels, values = speed_bars(load_report([benchmark_file]).records)
    assert sorted(values) == [16.0, 640.0] and len(set(labels)) == 2  # batch 8 in a 0.5 s median; given
    plot = tmp_path / "speed.png"
    text = render_report([benchmark_file], "html", plot=plot)
    assert SPEED_CAPTION in text and "Pareto" not in text
    with Image.open(plot) as image:
        colours = {image.getpixel((x, y)) for x in range(image.width) for y in range(image.height)}
    assert set(_SCATTER_COLORS[:2]) <= colours and _SCATTER_COLORS[2] not in colours  # two bars

    rows = [
        replace(_minimal_row(name, {"fid-judge": 20.0}), speed={"images_per_s": 5.0})
        for name in ("test", "new_test")
    ]
    run = _one_seed_file(tmp_path / "run", rows)
    assert speed_bars(load_report([run]).records) == (["ddim/2"], [5.0])
    page = render_report([run], "html")  # no --plot: the page draws the bars itself
    assert SPEED_CAPTION in page and page.count("data:image/png;base64,") == 1
