"""`bench train` input checks: --data-root only where a dataset takes one, what a resume may change,
a resume with nothing left to train, and one-line errors for a wrong --device or --scheduler."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from bench import cli
from bench.plugins import DataRootError, check_data_root
from bench.training import TrainConfig, TrainingError, train
from bench_builtins.datasets import make_iclevr, make_synthetic
from bench_builtins.datasets.base import ImageConditionDataset

torch.set_num_threads(1)

# A tiny model on one synthetic scene (3 images) on the CPU: a step takes well under a second.
TINY = ["train", "--preset", "tiny", "--batch-size", "2", "--scenes", "1", "--device", "cpu", "--no-compile"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")  # the synthetic scene renders once for the module


@pytest.fixture(autouse=True)
def _cache(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_CACHE_DIR", str(cache_dir))


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


def bench_train(runner: CliRunner, out: Path, *args: str):
    return runner.invoke(cli.main, [*TINY, "--out", str(out), *args])


def files_of(out: Path) -> dict[str, bytes]:
    """Every file of a training folder with its bytes (to see that nothing was rewritten)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _no_dataset(*args, **kwargs):
    raise AssertionError("the dataset was read before the options were checked")


# ------------------------------------------------------------------------------ --data-root


def test_data_root_for_a_dataset_that_takes_none_is_refused_before_anything_is_read(
    runner, tmp_path, monkeypatch
) -> None:
    """The synthetic set dropped --data-root without a word and trained on its own renders."""
    monkeypatch.setattr(cli, "_dataset", _no_dataset)
    out = tmp_path / "train"
    result = bench_train(runner, out, "--data-root", str(tmp_path), "--max-steps", "1")
    assert result.exit_code == 2, result.output
    assert "Error: --data synthetic takes no --data-root" in result.output
    assert "--data iclevr --data-root" in result.output  # says what to do instead
    assert not out.exists()
    # The rule: a factory takes a root when it names a data_root option (iclevr does).
    check_data_root("iclevr", make_iclevr, str(tmp_path))
    check_data_root("synthetic", make_synthetic, None)
    with pytest.raises(DataRootError, match="--data synthetic takes no --data-root"):
        check_data_root("synthetic", make_synthetic, str(tmp_path))


def test_the_dataset_is_recorded_with_the_checkpoint(runner, tmp_path) -> None:
    folder = tmp_path / "iclevr"
    assert runner.invoke(cli.main, ["data", "synth", "--out", str(folder), "--scenes", "1"]).exit_code == 0
    for name, out, args in [
        ("synthetic", tmp_path / "synthetic", []),
        ("iclevr", tmp_path / "iclevr-run", ["--data", "i-clevr", "--data-root", str(folder)]),  # an alias
    ]:
        result = bench_train(runner, out, "--max-steps", "1", *args)
        assert result.exit_code == 0, result.output
        saved = json.loads((out / "train_config.json").read_text())
        in_checkpoint = json.loads((out / "checkpoint" / "config.json").read_text())["train_config"]
        expected = {
            "data": name,  # the registered name, not the alias
            "data_root": str(folder.resolve()) if args else None,
            "data_options": {"scenes": 1} if name == "synthetic" else {},  # --scenes is the renders'
        }
        for recorded in (saved, in_checkpoint):
            assert {k: recorded[k] for k in expected} == expected


def test_a_checkpoint_from_before_the_dataset_was_recorded_still_resumes(runner, tmp_path) -> None:
    out = tmp_path / "train"
    assert bench_train(runner, out, "--max-steps", "1").exit_code == 0
    meta_file = out / "checkpoint" / "config.json"  # its sha256 list covers the weights, not itself
    meta = json.loads(meta_file.read_text())
    for key in ("data", "data_root", "data_options"):
        del meta["train_config"][key]
    meta_file.write_text(json.dumps(meta))
    old = TrainConfig.from_dict(meta["train_config"])  # missing fields take their defaults
    assert (old.data, old.data_root, old.data_options) == (None, None, {})
    result = bench_train(runner, out, "--max-steps", "2", "--resume")
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "checkpoint" / "config.json").read_text())
    assert saved["step"] == 2 and saved["train_config"]["data"] == "synthetic"


# ------------------------------------------------------------------------------ resume


@pytest.mark.parametrize(
    "options",
    [
        [],  # the default recipe's values
        ["--recipe", "reference"],  # another recipe's (no EMA, no grad clip, epochs=200)
        ["--ema", "0", "--min-snr-gamma", "0", "--lr", "1e-3", "--seed", "3", "--lr-schedule", "cosine"],
    ],
)
def test_a_resume_refuses_changed_training_options_and_takes_the_same_ones(runner, tmp_path, options) -> None:
    out = tmp_path / "train"
    assert bench_train(runner, out, *options, "--max-steps", "1").exit_code == 0
    before = files_of(out)
    changed = ["--lr", "0.5", "--batch-size", "3", "--ema", "0.9", "--cond-drop", "0.2",
               "--warmup-steps", "7"]  # fmt: skip
    result = bench_train(runner, out, *options, *changed, "--max-steps", "2", "--resume")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    text = " ".join(result.output.split())
    # one message naming every difference, old -> new
    for name, new in [("--lr", "0.5"), ("--batch-size", "3"), ("--ema", "0.9"), ("--cond-drop", "0.2")]:
        assert f"{name} " in text and f" -> {new}" in text, (name, text)
    assert "--batch-size 2 -> 3" in text and "--warmup-steps" in text
    assert files_of(out) == before  # train_config.json no longer records an lr that was never used
    # The same options again, with the ones a resume may change (limits, intervals, device).
    allowed = ["--max-steps", "2", "--checkpoint-every", "5", "--device", "auto", "--max-minutes", "30"]
    result = bench_train(runner, out, *options, *allowed, "--resume")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "checkpoint" / "config.json").read_text())["step"] == 2


def test_a_changed_dataset_or_scenes_is_refused_on_resume(runner, tmp_path, monkeypatch) -> None:
    out = tmp_path / "train"
    assert bench_train(runner, out, "--max-steps", "1").exit_code == 0
    monkeypatch.setattr(cli, "_dataset", _no_dataset)  # refused before any scene renders
    args = [a for a in TINY if a not in ("--scenes", "1")]
    result = runner.invoke(
        cli.main, [*args, "--scenes", "2", "--out", str(out), "--max-steps", "2", "--resume"]
    )
    assert result.exit_code == 2, result.output
    assert "--scenes 1 -> 2" in " ".join(result.output.split())


def test_a_resume_takes_the_options_it_is_not_given_from_the_checkpoint(runner, tmp_path) -> None:
    """`--out X --resume` alone continues the run as it was trained (recipe, preset, lr, batch,
    scenes...); only the options given are compared with the checkpoint's."""
    out = tmp_path / "train"
    trained = ["--recipe", "reference", "--lr", "3e-4", "--lr-schedule", "cosine"]
    assert bench_train(runner, out, *trained, "--max-steps", "1").exit_code == 0
    bare = ["train", "--device", "cpu", "--no-compile", "--out", str(out)]
    result = runner.invoke(cli.main, [*bare, "--max-steps", "2", "--resume"])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "checkpoint" / "config.json").read_text())
    config = saved["train_config"]
    assert saved["step"] == 2 and (config["recipe"], config["preset"], config["lr"]) == (
        "reference",
        "tiny",
        3e-4,
    )
    assert (config["batch_size"], config["data_options"]) == (2, {"scenes": 1})
    # an option given is still compared: a changed one is refused, naming it
    result = runner.invoke(cli.main, [*bare, "--max-steps", "3", "--resume", "--lr", "1e-3"])
    assert result.exit_code == 2 and "--lr 0.0003 -> 0.001" in " ".join(result.output.split())
    result = runner.invoke(cli.main, [*bare, "--max-steps", "3", "--resume", "--recipe", "default"])
    assert result.exit_code == 2 and "--recipe reference -> default" in " ".join(result.output.split())


def test_a_bare_resume_keeps_the_runs_limits(runner, tmp_path, monkeypatch) -> None:
    """`--out X --resume` alone used to fall back to the recipe's 20,000 steps and drop
    --max-minutes (whose budget counts over every run of an --out), changing the lr schedule."""
    out = tmp_path / "train"
    assert bench_train(runner, out, "--max-steps", "2", "--max-minutes", "30").exit_code == 0
    monkeypatch.setattr(cli, "_dataset", _no_dataset)  # nothing is left to train: no data is read
    result = runner.invoke(cli.main, ["train", "--device", "cpu", "--out", str(out), "--resume"])
    assert result.exit_code == 0, result.output
    assert "already at step 2 >= --max-steps 2: nothing to train" in " ".join(result.output.split())
    assert "stretches" not in result.output
    monkeypatch.undo()
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    result = runner.invoke(
        cli.main, ["train", "--device", "cpu", "--out", str(out), "--resume", "--max-steps", "3"]
    )
    assert result.exit_code == 0, result.output
    config = json.loads((out / "checkpoint" / "config.json").read_text())["train_config"]
    assert (config["max_steps"], config["max_minutes"]) == (3, 30)


def test_images_kept_apart_from_train_json_are_read_with_images_dir(runner, tmp_path, monkeypatch) -> None:
    """Course files whose PNGs live elsewhere (another disk) needed a link; --images-dir names them,
    is recorded, and may name a moved folder on resume, as --data-root may."""
    folder = tmp_path / "course"
    assert runner.invoke(cli.main, ["data", "synth", "--out", str(folder), "--scenes", "1"]).exit_code == 0
    pngs = tmp_path / "disk" / "pngs"
    pngs.mkdir(parents=True)
    for png in folder.rglob("*.png"):
        png.rename(pngs / png.name)
    out = tmp_path / "train"
    args = ["--data", "iclevr", "--data-root", str(folder), "--max-steps", "1"]
    result = bench_train(runner, out, *args)
    assert result.exit_code != 0 and "are not in" in " ".join(result.output.split())  # not found alone
    result = bench_train(runner, out, *args, "--images-dir", str(pngs))
    assert result.exit_code == 0, result.output
    assert f"3 images from {pngs}" in " ".join(result.output.split())
    config = json.loads((out / "checkpoint" / "config.json").read_text())["train_config"]
    assert config["data_options"]["images_dir"] == str(pngs.resolve())
    bare = ["train", "--device", "cpu", "--out", str(out), "--resume"]
    assert runner.invoke(cli.main, [*bare, "--max-steps", "2"]).exit_code == 0  # the recorded folder
    moved = tmp_path / "moved"
    pngs.rename(moved)
    result = runner.invoke(cli.main, [*bare, "--max-steps", "3", "--images-dir", str(moved)])
    assert result.exit_code == 0, result.output
    # Where no folder is read, it is refused before anything loads.
    monkeypatch.setattr(cli, "_dataset", _no_dataset)
    for extra, message in [
        (["--images-dir", str(moved)], "--images-dir"),
        (["--data-root", str(folder), "--images-dir", str(moved)], "--data synthetic takes no --images-dir"),
    ]:
        result = bench_train(runner, tmp_path / "synthetic", "--max-steps", "1", *extra)
        assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output


def test_a_resume_whose_recorded_folder_moved_says_so(runner, tmp_path) -> None:
    """It said "--data-root X does not exist" of an option the user had not given."""
    folder = tmp_path / "iclevr"
    assert runner.invoke(cli.main, ["data", "synth", "--out", str(folder), "--scenes", "1"]).exit_code == 0
    out = tmp_path / "train"
    assert (
        bench_train(runner, out, "--data", "iclevr", "--data-root", str(folder), "--max-steps", "1").exit_code
        == 0
    )
    folder.rename(tmp_path / "moved")
    result = runner.invoke(
        cli.main, ["train", "--device", "cpu", "--out", str(out), "--resume", "--max-steps", "2"]
    )
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and f"the data folder this run trained on, {folder.resolve()}" in said, said
    assert "if it moved, pass --data-root NEW_FOLDER" in said


def test_scenes_with_a_data_folder_is_said_to_be_ignored_and_not_recorded(runner, tmp_path) -> None:
    """--scenes with --data iclevr was dropped without a word and recorded in data_options."""
    folder = tmp_path / "iclevr"
    assert runner.invoke(cli.main, ["data", "synth", "--out", str(folder), "--scenes", "1"]).exit_code == 0
    out = tmp_path / "train"
    result = bench_train(
        runner, out, "--data", "iclevr", "--data-root", str(folder), "--max-steps", "1", "--scenes", "5"
    )
    assert result.exit_code == 0, result.output
    assert "--scenes: a synthetic-data option, ignored with --data iclevr" in result.output
    config = json.loads((out / "checkpoint" / "config.json").read_text())["train_config"]
    assert "scenes" not in config["data_options"]


def test_a_bare_resume_trains_on_the_recorded_folder(runner, tmp_path) -> None:
    folder = tmp_path / "iclevr"
    assert runner.invoke(cli.main, ["data", "synth", "--out", str(folder), "--scenes", "1"]).exit_code == 0
    out = tmp_path / "train"
    args = ["--data", "iclevr", "--data-root", str(folder), "--max-steps", "1"]
    assert bench_train(runner, out, *args).exit_code == 0
    result = runner.invoke(
        cli.main, ["train", "--device", "cpu", "--out", str(out), "--resume", "--max-steps", "2"]
    )
    assert result.exit_code == 0, result.output
    config = json.loads((out / "checkpoint" / "config.json").read_text())["train_config"]
    assert (config["data"], config["data_root"]) == ("iclevr", str(folder.resolve()))
    # A dataset given is still compared with the recorded one.
    result = runner.invoke(
        cli.main,
        [
            "train",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--resume",
            "--max-steps",
            "3",
            "--data",
            "synthetic",
        ],
    )
    assert result.exit_code == 2 and "--data iclevr -> synthetic" in " ".join(result.output.split())


def test_what_killed_saves_left_is_tidied_before_training(runner, tmp_path, monkeypatch) -> None:
    """A save killed while writing leaves a hidden folder as large as a checkpoint; one killed
    between its two renames leaves the checkpoint renamed aside, which a resume must find and a
    fresh start must not write over (refused before the data loads, touching nothing)."""
    out = tmp_path / "train"
    assert bench_train(runner, out, "--max-steps", "1").exit_code == 0
    stale = out / ".checkpoint.tmp-killed"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    (out / "checkpoint").rename(out / ".checkpoint.previous")
    with monkeypatch.context() as patch:
        patch.setattr(cli, "_dataset", _no_dataset)
        result = bench_train(runner, out, "--max-steps", "1")  # a fresh start is refused
    assert result.exit_code == 2 and "already holds a checkpoint" in " ".join(result.output.split())
    assert stale.exists() and (out / ".checkpoint.previous" / "config.json").exists()
    result = bench_train(runner, out, "--max-steps", "2", "--resume")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "checkpoint" / "config.json").read_text())["step"] == 2
    assert not stale.exists() and not (out / ".checkpoint.previous").exists()
    modes = {p.name: p.stat().st_mode & 0o777 for p in (out / "checkpoint").iterdir()}
    from bench.atomic import shared_mode

    assert set(modes.values()) == {shared_mode(0o666)}, modes  # safetensors writes 0600, whatever the umask


def test_a_bare_resume_reads_its_options_from_a_checkpoint_left_aside(runner, tmp_path) -> None:
    """Right after a save killed between its renames, a bare --resume still takes the run's limits
    and dataset from the checkpoint (left aside until training puts it back)."""
    out = tmp_path / "train"
    assert bench_train(runner, out, "--max-steps", "1", "--max-minutes", "30", "--lr", "3e-4").exit_code == 0
    (out / "checkpoint").rename(out / ".checkpoint.previous")
    result = runner.invoke(
        cli.main, ["train", "--device", "cpu", "--out", str(out), "--resume", "--max-steps", "2"]
    )
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "checkpoint" / "config.json").read_text())
    config = saved["train_config"]
    assert saved["step"] == 2 and (config["max_minutes"], config["lr"], config["data_options"]) == (
        30,
        3e-4,
        {"scenes": 1},
    )
    assert not (out / ".checkpoint.previous").exists()


def test_a_checkpoint_that_cannot_be_written_is_one_line_and_keeps_the_last_one(
    runner, tmp_path, monkeypatch
) -> None:
    out = tmp_path / "train"
    assert bench_train(runner, out, "--max-steps", "1").exit_code == 0
    before = (out / "checkpoint" / "model.safetensors").read_bytes()

    def disk_full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 124864 vs 124756")

    monkeypatch.setattr("torch.save", disk_full)
    result = bench_train(runner, out, "--max-steps", "2", "--resume")
    assert result.exit_code != 0 and "Traceback" not in result.output
    text = " ".join(result.output.split())
    assert "could not write the step-2 checkpoint" in text and "unexpected pos" in text and "is kept" in text
    assert (out / "checkpoint" / "model.safetensors").read_bytes() == before
    assert not list(out.glob(".checkpoint.tmp-*"))


def _refused_before_the_data(runner, out: Path, monkeypatch) -> str:
    """What a --resume of ``out`` says, checked to be one line, before the data is read, with every
    file of ``out`` left as it was."""
    before = files_of(out)
    monkeypatch.setattr(cli, "_dataset", _no_dataset)
    result = bench_train(runner, out, "--max-steps", "2", "--resume")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert files_of(out) == before and not list(out.glob(".checkpoint*"))  # and no probe left
    return result.output


def test_a_write_protected_checkpoint_folder_is_refused_before_the_data_loads(
    runner, tmp_path, monkeypatch
) -> None:
    """Only --out was probed: a save replaces the checkpoint folder's files, so a write-protected
    one failed at the first save, after the data had loaded and steps had run. Simulated by the
    probe's refusal (a read-only mount's), which root meets too where it writes past permissions."""
    import tempfile

    out = tmp_path / "train"
    assert bench_train(runner, out, "--max-steps", "1").exit_code == 0
    checkpoint, real = out / "checkpoint", tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == checkpoint:
            raise PermissionError(13, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr("bench.atomic.tempfile.mkstemp", read_only)
    output = _refused_before_the_data(runner, out, monkeypatch)
    assert f"the checkpoint folder {checkpoint} cannot be written to (Permission denied)" in output


def test_a_checkpoint_folder_without_write_permission_is_refused_before_the_data_loads(
    runner, tmp_path, monkeypatch
) -> None:
    """The same with real permission bits, where they bind (not for root)."""
    out = tmp_path / "train"
    assert bench_train(runner, out, "--max-steps", "1").exit_code == 0
    checkpoint = out / "checkpoint"
    checkpoint.chmod(0o555)
    try:
        if os.access(checkpoint, os.W_OK):
            pytest.skip("permission bits do not bind this user (root)")
        output = _refused_before_the_data(runner, out, monkeypatch)
        assert f"the checkpoint folder {checkpoint} cannot be written to" in output
    finally:
        checkpoint.chmod(0o755)


def _edit_step(out: Path, step: int) -> None:
    config = out / "checkpoint" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "step": step}))


@pytest.mark.parametrize("edited", [1, 3])
def test_a_checkpoint_whose_step_was_edited_is_refused_on_resume(runner, tmp_path, edited) -> None:
    """config.json's step is not covered by its sha256s: an edited one resumed silently at that step,
    the data order and random draws moved while the optimizer and lr schedule went on from theirs."""
    out = tmp_path / "train"
    assert bench_train(runner, out, "--max-steps", "2").exit_code == 0
    _edit_step(out, edited)
    before = files_of(out)
    result = bench_train(runner, out, "--max-steps", "5", "--resume")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert (
        f"checkpoint {out / 'checkpoint'} is inconsistent: config.json says step {edited} but its "
        "optimizer state (optimizer.pt) has taken 2 steps" in " ".join(result.output.split())
    )
    assert files_of(out) == before  # nothing trained, nothing rewritten
    _edit_step(out, 2)  # put back, it resumes
    result = bench_train(runner, out, "--max-steps", "3", "--resume")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "checkpoint" / "config.json").read_text())["step"] == 3


def test_a_checkpoint_saved_before_any_optimizer_step_resumes_and_its_step_is_still_checked(
    runner, tmp_path
) -> None:
    """Before its first step an optimizer keeps no counters: the lr schedule's and optimizer.pt's own
    record of the step are compared instead, and a step-0 checkpoint resumes."""
    out = tmp_path / "train"
    # a time budget spent before the first step: the checkpoint is written at step 0
    assert bench_train(runner, out, "--max-steps", "2", "--max-minutes", "1e-9").exit_code == 0
    assert json.loads((out / "checkpoint" / "config.json").read_text())["step"] == 0
    _edit_step(out, 1)
    result = bench_train(runner, out, "--max-steps", "2", "--max-minutes", "30", "--resume")
    assert (
        result.exit_code == 2
        and "config.json says step 1 but its lr schedule has taken 0 steps" in " ".join(result.output.split())
    ), result.output
    _edit_step(out, 0)
    result = bench_train(runner, out, "--max-steps", "2", "--max-minutes", "30", "--resume")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "checkpoint" / "config.json").read_text())["step"] == 2


def test_a_resume_refuses_other_starting_weights(runner, tmp_path, monkeypatch) -> None:
    """--init-from on a resume was dropped without a word; the same command again, with --resume
    added, still resumes."""
    first, out = tmp_path / "first", tmp_path / "train"
    assert bench_train(runner, first, "--max-steps", "1").exit_code == 0
    start = ["--init-from", str(first / "checkpoint")]
    assert bench_train(runner, out, *start, "--max-steps", "1").exit_code == 0
    assert bench_train(runner, out, *start, "--max-steps", "2", "--resume").exit_code == 0
    monkeypatch.setattr(cli, "_dataset", _no_dataset)  # refused before any data is read
    for resumed, weights, started in [(first, out, "random weights"), (out, out, str(first / "checkpoint"))]:
        result = bench_train(
            runner, resumed, "--init-from", str(weights / "checkpoint"), "--max-steps", "3", "--resume"
        )
        assert result.exit_code == 2, result.output
        assert f"a --resume goes on from {resumed / 'checkpoint'}, which started from {started}" in " ".join(
            result.output.split()
        )


def _data(n: int = 8) -> ImageConditionDataset:
    labels = [f"label {i}" for i in range(24)]
    images = torch.randint(
        0, 256, (n, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    return ImageConditionDataset(images, [[labels[i % 24]] for i in range(n)], labels)


class _Untouchable:
    def __len__(self) -> int:
        raise AssertionError("the dataset was read before the resume was checked")

    def __getattr__(self, name: str):
        raise AssertionError(f"the dataset's {name} was read before the resume was checked")


def _config(out: Path, **overrides) -> TrainConfig:
    base = dict(preset="tiny", num_train_timesteps=100, batch_size=4, max_steps=2, warmup_steps=1,
                lr=1e-3, log_every=1, device="cpu", out_dir=str(out))  # fmt: skip
    return TrainConfig(**{**base, **overrides})


def test_train_refuses_changed_options_on_resume_before_it_reads_the_data(tmp_path) -> None:
    train(_config(tmp_path, max_steps=1), _data(), show_progress=False)
    with pytest.raises(
        TrainingError, match=r"--lr 0\.001 -> 0\.5, .*--ema 0\.999 -> 0 \(off\), hflip true -> false"
    ):
        train(_config(tmp_path, resume=True, lr=0.5, ema_decay=None, hflip=False), _Untouchable())
    # ema 0 and None both mean off: the same run
    train(_config(tmp_path / "b", max_steps=1, ema_decay=0.0), _data(), show_progress=False)
    resumed = train(_config(tmp_path / "b", resume=True, ema_decay=None), _data(), show_progress=False)
    assert resumed.steps == 2 and resumed.resumed_from_step == 1


# ------------------------------------------------------------------------------ nothing to train


def test_a_resume_already_at_its_limit_says_so_and_changes_nothing(runner, tmp_path, monkeypatch) -> None:
    out = tmp_path / "train"
    assert bench_train(runner, out, "--max-steps", "2").exit_code == 0
    before = files_of(out)
    monkeypatch.setattr(cli, "_dataset", _no_dataset)  # decided from the checkpoint alone
    for limit, message in [
        (["--max-steps", "2"], "the checkpoint is already at step 2 >= --max-steps 2: nothing to train"),
        (["--max-steps", "1"], "the checkpoint is already at step 2 >= --max-steps 1: nothing to train"),
        # 3 images in batches of 2: one step an epoch, so 2 epochs are done (a higher --max-steps:
        # the checkpoint's 2 would otherwise stop it first)
        (
            ["--epochs", "2", "--max-steps", "9"],
            "the checkpoint has already trained 2 epoch(s) >= --epochs 2: nothing to train",
        ),
    ]:
        result = bench_train(runner, out, *limit, "--resume")
        assert result.exit_code == 0, result.output
        assert message in result.output
        assert "images_per_second" not in result.output
        assert files_of(out) == before


def test_the_max_minutes_budget_counts_earlier_runs_and_a_spent_one_trains_nothing(runner, tmp_path) -> None:
    help_text = " ".join(runner.invoke(cli.main, ["train", "--help"]).output.split())
    assert "counted over every run of this --out: a --resume gets what earlier runs left of it" in help_text
    first = train(_config(tmp_path, max_steps=2), _data(), show_progress=False)
    before = files_of(tmp_path)
    # The first run trained for some seconds; a budget below them is already spent.
    summary = train(
        _config(tmp_path, resume=True, max_steps=10, max_minutes=1e-6), _data(), show_progress=False
    )
    assert summary.stopped_by == "nothing_to_train" and summary.steps == first.steps == 2
    assert "--max-minutes 1e-06 (the budget counts the training time of every run" in summary.message
    assert "nothing to train" in summary.message
    assert files_of(tmp_path) == before


# ------------------------------------------------------------------------------ one-line errors


@pytest.mark.parametrize(
    "args, message",
    [
        (["--device", "foo"], "Error: --device 'foo' is not a device; use auto, cpu, cuda or cuda:N"),
        (["--scheduler", "ddim"], "Error: scheduler 'ddim' defines no training noise schedule"),
        pytest.param(
            ["--device", "cuda"],
            "Error: --device cuda asked for, but torch sees no CUDA device; use --device cpu",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA"),
        ),
    ],
)
def test_a_wrong_device_or_training_schedule_is_one_line_before_the_data_is_read(
    runner, tmp_path, monkeypatch, args, message
) -> None:
    monkeypatch.setattr(cli, "_dataset", _no_dataset)
    result = bench_train(runner, tmp_path / "train", "--max-steps", "1", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)


@pytest.mark.parametrize(
    "device, message",
    [
        ("foo", "Error: --device 'foo' is not a device"),
        pytest.param(
            "cuda",
            "Error: --device cuda asked for, but torch sees no CUDA device",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA"),
        ),
    ],
)
def test_data_synth_with_a_wrong_device_is_one_line(runner, tmp_path, device, message) -> None:
    out = tmp_path / "synth"
    result = runner.invoke(
        cli.main, ["data", "synth", "--out", str(out), "--scenes", "1", "--device", device]
    )
    assert result.exit_code == 2, result.output
    assert message in result.output and isinstance(result.exception, SystemExit)
    assert not (out / "train.json").exists()


def test_a_schedule_that_cannot_train_is_a_training_error_and_still_a_value_error(tmp_path) -> None:
    with pytest.raises(TrainingError, match="defines no training noise schedule") as caught:
        train(_config(tmp_path, scheduler="ddim"), _Untouchable(), show_progress=False)
    assert isinstance(caught.value, ValueError)


def test_a_resume_that_stretches_a_cosine_lr_schedule_says_so(runner, tmp_path) -> None:
    out = tmp_path / "train"
    assert bench_train(runner, out, "--lr-schedule", "cosine", "--max-steps", "1").exit_code == 0
    result = bench_train(runner, out, "--lr-schedule", "cosine", "--max-steps", "2", "--resume")
    assert result.exit_code == 0, result.output
    assert "--max-steps 1 -> 2 stretches the cosine lr decay" in result.output
    constant = ["--lr-schedule", "constant"]  # nothing to say
    assert bench_train(runner, tmp_path / "c", *constant, "--max-steps", "1").exit_code == 0
    result = bench_train(runner, tmp_path / "c", "--max-steps", "2", "--resume")
    assert result.exit_code == 0 and "lr decay" not in result.output


def test_a_full_disk_met_by_safetensors_is_one_line_too(runner, tmp_path, monkeypatch) -> None:
    """safetensors says a full disk with its own SafetensorError, not an OSError: a traceback."""
    from safetensors import SafetensorError

    out = tmp_path / "train"
    assert bench_train(runner, out, "--max-steps", "1").exit_code == 0

    def disk_full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr("safetensors.torch.save_file", disk_full)
    result = bench_train(runner, out, "--max-steps", "2", "--resume")
    text = " ".join(result.output.split())
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    assert (
        "could not write the step-2 checkpoint" in text
        and "No space left on device" in text
        and "is kept" in text
    )


@pytest.mark.parametrize("damage", ["missing", "broken"])
def test_a_resume_of_a_checkpoint_without_a_readable_config_fails_before_the_data_loads(
    runner, tmp_path, monkeypatch, damage
) -> None:
    """The recipe's default dataset (18,009 renders, minutes) was made before the error."""
    out = tmp_path / "train"
    assert bench_train(runner, out, "--max-steps", "1").exit_code == 0
    config = out / "checkpoint" / "config.json"
    config.unlink() if damage == "missing" else config.write_text("{not json")
    monkeypatch.setattr(cli, "_dataset", _no_dataset)
    result = runner.invoke(
        cli.main, ["train", "--device", "cpu", "--out", str(out), "--resume", "--max-steps", "2"]
    )
    text = " ".join(result.output.split())
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    assert ("config.json is missing" if damage == "missing" else "config.json") in text


def test_a_batch_that_grad_accum_cannot_split_is_refused_before_the_data_loads(
    runner, tmp_path, monkeypatch
) -> None:
    """--batch-size 6 --grad-accum 4 failed only in the trainer, after the dataset had rendered
    (minutes for the recipe's default synthetic set)."""
    monkeypatch.setattr(cli, "_dataset", _no_dataset)
    out = tmp_path / "train"
    args = ["--max-steps", "1", "--batch-size", "6", "--grad-accum", "4"]
    result = runner.invoke(cli.main, [*TINY, "--out", str(out), *args])
    assert result.exit_code == 2, result.output
    assert "batch size 6 does not split into 4 micro-batches; use a multiple of 4" in result.output
    # the passes may change where the batch may not (on --resume): a count that splits it
    assert "or --grad-accum 3 (a divisor of each process's 6 images)" in " ".join(result.output.split())
    assert "Traceback" not in result.output and not out.exists()
    # under a launcher, the processes' shares too (torchrun sets WORLD_SIZE)
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = runner.invoke(
        cli.main, [*TINY, "--out", str(out), "--max-steps", "1", "--batch-size", "6", "--grad-accum", "2"]
    )
    assert result.exit_code == 2, result.output
    assert "does not split into 2 micro-batches on each of 2 processes; use a multiple of 4" in result.output
    assert "or --grad-accum 1 (a divisor of each process's 3 images)" in " ".join(result.output.split())


def test_a_bare_resume_keeps_grad_accum_and_another_may_be_given(runner, tmp_path) -> None:
    """A run that needed --grad-accum to fit in memory went back to one pass per step on a bare
    --resume (and ran out of memory again); a resume may still give another."""
    out = tmp_path / "train"
    assert bench_train(runner, out, "--max-steps", "1", "--grad-accum", "2").exit_code == 0
    bare = ["train", "--device", "cpu", "--no-compile", "--out", str(out), "--resume"]
    result = runner.invoke(cli.main, [*bare, "--max-steps", "2"])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "checkpoint" / "config.json").read_text())
    assert saved["step"] == 2 and saved["train_config"]["grad_accum"] == 2
    result = runner.invoke(cli.main, [*bare, "--max-steps", "3", "--grad-accum", "1"])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "checkpoint" / "config.json").read_text())
    assert saved["step"] == 3 and saved["train_config"]["grad_accum"] == 1


def test_a_negative_seed_is_refused_as_bench_run_refuses_it(runner, tmp_path, monkeypatch) -> None:
    """bench train took --seed -1 where bench run and train-judge refuse a negative seed."""
    monkeypatch.setattr(cli, "_dataset", _no_dataset)
    result = bench_train(runner, tmp_path / "train", "--seed", "-1", "--max-steps", "1")
    assert (
        result.exit_code == 2 and "--seed" in result.output and "-1 is not in the range x>=0" in result.output
    )
    assert not (tmp_path / "train").exists()
