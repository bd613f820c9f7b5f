"""The CLI's own behaviour: option plumbing, TOML configs, matrix runs, error rows."""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

from bench import cli
from bench.config import parse_int_list, read_config_file


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


# An untrained tiny model on the CPU, no evaluators: the fixed part of every `bench run` test below.
TINY_RUN = ["run", "--checkpoint", "random", "--preset", "tiny", "--evaluators", "none", "--device", "cpu"]


def tiny_run(runner: CliRunner, *args: str):
    return runner.invoke(cli.main, [*TINY_RUN, *args])


def test_matrix_values_parse_ranges_and_lists() -> None:
    assert parse_int_list("0-4") == [0, 1, 2, 3, 4]
    assert parse_int_list("25,100") == [25, 100]
    assert parse_int_list("0-1,7") == [0, 1, 7]
    with pytest.raises(click.BadParameter, match="not an integer"):
        parse_int_list("a-b", "seed")


def test_config_file_sections_and_lists(tmp_path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('seeds = "0-1"\n[run]\nscheduler = ["cosine", "ddim"]\nbatch-size = 8\n')
    assert read_config_file(path, "run") == {"seeds": "0-1", "scheduler": "cosine,ddim", "batch_size": 8}


def _capture_train(monkeypatch) -> dict:
    seen: dict = {}

    def fake_train(config, dataset):
        seen["config"] = config
        return type("S", (), {"steps": 0})()

    monkeypatch.setattr("bench.training.train", fake_train)
    monkeypatch.setattr(cli, "_dataset", lambda *a, **k: None)
    return seen


def test_train_flags_override_the_recipe_and_no_compile_is_kept(runner, monkeypatch) -> None:
    seen = _capture_train(monkeypatch)
    result = runner.invoke(
        cli.main, ["train", "--recipe", "reference", "--no-compile", "--lr", "3e-4", "--ema", "0"]
    )
    assert result.exit_code == 0, result.output
    config = seen["config"]
    assert config.compile is False  # an explicit --no-compile must reach the trainer
    assert config.lr == 3e-4
    assert config.ema_decay is None
    assert config.num_train_timesteps == 100  # the rest comes from the reference recipe


def test_command_line_flag_wins_over_config_file(runner, monkeypatch, tmp_path) -> None:
    seen = _capture_train(monkeypatch)
    path = tmp_path / "train.toml"
    path.write_text("[train]\nlr = 0.001\nbatch-size = 16\n")
    result = runner.invoke(cli.main, ["train", "--config", str(path), "--lr", "0.002"])
    assert result.exit_code == 0, result.output
    assert seen["config"].lr == 0.002
    assert seen["config"].batch_size == 16


def test_unknown_key_in_config_file_is_an_error(runner, tmp_path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[run]\nschedulr = 'cosine'\n")
    result = runner.invoke(cli.main, ["run", "--config", str(path)])
    assert result.exit_code != 0
    assert "schedulr" in result.output


def test_unknown_scheduler_in_matrix_records_an_error_row_and_the_rest_run(runner, tmp_path) -> None:
    out = tmp_path / "run"
    result = tiny_run(
        runner, "--scheduler", "ddim,no-such-sched", "--steps", "2", "--seeds", "0", "--no-denoising-figure",
        "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "results.json").read_text())["rows"]
    ok = [r for r in rows if r["scheduler"] == "ddim"]
    bad = [r for r in rows if r["scheduler"] == "no-such-sched"]
    assert ok and all(r["error"] is None and r["speed"]["nfe"] == 2 for r in ok)
    assert bad and all("unknown scheduler" in r["error"] for r in bad)
    assert (out / ok[0]["grid"]).exists()


def test_bad_condition_file_is_one_clear_line(runner, tmp_path) -> None:
    bad = tmp_path / "c.json"
    bad.write_text('[["red sphere", "purple dragon"]]')
    result = tiny_run(runner, "--conditions", str(bad), "--out", str(tmp_path / "o"))
    assert result.exit_code == 2
    assert "purple dragon" in result.output and "c.json" in result.output
    assert "Traceback" not in result.output


def test_a_folder_in_the_real_layout_trains_and_runs_without_conversion(
    runner, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "iclevr"
    assert runner.invoke(cli.main, ["data", "synth", "--out", str(folder), "--scenes", "2"]).exit_code == 0
    assert (folder / "train.json").exists() and (folder / "objects.json").exists()
    assert len(json.loads((folder / "train.json").read_text())) == 6  # 2 scenes x 3 frames

    out = tmp_path / "train"
    result = runner.invoke(
        cli.main,
        [
            "train",
            "--data",
            "iclevr",
            "--data-root",
            str(folder),
            "--preset",
            "tiny",
            "--max-steps",
            "2",
            "--batch-size",
            "2",
            "--device",
            "cpu",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert (out / "checkpoint" / "config.json").exists()

    shipped = tmp_path / "tiny.safetensors"
    assert runner.invoke(cli.main, ["export", str(out / "checkpoint"), str(shipped)]).exit_code == 0
    conditions = tmp_path / "c.json"
    assert (
        runner.invoke(cli.main, ["data", "conditions", "--out", str(conditions), "--n", "3"]).exit_code == 0
    )
    result = runner.invoke(
        cli.main,
        [
            "run",
            "--checkpoint",
            str(shipped),
            "--conditions",
            str(conditions),
            "--scheduler",
            "dpm++2m",
            "--steps",
            "2",
            "--evaluators",
            "none",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "run"),
        ],
    )
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "run" / "results.json").read_text())["rows"]
    assert [r["condition_set"] for r in rows] == ["c"] and rows[0]["n_images"] == 3
    assert (tmp_path / "run" / "denoising.png").exists()


def test_data_show_draws_a_contact_sheet(runner, tmp_path) -> None:
    folder = tmp_path / "iclevr"
    runner.invoke(cli.main, ["data", "synth", "--out", str(folder), "--scenes", "1"])
    sheet = tmp_path / "sheet.png"
    result = runner.invoke(cli.main, ["data", "show", str(folder), "--out", str(sheet), "--n", "3"])
    assert result.exit_code == 0, result.output
    from PIL import Image

    assert Image.open(sheet).size[0] > 64


def test_out_of_memory_in_a_cell_names_a_batch_size_to_try(runner, tmp_path, monkeypatch) -> None:
    import torch

    import bench.sampling

    real = bench.sampling.sample

    def sample(*args, steps=None, **kwargs):
        if steps != 1:  # let the 1-step warm-up through
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*args, steps=steps, **kwargs)

    monkeypatch.setattr(bench.sampling, "sample", sample)
    out = tmp_path / "run"
    result = tiny_run(
        runner, "--scheduler", "ddim", "--steps", "2", "--batch-size", "64", "--no-denoising-figure",
        "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert rows and all("try --batch-size 32" in r["error"] for r in rows)


def test_run_options_from_a_config_file_use_their_command_line_names(runner, tmp_path) -> None:
    path = tmp_path / "run.toml"
    out = tmp_path / "run"
    path.write_text(
        "[run]\n"
        'scheduler = ["ddim", "euler"]\nsteps = 2\nseeds = "0-1"\ncheckpoint = "random"\npreset = "tiny"\n'
        f'evaluators = "none"\nno-denoising-figure = true\ndevice = "cpu"\nout = "{out}"\n'
    )
    result = runner.invoke(cli.main, ["run", "--config", str(path), "--seeds", "3"])
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert {r["scheduler"] for r in rows} == {"ddim", "euler"}
    assert {r["seed"] for r in rows} == {3}  # the flag wins over the file
