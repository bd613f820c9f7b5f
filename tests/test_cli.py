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
    result = runner.invoke(cli.main, ["train", "--recipe", "reference", "--no-compile", "--lr", "3e-4", "--ema", "0"])
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
    result = runner.invoke(
        cli.main,
        ["run", "--checkpoint", "random", "--preset", "tiny", "--scheduler", "ddim,no-such-sched",
         "--steps", "2", "--seeds", "0", "--evaluators", "none", "--no-denoising-figure",
         "--device", "cpu", "--out", str(out)],
    )
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
    result = runner.invoke(
        cli.main, ["run", "--checkpoint", "random", "--preset", "tiny", "--conditions", str(bad),
                   "--evaluators", "none", "--device", "cpu", "--out", str(tmp_path / "o")],
    )
    assert result.exit_code == 2
    assert "purple dragon" in result.output and "c.json" in result.output
    assert "Traceback" not in result.output
