"""`bench run`'s checks of what it is asked: failed cells in the exit code, requests every cell would
fail on refused up front, the matrix without repeats, and one clear line for bad paths and presets."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench import cli

# An untrained tiny model on the CPU, no evaluators, no figure: a cell takes well under a second.
TINY_RUN = [
    "run", "--checkpoint", "random", "--preset", "tiny", "--evaluators", "none", "--device", "cpu",
    "--no-denoising-figure",
]  # fmt: skip


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture()
def one_condition(tmp_path) -> list[str]:
    path = tmp_path / "one.json"
    path.write_text('[["red sphere"]]')
    return ["--conditions", str(path)]


def _rows(out) -> list[dict]:
    return json.loads((out / "results.json").read_text())["rows"]


def _no_work(monkeypatch) -> None:
    """Fail the test if the judges load or a cell samples: the checks must come first."""

    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the request was checked")

    monkeypatch.setattr("bench.runner.make_evaluators", forbidden)
    monkeypatch.setattr("bench.sampling.sample", forbidden)


# 1. failed cells reach the exit code: tests/test_cli.py::test_a_failing_cell_records_its_error_and_the_rest_run


# 2. what every cell would fail on is refused before any work


@pytest.mark.parametrize(
    "scheduler, steps, messages",
    [
        ("ddim", "2,5000", ["--steps 5000: scheduler 'ddim' samples at most 1000 steps"]),
        # random weights are cosine-trained; `linear` samples on its own betas
        (
            "ddim,linear",
            "2",
            ["--scheduler linear:", "scheduler 'linear' samples with", "--allow-schedule-mismatch"],
        ),
    ],
)
def test_what_every_cell_would_fail_on_is_refused_before_any_work(
    runner, tmp_path, one_condition, monkeypatch, scheduler, steps, messages
) -> None:
    _no_work(monkeypatch)
    out = tmp_path / "run"
    args = ["--scheduler", scheduler, "--steps", steps, "--out", str(out), *one_condition]
    result = runner.invoke(cli.main, [*TINY_RUN, *args])
    assert result.exit_code == 2, result.output
    assert all(message in result.output for message in messages), result.output
    assert "Traceback" not in result.output and not out.exists()


@pytest.mark.parametrize(
    "scheduler, refused",
    [
        ("ddpm", True),
        ("ddim", True),
        ("cosine", True),
        ("dpm++2m", False),
        ("unipc", False),
        ("euler", False),
        ("heun", False),
    ],
)
def test_the_step_limit_is_each_schedulers_own(scheduler, refused) -> None:
    # diffusers' DDPM and DDIM refuse more steps than training timesteps; the others sample them.
    from bench.noise import noise_config
    from bench.plugins import get_plugins
    from bench.runner import RunConfig, RunError, _check_cells

    plugins, trained = get_plugins(), noise_config("cosine", 1000)
    _check_cells(RunConfig(schedulers=[scheduler], steps=[1000]), plugins, trained)  # always fine
    over = RunConfig(schedulers=[scheduler], steps=[1001])
    if refused:
        with pytest.raises(RunError, match="samples at most 1000 steps"):
            _check_cells(over, plugins, trained)
    else:
        _check_cells(over, plugins, trained)


# 3. each cell once, under the scheduler's registered name


def test_repeated_matrix_values_run_once_under_the_registered_name(runner, tmp_path, one_condition) -> None:
    out = tmp_path / "run"
    args = ["--scheduler", "dpmpp2m,dpm++2m", "--steps", "2,2", "--seeds", "0,0", "--guidance", "1,1.0"]
    result = runner.invoke(cli.main, [*TINY_RUN, *args, "--out", str(out), *one_condition])
    assert result.exit_code == 0, result.output
    assert (
        "dropped repeated matrix values (each cell runs once): "
        "--scheduler dpm++2m, --steps 2, --seeds 0, --guidance 1\n" in result.output
    )
    rows = _rows(out)
    assert len(rows) == 1 and rows[0]["scheduler"] == "dpm++2m" and rows[0]["n_images"] == 1
    config = json.loads((out / "results.json").read_text())["config"]
    assert config["schedulers"] == ["dpm++2m"] and config["seeds"] == [0] and config["steps"] == [2]


def test_an_alias_alone_is_recorded_under_the_registered_name(runner, tmp_path, one_condition) -> None:
    out = tmp_path / "run"
    args = ["--scheduler", "dpm-solver++", "--steps", "2", "--out", str(out), *one_condition]
    result = runner.invoke(cli.main, [*TINY_RUN, *args])
    assert result.exit_code == 0, result.output
    assert "dropped" not in result.output  # nothing repeated
    assert [r["scheduler"] for r in _rows(out)] == ["dpm++2m"]


def test_resume_matches_cells_whatever_name_the_scheduler_was_given(runner, tmp_path, one_condition) -> None:
    out = tmp_path / "run"
    first = ["--scheduler", "dpmpp2m", "--steps", "2", "--seeds", "0", "--out", str(out), *one_condition]
    assert runner.invoke(cli.main, [*TINY_RUN, *first]).exit_code == 0
    again = ["--scheduler", "dpm++2m", "--steps", "2", "--seeds", "0,1,1", "--out", str(out), "--resume"]
    result = runner.invoke(cli.main, [*TINY_RUN, *again, *one_condition])
    assert result.exit_code == 0, result.output
    assert "--resume: 1 of 2 cells are in" in result.output
    assert [(r["scheduler"], r["seed"]) for r in _rows(out)] == [("dpm++2m", 0), ("dpm++2m", 1)]


def test_resume_reads_an_alias_in_an_older_file_as_the_registered_name(tmp_path) -> None:
    from bench.plugins import get_plugins
    from bench.run_resume import finished_cells
    from bench.runner import _registered_name

    env = {"device": "cpu", "libraries": {}, "git": {"revision": "a"}}
    row = {
        "scheduler": "dpmpp2m",
        "steps": 2,
        "guidance": 1.0,
        "seed": 0,
        "condition_set": "one",
        "model": "m",
    }
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"config": {"ref_n": 8}, "environment": env, "rows": [row]}))
    cells = [("dpm++2m", 2, 1.0, 0)]
    done = finished_cells(
        path, {"ref_n": 8}, env, cells, ["one"], scheduler_name=_registered_name(get_plugins())
    )
    assert list(done) == cells and done[cells[0]][0].scheduler == "dpm++2m"


# 4. an empty matrix is a usage error before anything is written


@pytest.mark.parametrize(
    "option, value", [("--seeds", ""), ("--scheduler", ""), ("--steps", ","), ("--guidance", "")]
)
def test_an_empty_matrix_list_is_a_usage_error(runner, tmp_path, one_condition, option, value) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_text("{}")  # an earlier run's results: kept
    result = runner.invoke(cli.main, [*TINY_RUN, option, value, "--out", str(out), *one_condition])
    assert result.exit_code == 2, result.output
    assert f"{option} is empty: the matrix would have no cell" in result.output
    assert (out / "results.json").read_text() == "{}" and "Traceback" not in result.output


def test_a_negative_seed_is_refused_before_anything_is_written(runner, tmp_path, one_condition) -> None:
    """--seeds -1 wrote images/.../seed-1, a folder name that reads as a range."""
    result = runner.invoke(
        cli.main, [*TINY_RUN, "--seeds", "-1", "--out", str(tmp_path / "run"), *one_condition]
    )
    assert result.exit_code == 2 and "--seeds -1: seeds are 0 or more" in result.output, result.output
    assert not (tmp_path / "run").exists()


def test_an_empty_matrix_is_refused_by_the_python_api_too(tmp_path) -> None:
    from bench.runner import RunConfig, RunError, run

    config = RunConfig(
        checkpoint="random", preset="tiny", seeds=[], evaluators=[], out_dir=str(tmp_path / "o")
    )
    with pytest.raises(RunError, match="--seeds is empty"):
        run(config, log=lambda message: None)
    assert not (tmp_path / "o").exists()


# 5. bad paths and presets are one line


@pytest.mark.parametrize("inside", [False, True])
def test_out_on_a_file_is_one_clear_line(runner, tmp_path, one_condition, inside) -> None:
    file = tmp_path / "taken"
    file.write_text("mine")
    out = file / "run" if inside else file
    result = runner.invoke(cli.main, [*TINY_RUN, "--steps", "2", "--out", str(out), *one_condition])
    assert result.exit_code == 2, result.output
    assert f"--out {out}" in result.output and "is a file" in result.output
    assert "Traceback" not in result.output and file.read_text() == "mine"


def test_an_out_that_cannot_be_written_is_one_line_before_any_work(
    runner, tmp_path, monkeypatch, one_condition
) -> None:
    """A read-only folder (a mount, an immutable folder: root passes a permission check there, so
    the probe writes a file) was a PermissionError traceback after the first cell had sampled, or
    after bench train had built its data."""
    import tempfile

    locked = tmp_path / "locked"
    locked.mkdir()
    real = tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == locked:
            raise PermissionError(13, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr("bench.atomic.tempfile.mkstemp", read_only)
    _no_work(monkeypatch)
    monkeypatch.setattr(cli, "_dataset", lambda *a, **k: pytest.fail("the data was read"))
    for args in (
        [*TINY_RUN, "--steps", "2", *one_condition, "--out", str(locked / "run")],
        ["train", "--preset", "tiny", "--device", "cpu", "--out", str(locked / "train")],
    ):
        result = runner.invoke(cli.main, args)
        assert result.exit_code == 2, result.output
        text = " ".join(result.output.split())
        assert f"{locked} cannot be written to (Permission denied)" in text and "Traceback" not in text
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"schema": "bench.results/1", "rows": []}))
    result = runner.invoke(cli.main, ["report", str(results), "--out", str(locked / "report.md")])
    assert (
        result.exit_code != 0 and "cannot be written to" in result.output and "Traceback" not in result.output
    )
    assert list(locked.iterdir()) == []  # nothing left behind


def test_resume_names_a_malformed_row_of_the_results_file(runner, tmp_path, one_condition) -> None:
    """The resume read rows unchecked: a null row was a TypeError traceback."""
    out = tmp_path / "run"
    args = [*TINY_RUN, "--scheduler", "ddim", "--steps", "1", *one_condition, "--out", str(out)]
    assert runner.invoke(cli.main, args).exit_code == 0
    data = json.loads((out / "results.json").read_text())
    data["rows"].insert(0, None)
    (out / "results.json").write_text(json.dumps(data))
    result = runner.invoke(cli.main, [*args, "--resume"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "row 0 is null, expected an object" in " ".join(result.output.split())


def test_an_unknown_preset_is_one_line_listing_the_presets(runner, tmp_path) -> None:
    args = ["run", "--checkpoint", "random", "--preset", "tinyy", "--out", str(tmp_path / "o")]
    result = runner.invoke(cli.main, args)
    assert result.exit_code == 2, result.output
    assert "--preset tinyy: unknown ddpm-unet preset 'tinyy'; known presets:" in result.output
    assert "tiny" in result.output.split("known presets:")[1] and "Traceback" not in result.output


# 6. checkpoint errors say what the path is and what bench reads


def _checkpoint(path):
    from bench.checkpoints import save_checkpoint
    from bench.noise import noise_config
    from bench_builtins.models.ddpm_unet import make_ddpm_unet

    model = make_ddpm_unet("tiny")
    return save_checkpoint(
        path,
        model_name="ddpm-unet",
        model=model,
        model_config=model.config,
        noise_config=noise_config("cosine"),
    )


def test_a_torch_pickle_is_named_as_one(runner, tmp_path) -> None:
    import torch

    from bench.checkpoints import CheckpointError, load_model

    zipped = tmp_path / "course.pt"
    torch.save({"weight": torch.zeros(2)}, zipped)  # torch >= 1.6: a zip archive
    legacy = tmp_path / "old.pth"
    legacy.write_bytes(pickle.dumps({"weight": 0}, protocol=2))  # a bare pickle
    for path in (zipped, legacy):
        with pytest.raises(CheckpointError) as error:
            load_model(path)
        message = str(error.value)
        assert "is a torch pickle" in message and "truncated or corrupt" not in message
        assert "`bench train`" in message and "`bench export`" in message
    result = runner.invoke(cli.main, ["run", "--checkpoint", str(zipped), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "is a torch pickle" in result.output


def test_a_train_output_folder_points_at_its_checkpoint(tmp_path) -> None:
    from bench.checkpoints import CheckpointError, load_model

    _checkpoint(tmp_path / "train" / "checkpoint")
    with pytest.raises(CheckpointError) as error:
        load_model(tmp_path / "train")
    assert f"its checkpoint is {tmp_path / 'train' / 'checkpoint'}" in str(error.value)


def test_a_file_inside_a_checkpoint_folder_points_at_the_folder(tmp_path) -> None:
    from safetensors.torch import save_file

    from bench.checkpoints import CheckpointError, load_model

    folder = _checkpoint(tmp_path / "ck")
    with pytest.raises(CheckpointError) as error:
        load_model(folder / "model.safetensors")
    assert f"inside the checkpoint folder {folder}; pass the folder" in str(error.value)
    # its config.json too (it was "truncated or corrupt"), and any other JSON file is named as one
    with pytest.raises(CheckpointError, match=f"inside the checkpoint folder {folder}; pass the folder"):
        load_model(folder / "config.json")
    (tmp_path / "loss.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(CheckpointError, match="loss.jsonl is a JSON file, not weights"):
        load_model(tmp_path / "loss.jsonl")
    # A bare safetensors file elsewhere: the command that makes a loadable one, not a Python name.
    import torch

    save_file({"w": torch.zeros(1)}, str(tmp_path / "bare.safetensors"))
    with pytest.raises(CheckpointError) as error:
        load_model(tmp_path / "bare.safetensors")
    assert "`bench export`" in str(error.value) and "export_weights" not in str(error.value)


def test_data_root_for_a_dataset_without_one_is_refused_by_run_and_train_judge(
    runner, tmp_path, one_condition
) -> None:
    # The synthetic set drops a data_root silently: FID's reference and the judge would use its renders.
    out = tmp_path / "run"
    result = runner.invoke(
        cli.main, [*TINY_RUN, "--data-root", str(tmp_path), "--out", str(out), *one_condition]
    )
    assert result.exit_code == 2 and "--data synthetic takes no --data-root" in result.output
    assert not out.exists()
    judge = tmp_path / "judge.safetensors"
    result = runner.invoke(cli.main, ["train-judge", "--data-root", str(tmp_path), "--out", str(judge)])
    assert result.exit_code == 2 and "--data synthetic takes no --data-root" in result.output
    assert not judge.exists()


def test_run_and_train_judge_read_a_folders_images_from_images_dir(runner, tmp_path, one_condition) -> None:
    from bench_builtins.datasets.synthetic.export import write_synthetic_folder

    folder = write_synthetic_folder(tmp_path / "course", scenes=1)
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    for png in folder.rglob("*.png"):
        png.rename(pngs / png.name)
    args = [a if a != "none" else "fid" for a in TINY_RUN]
    two = tmp_path / "two.json"  # FID needs two generated images
    two.write_text('[["red sphere"], ["blue cube"]]')
    args += ["--scheduler", "ddim", "--steps", "1", "--data", "iclevr", "--data-root", str(folder)]
    args += ["--conditions", str(two)]
    result = runner.invoke(cli.main, [*args, "--images-dir", str(pngs), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "the reference holds 3 images" in result.output  # FID's reference came from --images-dir
    assert json.loads((tmp_path / "run" / "results.json").read_text())["config"]["images_dir"] == str(
        pngs.resolve()
    )
    judge = tmp_path / "judge.safetensors"
    result = runner.invoke(
        cli.main,
        ["train-judge", "--data", "iclevr", "--data-root", str(folder), "--images-dir", str(pngs), "--epochs", "1",
         "--device", "cpu", "--out", str(judge)],
    )  # fmt: skip
    assert result.exit_code == 0 and judge.exists(), result.output
    result = runner.invoke(
        cli.main, [*TINY_RUN, "--images-dir", str(pngs), "--out", str(tmp_path / "x"), *one_condition]
    )
    assert result.exit_code == 2 and "--images-dir" in result.output and not (tmp_path / "x").exists()


@pytest.mark.parametrize("evaluator", ["fid", "kid"])
def test_a_set_too_small_for_an_evaluator_is_refused_before_any_work(
    runner, tmp_path, one_condition, monkeypatch, evaluator
) -> None:
    """FID and KID need two images per set: a one-condition set failed after every cell sampled."""
    _no_work(monkeypatch)
    args = [a if a != "none" else f"iclevr-acc,{evaluator}" for a in TINY_RUN]
    result = runner.invoke(cli.main, [*args, "--steps", "2", *one_condition, "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    text = " ".join(result.output.split())
    assert f"--evaluators {evaluator} needs at least 2 images per condition set; one (1) has fewer" in text


def test_a_preset_with_a_trained_checkpoint_is_refused(runner, tmp_path, one_condition) -> None:
    # A checkpoint carries its architecture: --preset was silently ignored.
    args = ["run", "--preset", "tiny", "--evaluators", "none", "--out", str(tmp_path / "run"), *one_condition]
    result = runner.invoke(cli.main, args)
    assert result.exit_code == 2 and "--preset tiny applies only with --checkpoint random" in result.output


def test_run_says_when_resume_finds_nothing_and_when_it_replaces_results(
    runner, tmp_path, one_condition
) -> None:
    out = tmp_path / "run"
    args = [*TINY_RUN, "--scheduler", "ddim", "--steps", "1", "--out", str(out), *one_condition]
    result = runner.invoke(cli.main, [*args, "--resume"])
    assert result.exit_code == 0 and "--resume: no results.json in" in result.output
    result = runner.invoke(cli.main, args)
    assert result.exit_code == 0 and "replacing the results.json in" in result.output


def test_a_replaced_run_leaves_none_of_its_pictures(runner, tmp_path, one_condition) -> None:
    """Run again into the same --out with another matrix: the old cell's images and grid go (they
    would sit beside the new ones as if this run had made them); what bench did not write stays."""
    out = tmp_path / "run"
    args = [*TINY_RUN, "--scheduler", "ddim", "--out", str(out), *one_condition]
    assert runner.invoke(cli.main, [*args, "--steps", "2"]).exit_code == 0
    old_cell = out / "images" / "ddim-2-g1"
    assert sorted(p.name for p in (old_cell / "seed0").iterdir()) == ["one", "one_grid.png"]
    (old_cell / "seed0" / "one" / "notes.txt").write_text("mine")
    result = runner.invoke(cli.main, [*args, "--steps", "1"])
    assert result.exit_code == 0 and "removed the 2 images, grids and figures it named" in result.output
    assert [p.name for p in (old_cell / "seed0" / "one").iterdir()] == ["notes.txt"]
    assert not (old_cell / "seed0" / "one_grid.png").exists()
    assert (out / "images" / "ddim-1-g1" / "seed0" / "one" / "0.png").is_file()


def test_only_what_the_replaced_file_names_inside_out_is_removed(tmp_path) -> None:
    from bench.run_resume import remove_replaced_outputs

    out, outside = tmp_path / "run", tmp_path / "keep.png"
    (out / "images" / "c" / "s").mkdir(parents=True)
    for name in ("0.png", "1.png", "mine.png"):
        (out / "images" / "c" / "s" / name).write_bytes(b"png")
    (out / "grid.png").write_bytes(b"png")
    outside.write_bytes(b"png")
    row = {"model": "m", "scheduler": "ddim", "steps": 1, "seed": 0, "condition_set": "test", "guidance": 1.0}
    rows = [{**row, "images_dir": "images/c/s", "grid": "grid.png", "misses": "../keep.png"}]
    (out / "results.json").write_text(json.dumps({"rows": rows, "figures": {"denoising": "../keep.png"}}))
    assert remove_replaced_outputs(out) == 3
    assert [p.name for p in (out / "images" / "c" / "s").iterdir()] == ["mine.png"] and outside.exists()
    # its rows kept aside: no results.json is left naming images that are gone (--resume took them
    # for finished cells after an interrupt before the first new cell)
    assert (
        not (out / "results.json").exists()
        and json.loads((out / "results.replaced.json").read_text())["rows"]
    )
    (out / "results.json").write_text("{not json")
    assert remove_replaced_outputs(out) == 0  # an unreadable file names nothing
    assert (out / "results.json").read_text() == "{not json"


def test_options_that_change_less_than_asked_are_named(runner, tmp_path, one_condition) -> None:
    judge = tmp_path / "judge.safetensors"
    judge.write_bytes(b"unused")
    args = [*TINY_RUN, "--scheduler", "ddim", "--steps", "1", "--judge", str(judge), *one_condition]
    result = runner.invoke(cli.main, [*args, "--out", str(tmp_path / "a")])
    assert result.exit_code == 0 and "--judge has no effect with --evaluators none" in result.output
    result = runner.invoke(cli.main, [*args, "--cudnn-benchmark", "--out", str(tmp_path / "c")])
    assert result.exit_code == 0 and "--cudnn-benchmark has no effect on a CPU" in result.output
    # A folder of 3 images as FID's reference, asked for 500: the run says it uses the 3.
    from bench_builtins.datasets.synthetic.export import write_synthetic_folder

    folder = write_synthetic_folder(tmp_path / "ref", scenes=1)
    args = [a if a != "none" else "fid" for a in TINY_RUN]
    args += ["--scheduler", "ddim", "--steps", "1", "--data", "iclevr", "--data-root", str(folder)]
    two = tmp_path / "two.json"  # FID needs two generated images per set
    two.write_text('[["red sphere"], ["blue cube"]]')
    result = runner.invoke(
        cli.main, [*args, "--ref-n", "500", "--conditions", str(two), "--out", str(tmp_path / "b")]
    )
    assert "--ref-n 500: the reference holds 3 images; the evaluators that compare with it use those" in (
        " ".join(result.output.split())
    ), result.output


@pytest.fixture()
def plugin_components():
    """Register components into the process-wide registries as plugin 'test-plugin' for one test."""
    from bench.plugins import get_plugins

    plugins = get_plugins()
    yield lambda kind, name, factory: plugins.registry(kind).add(name, factory, plugin="test-plugin")
    for registry in plugins.registries.values():
        registry.remove_plugin("test-plugin")


def test_what_an_evaluator_returns_is_checked_and_its_failure_is_the_exit_code(
    runner, tmp_path, one_condition, plugin_components
) -> None:
    import torch

    returns = {
        "t-ok": {"brightness": torch.tensor(0.25), "brightness_n": 1, "by": {"a": 1.0, "b": None}},
        "t-nan": {"nanny": float("nan")},
        "t-text": {"word": "high"},
        "t-list": [("x", 1.0)],
        "t-clash": {"brightness": 5.0},
    }
    for name, value in returns.items():
        plugin_components("evaluators", name, lambda value=value, **options: lambda images, conditions: value)
    out = tmp_path / "run"
    args = [*TINY_RUN, *one_condition, "--scheduler", "ddim", "--steps", "1", "--out", str(out)]
    result = runner.invoke(cli.main, [*args, "--evaluators", ",".join(returns)])
    assert result.exit_code == 1, result.output  # results written, the failure still seen
    assert "an evaluator failed on 1 row(s), first: t-nan_error" in result.output
    (row,) = _rows(out)
    metrics = row["metrics"]
    assert metrics["brightness"] == 0.25 and metrics["brightness_n"] == 1  # a 0-dim tensor, as a number
    assert metrics["by"] == {"a": 1.0, "b": None}
    assert metrics["t-nan_error"] == "MetricsError: evaluator 't-nan' returned nan for 'nanny'"
    assert "returned str 'high' for 'word'; a metric is a number" in metrics["t-text_error"]
    assert "returned list; expected a dict" in metrics["t-list_error"]
    assert "returned 'brightness', which evaluator 't-ok' gave already" in metrics["t-clash_error"]
    assert "NaN" not in (out / "results.json").read_text()  # strict JSON
    ok = runner.invoke(cli.main, [*args, "--evaluators", "t-ok", "--out", str(tmp_path / "ok")])
    assert ok.exit_code == 0, ok.output


def test_a_plugin_factory_of_the_wrong_shape_is_one_line_naming_its_plugin(
    runner, tmp_path, one_condition, plugin_components
) -> None:
    plugin_components("schedulers", "t-dict", lambda train_config, **options: {"not": "a scheduler"})
    plugin_components("schedulers", "t-raises", lambda train_config, **options: 1 / 0)
    plugin_components("evaluators", "t-strict", lambda device: None)  # takes no **options
    base = [*TINY_RUN, *one_condition, "--steps", "1", "--out", str(tmp_path / "r")]
    cases = {
        ("--scheduler", "t-dict"): "--scheduler t-dict: its factory (plugin 'test-plugin') returned dict, "
        "not a diffusers scheduler (no config, set_timesteps, init_noise_sigma, scale_model_input, step)",
        ("--scheduler", "t-raises"): "--scheduler t-raises: its factory (plugin 'test-plugin') failed: "
        "ZeroDivisionError",
    }
    for option, message in cases.items():
        result = runner.invoke(cli.main, [*base, *option])
        assert result.exit_code == 2 and message in result.output, result.output
        assert "Traceback" not in result.output
    result = runner.invoke(cli.main, [*base, "--scheduler", "ddim", "--evaluators", "t-strict"])
    assert result.exit_code == 2 and "evaluator 't-strict' (plugin 'test-plugin')" in result.output
    assert "takes **options" in result.output


def test_a_guidance_interval_past_the_last_timestep_is_refused(runner, tmp_path, one_condition) -> None:
    """It guided no step while the rows read guidance 3 (guided NFE 0)."""
    out = tmp_path / "r"
    args = [*TINY_RUN, *one_condition, "--scheduler", "ddim", "--steps", "1", "--guidance", "3"]
    result = runner.invoke(cli.main, [*args, "--guidance-interval", "2000,3000", "--out", str(out)])
    assert (
        result.exit_code == 2
        and "--guidance-interval 2000-3000 starts past the last training timestep 999" in result.output
    )
    assert not (out / "results.json").exists()
    assert (
        runner.invoke(cli.main, [*args, "--guidance-interval", "900,3000", "--out", str(out)]).exit_code == 0
    )


def test_an_evaluator_can_declare_a_metric_lower_is_better(
    runner, tmp_path, one_condition, plugin_components
) -> None:
    class Distance:
        lower_is_better = ("my_distance",)

        def __call__(self, images, conditions):
            return {"my_distance": 0.5, "my_score": 0.25}

    plugin_components("evaluators", "t-distance", lambda **options: Distance())
    out = tmp_path / "run"
    args = [*TINY_RUN, *one_condition, "--scheduler", "ddim", "--steps", "1", "--evaluators", "t-distance"]
    assert runner.invoke(cli.main, [*args, "--out", str(out)]).exit_code == 0
    assert json.loads((out / "results.json").read_text())["config"]["lower_is_better"] == ["my_distance"]
    report = runner.invoke(cli.main, ["report", str(out), "--format", "plain"])
    assert "my_distance ↓" in report.output and "my_score ↑" in report.output, report.output


def test_a_plugin_evaluator_that_needs_the_reference_gets_it(
    runner, tmp_path, one_condition, plugin_components
) -> None:
    """Only the built-in fid and kid were given the reference images: a plugin's FID-like metric
    had nothing to compare with. An evaluator asks for them by ``needs_reference``."""
    from bench_builtins.datasets.synthetic.export import write_synthetic_folder

    given: dict[str, object] = {}

    def make(**options):
        given.update(options)
        return lambda images, conditions: {"my_distance": float(len(options.get("dataset") or []))}

    make.needs_reference = True
    plugin_components("evaluators", "t-reference", make)
    plugin_components(
        "evaluators",
        "t-plain",
        lambda **options: given.setdefault("plain", options) and (lambda i, c: {"x": 1.0}),
    )
    folder = write_synthetic_folder(tmp_path / "ref", scenes=1)
    args = [
        *TINY_RUN,
        *one_condition,
        "--scheduler",
        "ddim",
        "--steps",
        "1",
        "--evaluators",
        "t-reference,t-plain",
    ]
    args += ["--data", "iclevr", "--data-root", str(folder), "--ref-n", "2"]
    assert runner.invoke(cli.main, [*args, "--out", str(tmp_path / "run")]).exit_code == 0
    assert given["ref_n"] == 2 and len(given["dataset"]) == 3
    assert "dataset" not in given["plain"] and "ref_n" not in given["plain"]


def test_without_conditions_a_data_roots_own_test_json_is_used_and_named(runner, tmp_path) -> None:
    """A student's course folder holds its own test.json: it is read (and said), not the shipped one;
    new_test.json, absent there, is not scored: the shipped copy under that name passed for theirs."""
    folder = tmp_path / "course"
    folder.mkdir()
    (folder / "test.json").write_text('[["red sphere"], ["cyan cube", "gray cylinder"]]')
    out = tmp_path / "run"
    args = [*TINY_RUN, "--data", "iclevr", "--data-root", str(folder), "--scheduler", "ddim", "--steps", "1"]
    result = runner.invoke(cli.main, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (
        f"condition sets: {folder / 'test.json'} (new_test.json not in {folder}: not scored)" in result.output
    )
    counts = {r["condition_set"]: r["n_images"] for r in _rows(out)}
    assert counts == {"test": 2}
    config = json.loads((out / "results.json").read_text())["config"]
    assert config["condition_files"][0] == str(folder / "test.json")
    assert config["data_root"] == str(folder.resolve())  # absolute, as bench train records it


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_a_data_root_that_is_no_folder_is_refused_before_the_shipped_sets_stand_in(
    runner, tmp_path, kind
) -> None:
    """A typo in --data-root scored the shipped test and new_test as if they were the folder's."""
    root = tmp_path / "course"
    if kind == "file":
        root.write_text("[]")
    args = [*TINY_RUN, "--data", "iclevr", "--data-root", str(root), "--out", str(tmp_path / "run")]
    result = runner.invoke(cli.main, args)
    says = "does not exist" if kind == "missing" else "is a file; name the folder that holds train.json"
    assert result.exit_code == 2 and f"--data-root {root} {says}" in result.output
    assert not (tmp_path / "run").exists()


def test_conditions_beyond_the_training_scenes_are_noted(runner, tmp_path) -> None:
    from bench.conditions import ConditionSet
    from bench.runner import _beyond_training

    four = ["red sphere", "cyan cube", "gray cylinder", "blue cube"]
    sets = [
        ConditionSet("mine", "mine.json", [four, four[:2]]),
        ConditionSet("test", "test.json", [four[:3]]),
    ]
    meta = {"train_config": {"data": "synthetic", "data_options": {}}}
    assert _beyond_training(sets, meta) == (
        "conditions with more than 3 objects (mine 1 of 2): the checkpoint trained on synthetic scenes of "
        "at most 3, so its accuracy there measures extrapolation"
    )
    meta = {"train_config": {"data": "synthetic", "data_options": {"max_objects": 5}}}
    assert _beyond_training(sets, meta) is None
    assert _beyond_training(sets, {"checkpoint": "random"}) is None  # untrained: nothing to extrapolate from
    # i-CLEVR-format data: the task's 3, unless the folder's train.json named more in a scene
    course = tmp_path / "course"
    course.mkdir()
    meta = {"train_config": {"data": "iclevr", "data_root": str(course)}}
    assert "iclevr scenes of at most 3" in _beyond_training(sets, meta)  # train.json gone: the task's 3
    (course / "train.json").write_text(json.dumps({"a.png": four, "b.png": four[:1]}))
    assert _beyond_training(sets, meta) is None  # it trained on scenes of 4
    path = tmp_path / "four.json"
    path.write_text(json.dumps([four]))
    out = tmp_path / "r"
    shipped = (
        Path(__file__).resolve().parent.parent
        / "plugins/bench_builtins/weights/ddpm-unet-small-synthetic.safetensors"
    )
    args = ["run", "--checkpoint", str(shipped),
            "--conditions", str(path), "--evaluators", "none", "--device", "cpu", "--no-denoising-figure",
            "--scheduler", "ddim", "--steps", "1", "--guidance", "1", "--out", str(out)]  # fmt: skip
    result = runner.invoke(cli.main, args)
    assert result.exit_code == 0 and "conditions with more than 3 objects (four 1 of 1)" in result.output
