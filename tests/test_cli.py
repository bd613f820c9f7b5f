"""The CLI's own behaviour: option plumbing, TOML configs, matrix runs, error rows."""

from __future__ import annotations

import json
import re

import click
import pytest
from click.testing import CliRunner

from bench import cli
from bench.config import parse_int_list, read_config_file
from bench.training import RECIPES


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
    with pytest.raises(click.BadParameter, match="seed range '3-1' runs backwards; write 1-3"):
        parse_int_list("3-1", "seed")


def test_a_compiled_run_says_what_its_first_pass_waits_for(runner, tmp_path, monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: module)  # eager, as if compiled
    args = ["--steps", "2", "--seeds", "0", "--out", str(tmp_path)]
    result = tiny_run(runner, *args, "--compile", "--tune-kernels")
    assert result.exit_code == 0, result.output
    assert (
        "the first pass compiles first (about 3.5 minutes per batch shape with --tune-kernels"
        in result.output
    )
    assert "torch.compile" not in tiny_run(runner, *args, "--no-compile").output


def test_data_ceiling_prints_and_keeps_the_evaluators_on_renders_of_each_set(runner, tmp_path) -> None:
    conditions = tmp_path / "two.json"
    conditions.write_text('[["red cube"], ["blue sphere", "gray cylinder"]]')
    args = [
        "data",
        "ceiling",
        "--conditions",
        str(conditions),
        "--per-condition",
        "2",
        "--out",
        str(tmp_path / "c"),
    ]
    result = runner.invoke(cli.main, args)
    assert result.exit_code == 0, result.output
    assert "condition set: two, model renders" in result.output
    row = json.loads((tmp_path / "c" / "results.json").read_text())["rows"][0]
    assert (row["model"], row["condition_set"], row["n_images"]) == ("renders", "two", 4)
    assert row["metrics"]["acc_n"] == 4 and 0.9 <= row["metrics"]["acc"] <= 1.0
    bad = tmp_path / "bad.json"
    bad.write_text('[["pink cube"]]')
    result = runner.invoke(cli.main, ["data", "ceiling", "--conditions", str(bad)])
    assert result.exit_code != 0 and "unknown label 'pink cube'" in result.output
    # FID's floor at N=4, into the same folder: its results.json replaced, as --force allows
    fid = runner.invoke(cli.main, [*args, "--evaluators", "acc,fid", "--ref-n", "6", "--force"])
    assert fid.exit_code == 0, fid.output
    metrics = json.loads((tmp_path / "c" / "results.json").read_text())["rows"][0]["metrics"]
    assert metrics["fid-judge"] >= 0 and metrics["fid-judge_n"] == 4 and "acc" in metrics
    result = runner.invoke(
        cli.main, ["data", "ceiling", "--conditions", str(conditions), "--evaluators", "acc,nope"]
    )
    assert result.exit_code != 0 and "unknown evaluator 'nope'" in result.output


def test_a_judged_run_draws_the_images_with_a_miss(runner, tmp_path) -> None:
    from PIL import Image

    # An untrained model draws noise: the judge finds few of the asked objects.
    args = ["--steps", "2", "--seeds", "0", "--evaluators", "iclevr-acc", "--out", str(tmp_path)]
    result = tiny_run(runner, *args)
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    test = next(r for r in rows if r["condition_set"] == "test")
    assert test["metrics"]["acc"] < 1 and test["misses"].endswith("test_misses.png")
    with Image.open(tmp_path / test["misses"]) as sheet:
        assert sheet.width == 8 * 192  # more than 8 of the 32 images have a miss
    assert "misses:  " in result.output and "test_misses.png" in result.output
    unjudged = tiny_run(runner, "--steps", "2", "--seeds", "0", "--out", str(tmp_path / "none"))
    assert unjudged.exit_code == 0 and "misses:" not in unjudged.output  # no evaluator can tell
    assert not list((tmp_path / "none").rglob("*_misses.png"))


def test_config_file_sections_and_lists(tmp_path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('seeds = "0-1"\n[run]\nscheduler = ["cosine", "ddim"]\nbatch-size = 8\n')
    assert read_config_file(path, "run") == {"seeds": "0-1", "scheduler": ["cosine", "ddim"], "batch_size": 8}
    path.write_text('[runn]\nevaluators = "bogus"\n')  # a misspelt table was ignored, silently
    with pytest.raises(click.BadParameter, match=r"table\(s\) \[runn\] that name no bench command"):
        read_config_file(path, "run", ["run", "train"])


def _capture_train(monkeypatch, stopped_by: str = "epochs/max_steps", main_process: bool = True) -> dict:
    seen: dict = {}

    def fake_train(config, dataset):
        seen["config"] = config
        summary = {
            "steps": 2,
            "stopped_by": stopped_by,
            "checkpoint": "out/checkpoint",
            "is_main_process": main_process,
        }
        return type("S", (), summary)()

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


def test_an_interrupted_training_says_how_to_go_on_and_exits_130(runner, monkeypatch) -> None:
    _capture_train(monkeypatch, stopped_by="interrupted")
    result = runner.invoke(cli.main, ["train", "--preset", "tiny"])
    assert result.exit_code == 130
    assert "interrupted at step 2: checkpoint out/checkpoint; the same command with --resume" in result.output


@pytest.mark.parametrize("stopped_by, code", [("interrupted", 130), ("epochs/max_steps", 0)])
def test_the_other_processes_of_a_launch_say_nothing_and_exit_like_the_main_one(
    runner, monkeypatch, stopped_by, code
) -> None:
    _capture_train(monkeypatch, stopped_by=stopped_by, main_process=False)
    result = runner.invoke(cli.main, ["train", "--preset", "tiny"])
    assert result.exit_code == code and result.output == ""


def test_an_interrupted_judge_training_exits_130_and_says_what_was_saved(runner, monkeypatch) -> None:
    def fake_train_judge(dataset, out_path, **kwargs):
        return {"epochs": 3, "stopped_by": "interrupted", "stopped_early": True}

    monkeypatch.setattr("bench_builtins.evaluators.judge_training.train_judge", fake_train_judge)
    monkeypatch.setattr(cli, "_dataset", lambda *a, **k: None)
    result = runner.invoke(cli.main, ["train-judge", "--out", "j.safetensors"])
    assert result.exit_code == 130
    assert "interrupted after epoch 3: the judge so far is saved in j.safetensors" in result.output


def test_judge_training_resume_needs_the_stopped_runs_state_and_replaces_its_judge(
    runner, monkeypatch, tmp_path
) -> None:
    from bench_builtins.evaluators.judge_training import JudgeResumeError

    calls = []

    def fake_train_judge(dataset, out_path, **kwargs):
        calls.append(kwargs["resume"])
        if kwargs["lr"] != 2e-3:
            raise JudgeResumeError("lr: stopped run 0.002, this one 0.001")
        return {"epochs": 2, "stopped_by": "epochs"}

    monkeypatch.setattr("bench_builtins.evaluators.judge_training.train_judge", fake_train_judge)
    monkeypatch.setattr(cli, "_dataset", lambda *a, **k: None)
    judge = tmp_path / "judge.safetensors"
    result = runner.invoke(cli.main, ["train-judge", "--out", str(judge), "--resume"])
    assert (
        result.exit_code == 2 and "nothing to resume" in result.output and "judge.resume.pt" in result.output
    )
    assert not calls
    judge.write_bytes(b"the judge of the stopped run")
    (tmp_path / "judge.resume.pt").write_bytes(b"its state")
    result = runner.invoke(cli.main, ["train-judge", "--out", str(judge), "--resume", "--lr", "0.001"])
    assert result.exit_code == 2 and "lr: stopped run 0.002, this one 0.001" in result.output
    result = runner.invoke(cli.main, ["train-judge", "--out", str(judge), "--resume", "--lr", "0.002"])
    assert result.exit_code == 0, (
        result.output
    )  # no --force: the stopped run's judge is the one it goes on with
    assert calls == [True, True]


def test_judge_training_never_replaces_a_judge_unasked(runner, monkeypatch, tmp_path) -> None:
    calls = []
    monkeypatch.setattr(
        "bench_builtins.evaluators.judge_training.train_judge",
        lambda dataset, out_path, **kwargs: calls.append(out_path) or {"epochs": 1, "stopped_by": "epochs"},
    )
    monkeypatch.setattr(cli, "_dataset", lambda *a, **k: None)
    judge = tmp_path / "judge.safetensors"
    judge.write_bytes(b"hours of training")
    result = runner.invoke(cli.main, ["train-judge", "--out", str(judge)])
    assert result.exit_code == 2 and "exists; pass --force to replace them" in result.output and not calls
    # nor the file its metrics would overwrite: a user's k.json beside k.safetensors
    mine = tmp_path / "k.json"
    mine.write_text('[["red sphere"]]')
    result = runner.invoke(cli.main, ["train-judge", "--out", str(tmp_path / "k.safetensors")])
    assert result.exit_code == 2 and f"{mine} exists; pass --force" in result.output and not calls
    result = runner.invoke(cli.main, ["train-judge", "--out", str(judge), "--force"])
    assert result.exit_code == 0, result.output
    assert calls == [str(judge)]
    # a .pth name would promise the course's torch format: refused before any work
    result = runner.invoke(cli.main, ["train-judge", "--out", str(tmp_path / "judge.pth")])
    assert result.exit_code == 2 and "name it *.safetensors" in result.output and calls == [str(judge)]
    # synthetic-data options with a folder are said to do nothing
    folder = tmp_path / "course"
    folder.mkdir()
    result = runner.invoke(cli.main, ["train-judge", "--data", "iclevr", "--data-root", str(folder), "--scenes", "9",
                                      "--out", str(tmp_path / "j2.safetensors")])  # fmt: skip
    assert (
        result.exit_code == 0
        and "--scenes: synthetic-data options, ignored with --data iclevr" in result.output
    )


@pytest.mark.parametrize(
    "flag, field",
    [
        ("--lr", "lr"),
        ("--batch-size", "batch_size"),
        ("--epochs", "epochs"),
        ("--max-steps", "max_steps"),
        ("--min-snr-gamma", "min_snr_gamma"),
        ("--prediction", "prediction_type"),
    ],
)
def test_train_help_states_each_recipes_own_default(runner, flag, field) -> None:
    """The help text is written by hand (the CLI does not import torch to read RECIPES): it must
    say what each recipe really uses, "none"/"off" where the recipe leaves the limit unset."""
    text = " ".join(runner.invoke(cli.main, ["train", "--help"]).output.split())
    # within the option's own help: no other "--option" between the flag and the text
    option = re.search(rf"{flag}\b(?:(?! --[a-z]).)*?default: the recipe's \(([^)]*)\)", text, re.IGNORECASE)
    assert option, f"{flag} does not name the recipes' defaults"
    stated = dict(part.split(": ") for part in option.group(1).split(", "))
    assert set(stated) == set(RECIPES)
    for name, recipe in RECIPES.items():
        value = getattr(recipe, field)
        if value is None:
            assert stated[name] in ("none", "off"), (name, stated[name])
        elif isinstance(value, str):
            assert stated[name] == value, (name, stated[name])
        else:
            assert float(stated[name]) == value, (name, stated[name], value)


@pytest.mark.parametrize("args, forced", [([], True), (["--no-force-layout-opt"], False)])
def test_train_forces_inductors_layout_unless_told_not_to(runner, monkeypatch, args, forced) -> None:
    seen = _capture_train(monkeypatch)
    result = runner.invoke(cli.main, ["train", *args])
    assert result.exit_code == 0, result.output
    assert seen["config"].force_layout_opt is forced


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


def test_a_config_file_in_another_encoding_is_read_or_named(tmp_path) -> None:
    """A UTF-16 file (a Windows editor's "Unicode") was a UnicodeDecodeError traceback, and a UTF-8
    file with a byte-order mark was "not valid TOML: Invalid statement (at line 1, column 1)"."""
    path = tmp_path / "run.toml"
    path.write_bytes("\ufeffsteps = 2\n".encode())
    assert read_config_file(path, "run") == {"steps": 2}
    path.write_text("steps = 2\n", encoding="utf-16")
    with pytest.raises(click.BadParameter, match="is not UTF-8 text \\(byte 0\\); save it as UTF-8"):
        read_config_file(path, "run")


@pytest.mark.parametrize(
    ("command", "text", "says"),
    [
        ("run", "[train-judge]\nepochs = 1\n", "it holds only [train-judge]"),
        ("train", "[run]\nsteps = 2\n", "it holds only [run]"),
        ("run", "", "it is empty"),
    ],
)
def test_a_config_file_that_gives_the_command_nothing_is_an_error(
    runner, tmp_path, command, text, says
) -> None:
    """A [train-judge] file given to `bench run` started the whole default run (shipped weights,
    100 steps) as if no file were given."""
    path = tmp_path / "other.toml"
    path.write_text(text)
    result = runner.invoke(cli.main, [command, "--config", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and f"gives `bench {command}` no option: {says}" in result.output, (
        result.output
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("batch-size = 1.5", "'1.5' is not a valid integer"),  # was truncated to 1 without a word
        ("compile = 0", "compile = 0 in"),  # was a traceback from click
        ("steps = true", "this option takes a value"),
    ],
)
def test_config_values_are_checked_as_the_command_line_would_be(runner, tmp_path, line, says) -> None:
    path = tmp_path / "run.toml"
    path.write_text(line + "\n")
    out = tmp_path / "run"
    args = ["run", "--config", str(path), "--checkpoint", "random", "--preset", "tiny", "--out", str(out)]
    result = runner.invoke(cli.main, args)
    assert result.exit_code == 2 and says in result.output and not out.exists()


def test_unknown_plugin_name_fails_before_any_work(runner, tmp_path) -> None:
    # A checkpoint that does not exist would be the first error if anything were loaded first.
    for option, name, hint in (
        ("--scheduler", "ddim,cosinee", "unknown scheduler 'cosinee'. Did you mean: cosine?"),
        ("--evaluators", "iclevr-acc,fdi", "unknown evaluator 'fdi'. Did you mean: fid?"),
    ):
        out = tmp_path / name
        result = runner.invoke(
            cli.main, ["run", option, name, "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(out)]
        )
        assert result.exit_code != 0
        assert hint in result.output and "does not exist" not in result.output
        assert not out.exists()


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--steps", "25,0", "steps must be at least 1, got 0"),
        ("--guidance", "5,-1", "guidance -1 is not a scale"),
        ("--guidance", "nan", "guidance nan is not a scale"),
        ("--batch-size", "0", "--batch-size must be at least 1, got 0"),
        ("--ref-n", "0", "--ref-n must be at least 2, got 0"),
        ("--device", "bogus", "--device 'bogus' is not a device"),
    ],
)
def test_meaningless_values_fail_before_any_work(runner, tmp_path, option, value, message) -> None:
    # Step 0 once fell back to the scheduler's default and ran 100 steps under the label "0".
    out = tmp_path / "o"
    result = runner.invoke(
        cli.main, ["run", option, value, "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(out)]
    )
    assert result.exit_code != 0
    assert message in result.output and "does not exist" not in result.output
    assert "Traceback" not in result.output and not out.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["data", "conditions", "--n", "0"], "Invalid value for '--n'"),
        (["data", "conditions", "--objects", "0"], "object counts must lie in 1-24, got 0"),
        (["data", "conditions", "--objects", "30"], "object counts must lie in 1-24, got 30"),
        (
            ["data", "conditions", "--objects", "1", "--shared"],
            "--shared needs conditions of 2 or more objects",
        ),
        (["data", "synth", "--scenes", "0"], "Invalid value for '--scenes'"),
        (["data", "synth", "--max-objects", "0"], "Invalid value for '--max-objects'"),
        (["data", "cache", "--max-objects", "11"], "Invalid value for '--max-objects'"),
        (["train", "--scenes", "0"], "Invalid value for '--scenes'"),
        (["train-judge", "--out", "j.safetensors", "--epochs", "0"], "Invalid value for '--epochs'"),
        (["train-judge", "--out", "j.safetensors", "--batch-size", "0"], "Invalid value for '--batch-size'"),
        (["train-judge", "--out", "j.safetensors", "--lr", "0"], "Invalid value for '--lr'"),
    ],
)
def test_sizes_that_mean_nothing_are_one_clear_line(runner, tmp_path, args, message) -> None:
    # --n 0 wrote an empty condition file; --objects 0 and --max-objects 0 were tracebacks.
    out = tmp_path / "out"
    writes_out = args[:2] in (["data", "conditions"], ["data", "synth"])
    result = runner.invoke(cli.main, [*args, *(["--out", str(out)] if writes_out else [])])
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output and not out.exists()


@pytest.mark.parametrize(
    "command",
    [
        ["train-judge", "--out", "{taken}/judge.safetensors"],
        ["data", "synth", "--scenes", "1", "--out", "{taken}/folder"],
        ["data", "show", "{tmp}", "--out", "{taken}/sheet.png"],
        ["data", "conditions", "--out", "{taken}/c.json"],
        ["data", "ceiling", "--out", "{taken}/ceiling"],
        ["export", "{shipped}", "{taken}/again.safetensors"],
    ],
)
def test_an_output_beneath_a_file_is_one_line_before_any_work(runner, tmp_path, monkeypatch, command) -> None:
    """A file where an output's folder goes was a FileExistsError or NotADirectoryError traceback;
    train-judge's came at the save, after the whole training."""
    from bench.weights import shipped_weights
    from bench_builtins.models.ddpm_unet import SHIPPED_WEIGHTS

    def forbidden(*args, **kwargs):
        raise AssertionError("work started before --out was checked")

    monkeypatch.setattr(cli, "_dataset", forbidden)
    monkeypatch.setattr("bench_builtins.evaluators.judge_training.train_judge", forbidden)
    monkeypatch.setattr("bench_builtins.evaluators.ceiling.ceiling_result", forbidden)
    monkeypatch.setattr("bench_builtins.datasets.synthetic.export.write_synthetic_folder", forbidden)
    taken = tmp_path / "taken.json"
    taken.write_text('[["red sphere"]]')
    shipped = shipped_weights(SHIPPED_WEIGHTS)
    args = [a.format(taken=taken, tmp=tmp_path, shipped=shipped) for a in command]
    result = runner.invoke(cli.main, args)
    assert result.exit_code == 2, result.output
    assert f"{taken} is a file" in result.output and "Traceback" not in result.output
    assert taken.read_text() == '[["red sphere"]]'


def test_data_ceiling_replaces_a_results_file_only_with_force(runner, tmp_path, monkeypatch) -> None:
    """`data ceiling --out` a bench run's folder replaced the run's rows with the renders', keeping
    nothing."""
    calls: list[str] = []

    def ceiling_result(*args, **kwargs):
        calls.append("ran")
        raise click.ClickException("stopped here: the check let it through")

    monkeypatch.setattr("bench_builtins.evaluators.ceiling.ceiling_result", ceiling_result)
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text('{"rows": []}')
    conditions = str(tmp_path / "c.json")
    (tmp_path / "c.json").write_text('[["red sphere"]]')
    result = runner.invoke(cli.main, ["data", "ceiling", "--conditions", conditions, "--out", str(run)])
    assert result.exit_code == 2 and "results.json exists" in result.output and "--force" in result.output
    assert calls == [] and (run / "results.json").read_text() == '{"rows": []}'
    result = runner.invoke(
        cli.main, ["data", "ceiling", "--conditions", conditions, "--out", str(run), "--force"]
    )
    assert calls == ["ran"] and "stopped here" in result.output
    result = runner.invoke(
        cli.main, ["data", "ceiling", "--conditions", conditions, "--out", str(tmp_path / "new")]
    )
    assert calls == ["ran", "ran"]  # a new folder needs no --force


def test_data_conditions_replaces_an_existing_file_only_with_force(runner, tmp_path) -> None:
    """It overwrote any --out, a hand-edited or published condition set included."""
    out = tmp_path / "mine.json"
    out.write_text('[["red cube"]]')
    result = runner.invoke(cli.main, ["data", "conditions", "--n", "2", "--out", str(out)])
    assert result.exit_code == 2 and "exists; pass --force to replace it" in result.output
    assert out.read_text() == '[["red cube"]]'
    result = runner.invoke(cli.main, ["data", "conditions", "--n", "2", "--out", str(out), "--force"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(out.read_text())) == 2


def test_a_failing_cell_records_its_error_and_the_rest_run(runner, tmp_path, monkeypatch) -> None:
    from bench import sampling

    real = sampling.sample

    def sample_or_fail(*args, **kwargs):
        if kwargs["steps"] == 3:
            raise RuntimeError("out of memory (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(sampling, "sample", sample_or_fail)
    out = tmp_path / "run"
    result = tiny_run(
        runner, "--scheduler", "ddim", "--steps", "3,2", "--seeds", "0", "--no-denoising-figure",
        "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 1, result.output  # the rows are written, and a script sees the failure
    assert "row(s) failed; see the 'error' column" in result.output
    rows = json.loads((out / "results.json").read_text())["rows"]
    ok = [r for r in rows if r["steps"] == 2]
    bad = [r for r in rows if r["steps"] == 3]
    assert ok and all(r["error"] is None and r["speed"]["nfe"] == 2 for r in ok)
    assert bad and all("out of memory (simulated)" in r["error"] for r in bad)
    assert (out / ok[0]["grid"]).exists()


def test_a_cells_peak_memory_counts_its_batch_shapes_warm_up(runner, tmp_path, monkeypatch) -> None:
    """Compile and CUDA-graph capture happen in the warm-up, whose graphs the cells replay while
    allocating almost nothing: each cell's peak and seconds before the clock are the larger of its
    own and its shape's warm-up's. Simulated (the CPU has no peak): warm-up 1-step calls read
    4,000 MB and 60 s guided, 2,000 MB and 50 s unguided; the timed cells 500 MB and 0.1 s."""
    from dataclasses import replace

    from bench import sampling

    real = sampling.sample

    def with_peaks(*args, **kwargs):
        result = real(*args, **kwargs)
        guided = kwargs.get("guidance", 1.0) != 1.0
        if kwargs["steps"] == 1:  # the warm-up
            return replace(
                result, peak_memory_mb=4000.0 if guided else 2000.0, warmup_seconds=60.0 if guided else 50.0
            )
        return replace(result, peak_memory_mb=500.0, warmup_seconds=0.1)

    monkeypatch.setattr(sampling, "sample", with_peaks)
    out = tmp_path / "run"
    result = tiny_run(
        runner, "--scheduler", "ddim", "--steps", "2", "--guidance", "1,3", "--seeds", "0",
        "--no-denoising-figure", *_two_conditions(tmp_path), "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "results.json").read_text())["rows"]
    figures = {r["guidance"]: (r["speed"]["peak_memory_mb"], r["speed"]["warmup_seconds"]) for r in rows}
    assert figures == {1.0: (2000.0, 50.0), 3.0: (4000.0, 60.0)}
    # A guidance interval runs both shapes in one cell: both warm-ups count (here the unguided one
    # is the larger).
    monkeypatch.setattr(
        sampling,
        "sample",
        lambda *a, **k: replace(
            real(*a, **k),
            peak_memory_mb=(7000.0 if k.get("guidance", 1.0) == 1.0 else 3000.0)
            if k["steps"] == 1
            else 500.0,
        ),
    )
    interval = tmp_path / "interval"
    result = tiny_run(
        runner, "--scheduler", "ddim", "--steps", "2", "--guidance", "3", "--guidance-interval", "0,500",
        "--seeds", "0", "--no-denoising-figure", *_two_conditions(tmp_path), "--out", str(interval),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads((interval / "results.json").read_text())["rows"]
    assert {r["speed"]["peak_memory_mb"] for r in rows} == {7000.0}


def _count_cells(monkeypatch, fail_steps: int | None = None) -> list[int]:
    """Patch sampling so each timed cell's call is counted (warm-up calls use 1 step, the
    denoising figure records frames) and cells of ``fail_steps`` steps fail."""
    from bench import sampling

    real, calls = sampling.sample, []

    def counted(*args, **kwargs):
        if kwargs["steps"] != 1 and not kwargs.get("record_frames"):
            calls.append(kwargs["steps"])
            if kwargs["steps"] == fail_steps:
                raise RuntimeError("out of memory (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(sampling, "sample", counted)
    return calls


def _two_conditions(tmp_path) -> list[str]:
    """A condition set of two, so that each resume test samples a few images, not 64."""
    path = tmp_path / "two.json"
    path.write_text('[["red sphere"], ["blue cube", "green cylinder"]]')
    return ["--conditions", str(path)]


def test_resume_keeps_finished_cells_and_samples_the_rest(runner, tmp_path, monkeypatch) -> None:
    out = tmp_path / "run"
    args = ["--scheduler", "ddim", "--steps", "2", "--no-denoising-figure", "--out", str(out)]
    args += _two_conditions(tmp_path)
    calls = _count_cells(monkeypatch)
    assert tiny_run(runner, *args, "--seeds", "0").exit_code == 0
    first, _ = _rows_and_config(out)
    args.remove("--no-denoising-figure")  # no row depends on it: the resumed run may draw it
    result = tiny_run(runner, *args, "--seeds", "0-2", "--resume")  # the matrix grows by two seeds
    assert result.exit_code == 0, result.output
    assert "1 of 3 cells are in" in result.output
    rows, config = _rows_and_config(out)
    assert len(calls) == 3  # seed 0 once, then seeds 1 and 2
    assert [r["seed"] for r in rows] == [0, 1, 2] and config["seeds"] == [0, 1, 2]
    assert rows[:1] == first  # kept as measured, not sampled again
    assert tiny_run(runner, *args, "--seeds", "0-2", "--resume").exit_code == 0
    assert len(calls) == 3 and _rows_and_config(out)[0] == rows  # nothing left to sample


def test_resume_samples_failed_cells_again(runner, tmp_path, monkeypatch) -> None:
    out = tmp_path / "run"
    args = [
        "--scheduler",
        "ddim",
        "--steps",
        "3,2",
        "--seeds",
        "0",
        "--no-denoising-figure",
        "--out",
        str(out),
    ]
    args += _two_conditions(tmp_path)
    calls = _count_cells(monkeypatch, fail_steps=3)
    assert tiny_run(runner, *args).exit_code == 1  # a failed cell: exit 1
    assert any(r["error"] for r in _rows_and_config(out)[0])
    monkeypatch.undo()
    calls = _count_cells(monkeypatch)
    assert tiny_run(runner, *args, "--resume").exit_code == 0
    assert calls == [3]
    assert not any(r["error"] for r in _rows_and_config(out)[0])


@pytest.mark.parametrize(
    "second, message",
    [
        (["--seeds", "0", "--batch-size", "8"], "(batch_size: null -> 8; sampling.batch_size: null -> 8)"),
        (["--seeds", "1"], "holds 1 cell(s) this matrix leaves out (ddim 2 steps g1 seed 0)"),
    ],
)
def test_resume_refuses_another_configuration(runner, tmp_path, second, message) -> None:
    out = tmp_path / "run"
    args = ["--scheduler", "ddim", "--steps", "2", "--no-denoising-figure", "--out", str(out)]
    args += _two_conditions(tmp_path)
    assert tiny_run(runner, *args, "--seeds", "0").exit_code == 0
    before = (out / "results.json").read_text()
    result = tiny_run(runner, *args, *second, "--resume")
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert (out / "results.json").read_text() == before


def test_resume_takes_each_process_cuda_index_for_the_same_device(tmp_path) -> None:
    from bench.run_resume import finished_cells

    env = {"device": "cuda:0", "gpu": "H100", "gpu_count": 2, "libraries": {}, "git": {"revision": "a"}}
    row = {"scheduler": "ddim", "steps": 2, "guidance": 1.0, "seed": 0, "condition_set": "test", "model": "m"}
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"config": {"ref_n": 8}, "environment": env, "rows": [row]}))
    # Process 1 of a two-GPU launch compares its cuda:1 against the cuda:0 the main one wrote.
    done = finished_cells(path, {"ref_n": 8}, {**env, "device": "cuda:1"}, [("ddim", 2, 1.0, 0)], ["test"])
    assert list(done) == [("ddim", 2, 1.0, 0)]


def test_an_interrupted_run_points_at_resume(runner, tmp_path, monkeypatch) -> None:
    out = tmp_path / "run"

    def one_cell_then_ctrl_c(config, **_):
        (out / "results.json").parent.mkdir(parents=True)
        (out / "results.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr("bench.runner.run", one_cell_then_ctrl_c)
    result = tiny_run(runner, "--out", str(out))
    assert result.exit_code == 130
    assert "results.json holds the finished cells; --resume goes on from them" in result.output


def test_an_interrupt_in_any_command_exits_130(runner, monkeypatch) -> None:
    """Ctrl-C while `bench data cache` rendered said "Aborted!" and exited 1, like a failure."""

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_dataset", ctrl_c)
    result = runner.invoke(cli.main, ["data", "cache", "--scenes", "1"])
    assert result.exit_code == 130, result.output
    assert "interrupted" in result.output and "Aborted" not in result.output


def test_an_interrupt_before_the_first_cell_does_not_offer_an_earlier_runs_file(
    runner, tmp_path, monkeypatch
) -> None:
    import os

    out = tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_text("{}")
    os.utime(out / "results.json", (0, 1_000_000_000))  # written by a run of 2001

    def ctrl_c_in_the_first_cell(config, **_):
        raise KeyboardInterrupt

    monkeypatch.setattr("bench.runner.run", ctrl_c_in_the_first_cell)
    result = tiny_run(runner, "--out", str(out))
    assert result.exit_code == 130
    assert "interrupted before the first cell finished" in result.output and "--resume" not in result.output


def test_an_interrupt_after_replacing_leaves_no_results_naming_deleted_images(
    runner, tmp_path, monkeypatch
) -> None:
    """A replacing run deleted the old images and was stopped before its first cell: the old
    results.json stayed, and --resume then took its cells for finished, images and all."""
    from bench.run_resume import remove_replaced_outputs

    out = tmp_path / "run"
    (out / "images").mkdir(parents=True)
    (out / "images" / "grid.png").write_bytes(b"png")
    row = {"model": "m", "scheduler": "ddim", "steps": 1, "seed": 0, "condition_set": "one", "guidance": 1.0}
    (out / "results.json").write_text(json.dumps({"rows": [{**row, "grid": "images/grid.png"}]}))

    def replace_then_ctrl_c(config, **_):
        remove_replaced_outputs(out)  # as run() does before its first cell
        raise KeyboardInterrupt

    monkeypatch.setattr("bench.runner.run", replace_then_ctrl_c)
    result = tiny_run(runner, "--out", str(out))
    assert result.exit_code == 130 and not (out / "results.json").exists()
    assert "the earlier run's rows are in" in result.output and "results.replaced.json" in result.output


def test_a_checkpoint_is_recorded_by_its_absolute_path(runner, tmp_path, monkeypatch) -> None:
    """So that a --resume run from another folder names the same checkpoint the same way."""
    seen = {}
    monkeypatch.setattr("bench.runner.run", lambda config, **_: seen.setdefault("config", config) and None)
    (tmp_path / "weights.safetensors").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    tiny = [a for a in TINY_RUN if a not in ("--checkpoint", "random", "--preset", "tiny")]
    assert runner.invoke(cli.main, [*tiny, "--checkpoint", "weights.safetensors"]).exit_code == 0
    assert seen["config"].checkpoint == str(tmp_path.resolve() / "weights.safetensors")


def test_resume_refuses_a_file_from_another_machine(runner, tmp_path) -> None:
    out = tmp_path / "run"
    args = ["--scheduler", "ddim", "--steps", "2", "--seeds", "0", "--no-denoising-figure", "--out", str(out)]
    args += _two_conditions(tmp_path)
    assert tiny_run(runner, *args).exit_code == 0
    data = json.loads((out / "results.json").read_text())
    data["environment"]["cpu_threads"] += 1  # its speeds were measured with other threads
    (out / "results.json").write_text(json.dumps(data))
    result = tiny_run(runner, *args, "--resume")
    threads = data["environment"]["cpu_threads"]
    assert result.exit_code == 2 and f"(environment.cpu_threads: {threads} -> {threads - 1})" in result.output


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
    assert f"--data iclevr: 6 images from {folder / 'images'}, at 64x64" in result.output  # what was read
    assert (out / "checkpoint" / "config.json").exists()

    shipped = tmp_path / "tiny.safetensors"
    exported = runner.invoke(cli.main, ["export", str(out / "checkpoint"), str(shipped)])
    assert exported.exit_code == 0 and "no EMA weights" not in exported.output  # trained with EMA
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


def test_data_show_reads_a_folder_as_bench_train_does(runner, tmp_path) -> None:
    """A malformed train.json or a damaged PNG was a traceback, and PNGs in a folder of their own
    beside train.json (the course layout, which bench train reads) were refused."""
    from PIL import Image

    folder = tmp_path / "course"
    (folder / "pngs").mkdir(parents=True)
    for name in ("a.png", "b.png"):
        Image.new("RGB", (320, 240), (90, 90, 90)).save(folder / "pngs" / name)
    (folder / "train.json").write_text('{"a.png": ["red sphere"], "b.png": ["blue cube"]}')
    sheet = tmp_path / "sheet.png"
    result = runner.invoke(cli.main, ["data", "show", str(folder), "--out", str(sheet)])
    assert result.exit_code == 0 and sheet.exists(), result.output
    (folder / "pngs" / "b.png").write_bytes(b"not a png")
    result = runner.invoke(cli.main, ["data", "show", str(folder), "--out", str(sheet)])
    assert result.exit_code == 2 and "b.png cannot be read as an image" in result.output, result.output
    for train, message in [
        ('{"a.png": ', "train.json: malformed JSON at line 1"),
        ('[["red sphere"]]', "expected a JSON object"),
        ('{"a.png": 5}', "each condition must be a list of label names"),
    ]:
        (folder / "train.json").write_text(train)
        result = runner.invoke(cli.main, ["data", "show", str(folder), "--out", str(sheet)])
        assert result.exit_code == 2 and message in result.output, result.output


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
    assert result.exit_code == 1, result.output  # every cell failed
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert rows and all("try --batch-size 32" in r["error"] for r in rows)


def test_repeatable_options_from_a_config_file(runner, tmp_path) -> None:
    # `conditions` is repeatable: a TOML list (or one string) was joined into one bad value.
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text('[["red sphere"]]')
    b.write_text('[["cyan cube"]]')
    for value, sets in ((f'["{a}", "{b}"]', {"a", "b"}), (f'"{a}"', {"a"})):
        path, out = tmp_path / "run.toml", tmp_path / "out"
        path.write_text(
            f"[run]\nconditions = {value}\nscheduler = 'ddim'\nsteps = 1\ncheckpoint = 'random'\n"
            f"preset = 'tiny'\nevaluators = 'none'\nno-denoising-figure = true\ndevice = 'cpu'\nout = '{out}'\n"
        )
        result = runner.invoke(cli.main, ["run", "--config", str(path)])
        assert result.exit_code == 0, result.output
        rows = json.loads((out / "results.json").read_text())["rows"]
        assert {r["condition_set"] for r in rows} == sets


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


@pytest.mark.parametrize(
    "value, message",
    [
        ("5", "is not LO,HI"),
        ("a,b", "'a' is not a number"),
        ("800,300", "lower end 800 is above the upper end 300"),
        ("-5,100", "timesteps are 0 or more"),
        ("1,2,3", "is not LO,HI"),
    ],
)
def test_bad_guidance_interval_is_one_clear_line(runner, tmp_path, value, message) -> None:
    result = tiny_run(runner, "--guidance-interval", value, "--out", str(tmp_path / "o"))
    assert result.exit_code == 2
    assert "--guidance-interval" in result.output and message in result.output
    assert "Traceback" not in result.output and not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "flags, message",
    [(("--autotune", "--no-compile"), "needs compile"), (("--cuda-graphs",), "needs a CUDA device")],
)
def test_impossible_speed_switches_are_one_clear_line(runner, tmp_path, flags, message) -> None:
    result = tiny_run(runner, *flags, "--device", "cpu", "--out", str(tmp_path / "o"))
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def _rows_and_config(out) -> tuple[list[dict], dict]:
    data = json.loads((out / "results.json").read_text())
    return data["rows"], data["config"]


def _tiny_checkpoint(path):
    """A training checkpoint of the tiny preset (random weights, cosine, 1000 timesteps)."""
    import torch

    from bench.checkpoints import save_checkpoint
    from bench.noise import noise_config
    from bench_builtins.models.ddpm_unet import make_ddpm_unet

    torch.manual_seed(0)
    model = make_ddpm_unet("tiny")
    return save_checkpoint(path, model_name="ddpm-unet", model=model, model_config=model.config,
                           noise_config=noise_config("cosine", 1000))  # fmt: skip


def test_export_writes_sampling_defaults_and_run_uses_them(runner, tmp_path) -> None:
    from safetensors import safe_open

    ck = _tiny_checkpoint(tmp_path / "ck")
    shipped = tmp_path / "tiny.safetensors"
    args = ["export", str(ck), str(shipped), "--guidance", "3", "--guidance-interval", "300,1000"]
    result = runner.invoke(cli.main, args)
    assert result.exit_code == 0, result.output
    assert "sampling defaults: guidance 3, interval 300-1000" in result.output
    assert "holds no EMA weights (trained with --ema 0): wrote the model's own" in result.output
    # Re-writing the exported file keeps (and names) the defaults it carries.
    again = runner.invoke(
        cli.main, ["export", str(shipped), str(tmp_path / "bf16.safetensors"), "--dtype", "bf16"]
    )
    assert again.exit_code == 0 and "sampling defaults: guidance 3, interval 300-1000" in again.output
    assert "bf16.safetensors (bfloat16) sha256" in again.output  # says the dtype it wrote
    with safe_open(str(shipped), "pt") as f:
        assert json.loads(f.metadata()["sampling_defaults"]) == {
            "guidance": 3.0,
            "guidance_interval": [300, 1000],
        }
    assert "was not kept" not in again.output
    # New guidance alone replaces the defaults whole; the dropped interval is named.
    regraded = tmp_path / "g5.safetensors"
    again = runner.invoke(cli.main, ["export", str(shipped), str(regraded), "--guidance", "5"])
    assert again.exit_code == 0 and "sampling defaults: guidance 5\n" in again.output, again.output
    assert "guidance interval 300-1000 was not kept" in again.output
    with safe_open(str(regraded), "pt") as f:
        assert json.loads(f.metadata()["sampling_defaults"]) == {"guidance": 5.0}

    conditions = tmp_path / "c.json"
    conditions.write_text('[["red sphere"], ["cyan cube", "gray cylinder"]]')
    base = ["run", "--checkpoint", str(shipped), "--conditions", str(conditions), "--scheduler", "ddim",
            "--steps", "2", "--evaluators", "none", "--device", "cpu", "--no-denoising-figure"]  # fmt: skip

    def run(name: str, *extra: str):
        out = tmp_path / name
        invoked = runner.invoke(cli.main, [*base, "--out", str(out), *extra])
        assert invoked.exit_code == 0, invoked.output
        return invoked.output, *_rows_and_config(out)

    # No --guidance: the checkpoint's guidance and interval (ddim 2 steps: t = 999 and 499, both inside).
    output, rows, config = run("defaults")
    assert "guidance 3 and interval 300-1000 from the checkpoint's sampling defaults" in output
    assert "--guidance 1 turns guidance off" in output
    assert [(r["guidance"], r["guidance_interval"], r["speed"]["guided_nfe"]) for r in rows] == [
        (3.0, [300.0, 1000.0], 2)
    ]
    assert config["guidance_from"] == "checkpoint" and config["guidance"] == [3.0]
    assert config["model_meta"]["sampling_defaults"]["guidance"] == 3.0
    # An explicit --guidance wins, and the checkpoint's interval goes with its guidance.
    output, rows, config = run("explicit", "--guidance", "1")
    assert "sampling defaults" not in output
    assert [(r["guidance"], r["guidance_interval"], r["speed"]["guided_nfe"]) for r in rows] == [
        (1.0, None, 0)
    ]
    assert config["guidance_from"] == "option" and config["guidance_interval"] is None
    output, rows, _ = run("explicit-3", "--guidance", "3")
    assert [(r["guidance"], r["guidance_interval"]) for r in rows] == [(3.0, None)]
    # --guidance-interval alone keeps the checkpoint's guidance with the given interval.
    output, rows, _ = run("own-interval", "--guidance-interval", "900,1000")
    assert "(interval 900-1000 from --guidance-interval)" in output
    assert [(r["guidance_interval"], r["speed"]["guided_nfe"], r["speed"]["nfe"]) for r in rows] == [
        ([900.0, 1000.0], 1, 2)
    ]
    report = runner.invoke(
        cli.main, ["report", str(tmp_path / "own-interval" / "results.json"), "--format", "plain"]
    )
    assert "guidance interval" in report.output and "900-1000" in report.output, report.output


def test_export_of_a_truncated_file_is_one_line(runner, tmp_path) -> None:
    shipped = tmp_path / "w.safetensors"
    assert (
        runner.invoke(cli.main, ["export", str(_tiny_checkpoint(tmp_path / "ck")), str(shipped)]).exit_code
        == 0
    )
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(shipped.read_bytes()[:60000])
    result = runner.invoke(cli.main, ["export", str(truncated), str(tmp_path / "again.safetensors")])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "cut.safetensors" in result.output and not (tmp_path / "again.safetensors").exists()


def test_export_refuses_an_interval_without_guidance(runner, tmp_path) -> None:
    ck = _tiny_checkpoint(tmp_path / "ck")
    out = tmp_path / "w.safetensors"
    # past the checkpoint's last training timestep (999): it would guide no step
    result = runner.invoke(
        cli.main, ["export", str(ck), str(out), "--guidance", "3", "--guidance-interval", "1000,5000"]
    )
    assert result.exit_code == 2 and "starts past the last training timestep 999" in result.output
    assert not out.exists()
    result = runner.invoke(cli.main, ["export", str(ck), str(out), "--guidance-interval", "300,1000"])
    assert result.exit_code == 2 and "give the guidance too" in result.output and not out.exists()
    result = runner.invoke(cli.main, ["export", str(ck), str(out), "--guidance-interval", "3"])
    assert result.exit_code == 2 and "is not LO,HI" in result.output


def test_export_refuses_to_write_into_the_checkpoint_it_reads(runner, tmp_path) -> None:
    from bench.checkpoints import load_checkpoint

    ck = _tiny_checkpoint(tmp_path / "ck")
    out = ck / "ema.safetensors"  # would replace a file whose sha256 the checkpoint records
    before = out.read_bytes() if out.exists() else None
    result = runner.invoke(cli.main, ["export", str(ck), str(out)])
    assert result.exit_code == 2 and "is inside the checkpoint folder" in result.output
    assert (out.read_bytes() if out.exists() else None) == before
    load_checkpoint(ck)  # still whole


def test_a_checkpoint_without_training_timesteps_is_named_damaged(runner, tmp_path) -> None:
    """A hand-edited num_train_timesteps of 0 was read as "use --steps 0 or fewer", a missing one
    as a schedule mismatch ("trained None")."""
    ck = _tiny_checkpoint(tmp_path / "ck")
    config = json.loads((ck / "config.json").read_text())
    for bad in (0, "1000", None):
        config["noise_config"]["num_train_timesteps"] = bad
        if bad is None:
            del config["noise_config"]["num_train_timesteps"]
        (ck / "config.json").write_text(json.dumps(config))
        result = runner.invoke(cli.main, ["run", "--checkpoint", str(ck), "--scheduler", "ddim", "--steps", "1",
                                          "--evaluators", "none", "--no-denoising-figure",
                                          "--out", str(tmp_path / f"run-{bad}")])  # fmt: skip
        assert result.exit_code != 0 and "Traceback" not in result.output
        assert f"num_train_timesteps {bad!r}, not a whole number of at least 1" in result.output
        assert "or fewer" not in result.output and "mismatch" not in result.output
    config["noise_config"]["num_train_timesteps"] = 1000
    (ck / "config.json").write_text(json.dumps(config))
    result = runner.invoke(cli.main, ["run", "--checkpoint", str(ck), "--scheduler", "ddim", "--steps", "1",
                                      "--evaluators", "none", "--no-denoising-figure", "--out", str(tmp_path / "ok")])  # fmt: skip
    assert result.exit_code == 0, result.output


def test_export_writes_only_a_safetensors_name(runner, tmp_path) -> None:
    """`bench export CKPT mine.json` overwrote the condition file with weights."""
    ck = _tiny_checkpoint(tmp_path / "ck")
    mine = tmp_path / "mine.json"
    mine.write_text('[["red cube"]]')
    result = runner.invoke(cli.main, ["export", str(ck), str(mine)])
    assert result.exit_code == 2 and "name the file *.safetensors" in result.output
    assert mine.read_text() == '[["red cube"]]'
    result = runner.invoke(cli.main, ["export", str(ck), str(tmp_path / "w.safetensors")])
    assert result.exit_code == 0, result.output


def test_random_weights_have_no_sampling_defaults(runner, tmp_path) -> None:
    out = tmp_path / "run"
    result = tiny_run(
        runner, "--scheduler", "ddim", "--steps", "1", "--no-denoising-figure", "--out", str(out)
    )
    assert result.exit_code == 0, result.output
    rows, config = _rows_and_config(out)
    assert {(r["guidance"], r["guidance_interval"]) for r in rows} == {(1.0, None)}
    assert config["guidance_from"] == "default" and config["guidance"] == [1.0]
    # An interval without guidance changes nothing, and says so.
    result = tiny_run(runner, "--scheduler", "ddim", "--steps", "1", "--no-denoising-figure",
                      "--guidance-interval", "300,1000", "--out", str(out))  # fmt: skip
    assert result.exit_code == 0 and "has no effect: guidance is 1 (off)" in result.output
    rows, _ = _rows_and_config(out)
    assert {r["guidance_interval"] for r in rows} == {None}


def test_cpu_rows_record_the_chunk_each_cell_ran_with(runner, tmp_path) -> None:
    """No --batch-size: on the CPU unguided cells run 32 images a chunk, guided ones 16 (the
    model still sees 32); a given --batch-size is kept for both."""
    out = tmp_path / "run"
    result = tiny_run(runner, "--scheduler", "ddim", "--steps", "1", "--guidance", "1,2",
                      "--no-denoising-figure", "--out", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    rows, _ = _rows_and_config(out)
    assert {(r["guidance"], r["speed"]["batch_size"]) for r in rows} == {(1.0, 32), (2.0, 16)}
    result = tiny_run(runner, "--scheduler", "ddim", "--steps", "1", "--guidance", "1,2", "--batch-size", "8",
                      "--no-denoising-figure", "--out", str(out))  # fmt: skip
    rows, _ = _rows_and_config(out)
    assert {r["speed"]["batch_size"] for r in rows} == {8}
    # chunks are made even: 64 images at --batch-size 48 run as two chunks of 32, and say so
    result = tiny_run(runner, "--scheduler", "ddim", "--steps", "1", "--batch-size", "48",
                      "--no-denoising-figure", "--out", str(out))  # fmt: skip
    rows, _ = _rows_and_config(out)
    assert {(r["speed"]["batch_size"], r["speed"]["chunk"], r["speed"]["total_images"]) for r in rows} == {
        (48, 32, 64)
    }


def test_cpu_rows_record_the_speed_switches_off(runner, tmp_path) -> None:
    """cudnn.benchmark is CUDA only: even when asked for, a CPU run records it off, and autotune
    is off unless asked for."""
    conditions = tmp_path / "c.json"
    conditions.write_text('[["red sphere"], ["cyan cube", "gray cylinder"]]')
    for name, extra in [("default", []), ("asked", ["--cudnn-benchmark"])]:
        out = tmp_path / name
        result = tiny_run(runner, "--scheduler", "ddim", "--steps", "1", "--no-denoising-figure",
                          "--conditions", str(conditions), "--out", str(out), *extra)  # fmt: skip
        assert result.exit_code == 0, result.output
        rows, _ = _rows_and_config(out)
        assert rows and all(r["error"] is None for r in rows)
        assert {(r["speed"]["cudnn_benchmark"], r["speed"]["autotune"]) for r in rows} == {(False, False)}
        assert '"cudnn_benchmark": false' in (out / "results.json").read_text()


def test_an_empty_evaluators_value_is_refused_and_none_means_none(runner, tmp_path) -> None:
    """--evaluators '' (an unset shell variable) judged nothing without a word in `bench run`, and
    `bench data ceiling` printed a table of zeros; 'none' is how a run asks for no evaluators."""
    result = tiny_run(runner, "--scheduler", "ddim", "--steps", "1", "--evaluators", "",
                      "--out", str(tmp_path / "run"))  # fmt: skip
    assert result.exit_code == 2 and "names no evaluator; name at least one, or 'none'" in result.output
    assert not (tmp_path / "run" / "results.json").exists()
    result = runner.invoke(cli.main, ["data", "ceiling", "--evaluators", " , ", "--per-condition", "1"])
    assert result.exit_code == 2 and "names no evaluator" in result.output
    result = tiny_run(runner, "--scheduler", "ddim", "--steps", "1", "--evaluators", "None",
                      "--no-denoising-figure", "--out", str(tmp_path / "none"))  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "none" / "results.json").read_text())["rows"]
    assert rows and all(not row["metrics"] for row in rows)


def test_tune_kernels_without_compile_is_refused_by_run_and_train(runner, tmp_path) -> None:
    """Kernel tuning is a torch.compile setting: asking for it without compile is an error that
    says so, before any sampling or training."""
    result = tiny_run(runner, "--scheduler", "ddim", "--steps", "1", "--tune-kernels", "--no-compile",
                      "--evaluators", "none", "--out", str(tmp_path / "run"))  # fmt: skip
    assert result.exit_code != 0 and "needs compile" in result.output
    assert not (tmp_path / "run" / "results.json").exists()
    result = runner.invoke(
        cli.main,
        ["train", "--preset", "tiny", "--tune-kernels", "--max-steps", "1", "--batch-size", "2",
         "--scenes", "1", "--device", "cpu", "--no-compile", "--out", str(tmp_path / "train")],
    )  # fmt: skip
    assert result.exit_code != 0 and "needs compile" in result.output


def test_group_norm_by_views_and_fold_upsample_reach_sampling(runner, tmp_path) -> None:
    """--group-norm-by-views, --group-norm-by-channel-stats, --fold-upsample (also `bench train`'s)
    and --attention-by-sums are
    recorded in the rows of `bench run` and in the train config, and give the same images as the
    default (the same numbers up to fp32 rounding)."""
    conditions = tmp_path / "c.json"
    conditions.write_text('[["red sphere"], ["cyan cube", "gray cylinder"]]')
    grids = {}
    variants = {
        "views": ["--group-norm-by-views"],
        "stats": ["--group-norm-by-channel-stats"],
        "fold": ["--fold-upsample"],
        "attn": ["--attention-by-sums"],
    }
    for name, extra in [("native", []), *variants.items()]:
        out = tmp_path / name
        result = tiny_run(runner, "--scheduler", "ddim", "--steps", "2", "--no-denoising-figure", "--dtype", "fp32",
                          "--evaluators", "none", "--conditions", str(conditions), "--out", str(out), *extra)  # fmt: skip
        assert result.exit_code == 0, result.output
        rows, _ = _rows_and_config(out)
        assert {r["speed"]["group_norm_by_views"] for r in rows} == {name == "views"}
        assert {r["speed"]["group_norm_by_channel_stats"] for r in rows} == {name == "stats"}
        assert {r["speed"]["fold_upsample"] for r in rows} == {name == "fold"}
        assert {r["speed"]["attention_by_sums"] for r in rows} == {name == "attn"}
        if name == "attn":  # the CPU runs uncompiled by default: said to be the slower way
            assert "--attention-by-sums without compile writes its products out" in result.output
        assert ("--group-norm-by-channel-stats without compile runs as several kernels" in result.output) == (
            name == "stats"
        )
        grids[name] = sorted((out / "images").rglob("*.png"))
    import numpy as np
    from PIL import Image

    for variant in variants:
        assert [p.relative_to(tmp_path / "native") for p in grids["native"]] == [
            p.relative_to(tmp_path / variant) for p in grids[variant]
        ] and grids["native"]
        for a, b in zip(grids["native"], grids[variant], strict=True):
            diff = np.abs(np.asarray(Image.open(a), dtype=float) - np.asarray(Image.open(b), dtype=float))
            assert diff.mean() < 0.5 and diff.max() <= 8  # 8-bit levels
    for flag in ("group-norm-by-views", "group-norm-by-channel-stats", "group-norm-channels-last", "fold-upsample",
                 "attention-by-sums"):  # fmt: skip
        out = tmp_path / f"train-{flag}"
        result = runner.invoke(
            cli.main,
            ["train", "--preset", "tiny", f"--{flag}", "--max-steps", "1", "--batch-size", "2",
             "--scenes", "1", "--device", "cpu", "--no-compile", "--out", str(out)],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert json.loads((out / "train_config.json").read_text())[flag.replace("-", "_")] is True


def test_train_cosine_lr_schedule_decays_to_zero_at_the_last_step(runner, tmp_path) -> None:
    """--lr-schedule and --warmup-steps reach the trainer: the default recipe (500 warm-up steps)
    with one warm-up step and a cosine decay logs lr 0 at the last step (the logged lr is the one
    after that step's scheduler step)."""
    out = tmp_path / "train"
    result = runner.invoke(
        cli.main,
        ["train", "--preset", "tiny", "--lr-schedule", "cosine", "--warmup-steps", "1", "--max-steps", "4",
         "--batch-size", "2", "--scenes", "1", "--device", "cpu", "--no-compile", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "train_config.json").read_text())
    assert (saved["lr_schedule"], saved["warmup_steps"]) == ("cosine", 1)
    rows = [json.loads(line) for line in (out / "loss.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 4
    assert rows[-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # constant would log 2e-4 here


@pytest.mark.parametrize("amx", [True, False])
def test_cpu_run_says_when_it_chose_bf16(runner: CliRunner, tmp_path, monkeypatch, amx: bool) -> None:
    """With AMX the CPU default is bf16 autocast, and the run says so (the images differ from a CPU
    without it); an explicit --dtype is taken as it is, without the line."""
    import torch

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    for extra in ([], ["--dtype", "fp32"]):
        out = tmp_path / f"run{len(extra)}"
        result = tiny_run(runner, "--steps", "2", "--no-denoising-figure", "--out", str(out), *extra)
        assert result.exit_code == 0, result.output
        rows, _ = _rows_and_config(out)
        chosen = "bf16" if amx and not extra else "fp32"
        assert {r["speed"]["dtype"] for r in rows} == {chosen}
        assert ("bf16 autocast: this CPU has AMX" in result.output) == (chosen == "bf16")


def test_list_takes_several_kinds_or_none(runner) -> None:
    both = runner.invoke(cli.main, ["list", "schedulers", "evaluators"])
    assert both.exit_code == 0 and both.output.startswith("schedulers:") and "\nevaluators:" in both.output
    assert "models:" not in both.output
    every = runner.invoke(cli.main, ["list"])
    assert all(
        f"{kind}:" in every.output for kind in ("models", "schedulers", "evaluators", "datasets", "reporters")
    )
    assert runner.invoke(cli.main, ["list", "schedulerz"]).exit_code == 2


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--objects", "2,5"], "2,5: give one count (2) or a range (1-3)"),  # drew 2, 3, 4 and 5 objects
        (["--seed", "-1"], "-1 is not in the range x>=0"),  # was numpy's traceback
    ],
)
def test_data_conditions_refuses_what_it_cannot_draw(runner, tmp_path, args, says) -> None:
    out = tmp_path / "c.json"
    result = runner.invoke(cli.main, ["data", "conditions", "--out", str(out), *args])
    assert result.exit_code == 2 and says in result.output and not out.exists()


def test_resume_compares_what_options_resolve_to_not_how_they_were_typed(runner, tmp_path) -> None:
    """A run of the defaults on a CPU resumed with `--device cpu --channels-last`, which the
    defaults resolve to there: the same run, not "another configuration"."""
    out = tmp_path / "run"
    args = ["--scheduler", "ddim", "--steps", "2", "--no-denoising-figure", "--out", str(out)]
    args += _two_conditions(tmp_path)
    first = runner.invoke(
        cli.main, [*[a for a in TINY_RUN if a not in ("--device", "cpu")], *args, "--seeds", "0"]
    )
    assert first.exit_code == 0, first.output
    result = tiny_run(runner, *args, "--seeds", "0-1", "--channels-last", "--resume")
    assert result.exit_code == 0, result.output
    assert "--resume: 1 of 2 cells are in" in result.output


def test_sigterm_stops_a_run_as_ctrl_c_does(tmp_path) -> None:
    """`kill` (a cluster's time limit) ended `bench run` with -15 and no word; train exited 130."""
    import signal
    import subprocess
    import sys
    import time

    out, one = tmp_path / "run", tmp_path / "one.json"
    one.write_text('[["red sphere"]]')  # one image a cell at 5 steps: the first cell is in at once
    command = [sys.executable, "-m", "bench", *TINY_RUN, "--steps", "5", "--seeds", "0-999"]
    command += ["--conditions", str(one), "--no-denoising-figure", "--out", str(out)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not (out / "results.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)  # the first cell is in: a stop now keeps it
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output
    assert "holds the finished cells; --resume goes on from them" in output


def test_every_option_of_every_command_says_what_it_does() -> None:
    """`bench X --help` is the manual: an option listed without a word (fourteen were, up to
    session 22) leaves the user to read the source."""

    def silent(command: click.Command, path: str) -> list[str]:
        if isinstance(command, click.Group):
            return [name for sub, cmd in command.commands.items() for name in silent(cmd, f"{path} {sub}")]
        return [
            f"{path} {param.opts[0]}"
            for param in command.params
            if isinstance(param, click.Option) and not param.hidden and not param.help
        ]

    assert silent(cli.main, "bench") == []


def test_the_cli_and_the_runner_import_without_torch() -> None:
    """`bench --help`, `bench list` and `bench report` answer without loading torch (seconds on a
    CPU machine): bench.cli and bench.runner import it only when a run starts."""
    import subprocess
    import sys

    code = "import sys, bench.cli, bench.runner, bench.report; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
