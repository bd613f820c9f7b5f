"""The training loop: learning, exact resume, divergence, recipes, and a two-process run."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench import training
from bench.checkpoints import CheckpointError, load_checkpoint
from bench.registry import RegistryError
from bench.training import RECIPES, TrainConfig, TrainingError, measure_throughput, train
from bench_builtins.datasets.base import ImageConditionDataset

torch.set_num_threads(1)

LABELS = [f"label {i}" for i in range(24)]


def dataset(n: int = 16) -> ImageConditionDataset:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 64, 64), dtype=torch.uint8, generator=g)
    return ImageConditionDataset(
        images, [[LABELS[i % 24], LABELS[(5 * i + 1) % 24]] for i in range(n)], LABELS
    )


def config(out: Path, **overrides) -> TrainConfig:
    base = dict(
        preset="tiny",
        num_train_timesteps=100,
        batch_size=4,
        max_steps=6,
        warmup_steps=2,
        lr=1e-3,
        checkpoint_every=3,
        log_every=1,
        device="cpu",
        out_dir=str(out),
    )
    return TrainConfig(**{**base, **overrides})


def test_a_few_steps_lower_the_loss_on_a_fixed_batch(tmp_path: Path) -> None:
    data = dataset(8)
    trainer = training._Trainer(
        config(
            tmp_path, batch_size=8, lr=2e-3, warmup_steps=0, ema_decay=None, cond_drop_prob=0.0, hflip=False
        ),
        data,
    )
    images, conds = next(trainer.data.batches([list(range(8))], 0))
    with torch.no_grad():
        before = trainer._loss(images, conds, step=10_000).item()  # fixed noise and timesteps
    for _ in range(15):
        trainer.train_step(images, conds)
    with torch.no_grad():
        after = trainer._loss(images, conds, step=10_000).item()
    assert after < before


def test_ema_follows_the_trained_weights_step_by_step(tmp_path: Path) -> None:
    trainer = training._Trainer(config(tmp_path, ema_decay=0.9, warmup_steps=0, lr=1e-2), dataset(8))
    images, conds = next(trainer.data.batches([list(range(4))], 0))
    expected = [p.detach().clone() for p in trainer.model.parameters()]
    for step in range(3):
        trainer.train_step(images, conds)
        decay = min(0.9, (1 + step) / (10 + step))
        for e, p in zip(expected, trainer.model.parameters(), strict=True):
            e.lerp_(p.detach(), 1 - decay)
    moved = 0
    for e, got, start in zip(expected, trainer.ema.parameters(), trainer.params, strict=True):
        torch.testing.assert_close(got, e)
        moved += int(not torch.equal(got, start))
    assert moved > 0  # the EMA differs from the live weights: it really averages


@pytest.mark.parametrize(
    "autotune, force_layout_opt, tune_kernels, options",
    [
        (False, True, False, {"force_layout_optimization": True}),  # the default
        (False, False, False, {}),
        (False, True, True, {"force_layout_optimization": True, "coordinate_descent_tuning": True}),
        (
            True,
            True,
            False,
            {"max_autotune": True, "coordinate_descent_tuning": True, "force_layout_optimization": True},
        ),
    ],
)
def test_compiled_training_gets_its_compile_options(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    autotune: bool,
    force_layout_opt: bool,
    tune_kernels: bool,
    options: dict,
) -> None:
    given = []
    monkeypatch.setattr(torch, "compile", lambda module, options=None: given.append(options) or module)
    cfg = config(
        tmp_path,
        compile=True,
        autotune=autotune,
        force_layout_opt=force_layout_opt,
        tune_kernels=tune_kernels,
    )
    trainer = training._Trainer(cfg, dataset(8))
    assert given == [options]
    assert trainer.settings()["force_layout_opt"] is force_layout_opt
    assert trainer.settings()["tune_kernels"] is tune_kernels
    # GroupNorm from channel statistics is the default compiled on CUDA only (bench.groupnorm)
    assert trainer.settings()["group_norm"] == "native"
    assert all(
        type(m) is torch.nn.GroupNorm for m in trainer.model.modules() if isinstance(m, torch.nn.GroupNorm)
    )


@pytest.mark.parametrize("tune_kernels, wait", [(False, "about 2 minutes"), (True, "about 11-12 minutes")])
def test_a_compiled_training_says_what_its_first_step_waits_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, tune_kernels: bool, wait: str
) -> None:
    monkeypatch.setattr(torch, "compile", lambda module, options=None: module)  # eager, as if compiled
    train(
        config(tmp_path / "a", compile=True, tune_kernels=tune_kernels, max_steps=1),
        dataset(),
        show_progress=True,
    )
    assert f"the first step compiles first ({wait}" in capsys.readouterr().err
    train(config(tmp_path / "b", max_steps=1), dataset(), show_progress=True)
    assert "torch.compile" not in capsys.readouterr().err  # not compiled: nothing to wait for


def test_forced_layout_reaches_the_backward_graph_of_that_compile_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Inductor decides its channels_last layout per graph; a backward graph has no forward
    convolution to count, so it runs without it unless forced. The option must reach the backward
    graph (compiled after the forward, outside torch.compile's call) and leave other compiles alone."""
    import torch._inductor.config as inductor_config
    import torch._inductor.graph as inductor_graph

    from bench.compile_mode import compile_options

    decided: list[tuple[bool, bool]] = []  # (forced at that point, layout optimised)
    decide = inductor_graph.GraphLowering.decide_layout_opt

    def spy(gm: torch.fx.GraphModule, *, is_inference: bool) -> bool:
        chosen = decide(gm, is_inference=is_inference)
        decided.append((inductor_config.force_layout_optimization, chosen))
        return chosen

    monkeypatch.setattr(inductor_graph.GraphLowering, "decide_layout_opt", staticmethod(spy))
    # A compile found in Inductor's on-disk caches skips the decision: compile afresh.
    monkeypatch.setattr(inductor_config, "fx_graph_cache", False)
    monkeypatch.setattr(torch._functorch.config, "enable_autograd_cache", False)

    def train_step(force: bool) -> None:
        torch._dynamo.reset()
        net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1),
            torch.nn.GroupNorm(2, 8),
            torch.nn.SiLU(),
            torch.nn.Conv2d(8, 3, 1),
        )
        options = compile_options(autotune=False, cuda_graphs=False, force_layout_opt=force)
        torch.compile(net, options=options)(torch.randn(2, 3, 8, 8)).square().mean().backward()

    train_step(True)
    assert decided == [(True, True), (True, True)]  # forward, then backward: both channels_last
    assert inductor_config.force_layout_optimization is False  # scoped to that compile
    decided.clear()
    train_step(False)
    assert [chosen for _, chosen in decided][-1] is False  # the backward graph, left to decide


def test_cuda_graphs_need_compile_and_cuda(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="cuda_graphs needs compile and a CUDA device"):
        training._Trainer(config(tmp_path, compile=True, cuda_graphs=True), dataset(8))


@pytest.mark.parametrize(
    "asked, compiled, cuda, processes, autotune, expected",
    [
        (None, True, True, 1, False, True),  # the default where it was measured: compiled, one GPU
        (None, False, True, 1, False, False),  # eager
        (None, True, False, 1, False, False),  # CPU
        (None, True, True, 2, False, False),  # several processes
        (None, True, True, 1, True, False),  # max-autotune keeps its no-graphs mode
        (False, True, True, 1, False, False),  # --no-cuda-graphs
        (True, True, True, 1, True, True),  # asked for with max-autotune
    ],
)
def test_cuda_graphs_default_on_for_compiled_training_on_one_gpu(
    asked: bool | None, compiled: bool, cuda: bool, processes: int, autotune: bool, expected: bool
) -> None:
    got = training.resolve_cuda_graphs(
        asked, compiled=compiled, cuda=cuda, processes=processes, autotune=autotune
    )
    assert got is expected


def test_cuda_graphs_asked_for_several_processes_is_refused() -> None:
    with pytest.raises(TrainingError, match="for one process"):
        training.resolve_cuda_graphs(True, compiled=True, cuda=True, processes=2, autotune=False)


def test_gradient_accumulation_trains_the_same_weights_in_smaller_passes(tmp_path: Path) -> None:
    """--grad-accum N: each batch in N forward/backward passes, one optimizer step. The noise,
    timesteps and flips are drawn for the whole batch, so the weights, EMA and losses match the run
    in one pass up to float rounding, and the same data order is read."""
    data = dataset()
    runs = {
        n: train(config(tmp_path / f"accum{n}", grad_accum=n, hflip=True), data, show_progress=False)
        for n in (1, 2, 4)
    }
    one = load_checkpoint(tmp_path / "accum1" / "checkpoint")
    losses = {n: [json.loads(x)["loss"] for x in (tmp_path / f"accum{n}" / "loss.jsonl").read_text().splitlines()]
              for n in runs}  # fmt: skip
    for n in (2, 4):
        other = load_checkpoint(tmp_path / f"accum{n}" / "checkpoint")
        assert other.step == one.step == 6
        for mine, ref in ((other.model_state, one.model_state), (other.ema_state, one.ema_state)):
            diff = torch.cat([(mine[k].float() - ref[k].float()).abs().flatten() for k in ref])
            # Adam divides by the gradient's size, so a weight whose gradient is near zero moves by
            # up to a step (lr 1e-3) on rounding alone: an AMD EPYC moved 8 of 46,059 by up to
            # 3.4e-5 (4 passes). Other noise or data would move nearly all of them by about lr.
            assert diff.mean() < 1e-6 and diff.max() < 2e-4, (diff.mean(), diff.max())
        assert losses[n] == pytest.approx(losses[1], rel=1e-5)
        assert other.train_config["grad_accum"] == n
    with pytest.raises(TrainingError, match="does not split into 3 micro-batches; use a multiple of 3"):
        training._Trainer(config(tmp_path / "bad", grad_accum=3), data)
    with pytest.raises(TrainingError, match="--grad-accum must be at least 1"):
        config(tmp_path / "zero", grad_accum=0).check()


def test_cuda_graphs_are_off_by_default_with_gradient_accumulation_and_refused_when_asked() -> None:
    # A replay reuses its outputs' memory: a second pass would overwrite the first's gradients.
    common = dict(compiled=True, cuda=True, processes=1, autotune=False)
    assert training.resolve_cuda_graphs(None, **common, grad_accum=2) is False
    assert training.resolve_cuda_graphs(None, **common, grad_accum=1) is True
    with pytest.raises(TrainingError, match="one pass per step"):
        training.resolve_cuda_graphs(True, **common, grad_accum=2)


def test_python_m_bench_training_checks_its_options_before_the_data_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m bench.training RUN.json` rendered or read its dataset before a bad option failed."""
    import dataclasses

    from bench import plugins

    def no_data(**_options):
        raise AssertionError("the dataset was loaded before the options were checked")

    synthetic = dataclasses.replace(plugins.get("datasets", "synthetic"), factory=no_data)
    real_get = plugins.get
    monkeypatch.setattr(
        plugins, "get", lambda kind, name: synthetic if kind == "datasets" else real_get(kind, name)
    )
    train_options = config(tmp_path / "run", batch_size=6, grad_accum=4).to_dict()
    (tmp_path / "run.json").write_text(json.dumps({"train": train_options, "dataset": {"name": "synthetic"}}))
    with pytest.raises(TrainingError, match="does not split into 4 micro-batches"):
        training.main([str(tmp_path / "run.json")])
    # A resume already at its limit says so and loads nothing (it built the dataset first).
    train(config(tmp_path / "done", max_steps=1, data="synthetic"), dataset(), show_progress=False)
    finished = config(tmp_path / "done", max_steps=1, resume=True, data="synthetic").to_dict()
    (tmp_path / "run.json").write_text(json.dumps({"train": finished, "dataset": {"name": "synthetic"}}))
    assert training.main([str(tmp_path / "run.json")]) == 0
    assert "nothing to train" in capsys.readouterr().err


def test_cpu_training_runs_without_cuda_graphs_and_says_so(tmp_path: Path) -> None:
    trainer = training._Trainer(config(tmp_path, compile=False), dataset(8))
    assert trainer.cuda_graphs is False
    summary = train(config(tmp_path / "run", max_steps=1), dataset(8), show_progress=False)
    assert summary.settings == {
        "device": "cpu",
        "bf16": False,
        "channels_last": False,
        "compile": False,
        "cuda_graphs": False,
        "force_layout_opt": False,
        "tune_kernels": False,
        "group_norm": "native",  # channel statistics are the default compiled on CUDA only
        "grad_accum": 1,
    }


def test_device_resident_batches_follow_the_order(tmp_path: Path) -> None:
    data = dataset(16)
    trainer = training._Trainer(config(tmp_path, device="cpu"), data)
    order = [[3, 1, 4, 15], [9, 2, 6, 5], [0, 8]]  # a short last batch too
    batches = list(trainer.data.batches(order, 0))
    assert [len(images) for images, _ in batches] == [4, 4, 2]
    for idx, (images, conds) in zip(order, batches, strict=True):
        expected = torch.stack([data[i][0] for i in idx])
        torch.testing.assert_close(images, expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(conds, torch.stack([data[i][1] for i in idx]).float())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_resident_batches_do_not_wait_for_the_gpu(tmp_path: Path) -> None:
    trainer = training._Trainer(config(tmp_path, device="cuda", compile=False), dataset(16))
    batches = trainer.data.batches([[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]], 0)
    next(batches)  # the order's one upload
    torch.cuda.set_sync_debug_mode("error")
    try:
        next(batches), next(batches)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_resume_continues_exactly(tmp_path: Path) -> None:
    data = dataset()
    straight = train(config(tmp_path / "a"), data, show_progress=False)
    train(config(tmp_path / "b", max_steps=3), data, show_progress=False)
    resumed = train(config(tmp_path / "b", resume=True), data, show_progress=False)
    assert straight.steps == resumed.steps == 6 and resumed.resumed_from_step == 3
    a, b = load_checkpoint(tmp_path / "a" / "checkpoint"), load_checkpoint(tmp_path / "b" / "checkpoint")
    assert a.step == b.step == 6 and a.epoch == b.epoch == 1
    for key in a.model_state:
        assert torch.equal(a.model_state[key], b.model_state[key]), key
        assert torch.equal(a.ema_state[key], b.ema_state[key]), key
    exp_a = a.training_state["optimizer"]["state"][0]["exp_avg"]
    assert torch.equal(exp_a, b.training_state["optimizer"]["state"][0]["exp_avg"])
    # The loss log and plot are written; the resumed log continues the first one.
    rows = [json.loads(line) for line in (tmp_path / "b" / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert (tmp_path / "b" / "loss.png").stat().st_size > 1000
    assert straight.final_loss == pytest.approx(resumed.final_loss)


def test_resume_on_fewer_gpus_than_the_checkpoint_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint keeps the CUDA RNG state of every GPU its process saw (four on a 4-GPU machine,
    launch or not); resumed where fewer are visible, torch.cuda.set_rng_state_all indexed past
    them (IndexError). The visible GPUs take theirs. CUDA is faked here: torch's own indexing is
    what the fake set_rng_state does."""
    states = [torch.full((16,), i, dtype=torch.uint8) for i in range(4)]
    trainer = training._Trainer(config(tmp_path), dataset(8))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: states)
    trainer.save(tmp_path / "checkpoint")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    restored: dict[int, torch.Tensor] = {}

    def set_rng_state(state: torch.Tensor, device: int = 0) -> None:
        _ = (object(),)[device]  # torch.cuda.default_generators holds one generator per visible GPU
        restored[device] = state

    monkeypatch.setattr(torch.cuda.random, "set_rng_state", set_rng_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    training._Trainer(config(tmp_path), dataset(8)).restore(tmp_path / "checkpoint")
    assert list(restored) == [0] and torch.equal(restored[0], states[0])


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_ends_at_the_next_step_with_a_checkpoint_to_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signum: int
) -> None:
    data = dataset()
    train(config(tmp_path / "a", checkpoint_every=0), data, show_progress=False)
    real_step = training._Trainer.train_step

    def step_then_signal(self, images, conds):
        loss = real_step(self, images, conds)
        if self.step == 2:
            os.kill(os.getpid(), signum)  # as Ctrl-C or a cluster's time limit would
        return loss

    monkeypatch.setattr(training._Trainer, "train_step", step_then_signal)
    handler_before = signal.getsignal(signum)
    stopped = train(config(tmp_path / "b", checkpoint_every=0), data, show_progress=False)
    assert stopped.stopped_by == "interrupted" and stopped.steps == 2
    assert load_checkpoint(tmp_path / "b" / "checkpoint").step == 2  # no checkpoint was due before 6
    assert signal.getsignal(signum) == handler_before  # given back after the run
    monkeypatch.undo()
    resumed = train(config(tmp_path / "b", checkpoint_every=0, resume=True), data, show_progress=False)
    assert resumed.steps == 6 and resumed.resumed_from_step == 2
    a, b = load_checkpoint(tmp_path / "a" / "checkpoint"), load_checkpoint(tmp_path / "b" / "checkpoint")
    for key in a.model_state:
        assert torch.equal(a.model_state[key], b.model_state[key]), key


# A dataset without images_uint8() (a user's plugin): read through DataLoader workers.
_WORKERS_DRIVER = """
import json, os, sys, torch
from bench.training import TrainConfig, train

class Plain(torch.utils.data.Dataset):
    labels, image_size = [f"l{i}" for i in range(24)], 64
    def __len__(self):
        return 32
    def __getitem__(self, i):
        if i == int(os.environ.get("BROKEN_ITEM", -1)):
            raise FileNotFoundError(f"/data/img_{i}.png")
        return torch.rand(3, 64, 64) * 2 - 1, torch.nn.functional.one_hot(torch.tensor(i % 24), 24).float()

config = TrainConfig(preset="tiny", batch_size=4, max_steps=100_000, num_workers=2, device="cpu",
                     out_dir=sys.argv[1], log_every=1, num_train_timesteps=100)
summary = train(config, Plain(), show_progress=False)
print(json.dumps({"steps": summary.steps, "stopped_by": summary.stopped_by}))
"""


@pytest.mark.slow
def test_ctrl_c_with_dataloader_workers_stops_once_with_a_checkpoint(tmp_path: Path) -> None:
    # Ctrl-C reaches the whole process group: the workers leave it to the main process.
    (tmp_path / "driver.py").write_text(_WORKERS_DRIVER)
    out = tmp_path / "out"
    run = subprocess.Popen(
        [sys.executable, str(tmp_path / "driver.py"), str(out)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own group, as a terminal's foreground job
    )
    try:
        for _ in range(1200):
            if (out / "loss.jsonl").exists() and len((out / "loss.jsonl").read_text().splitlines()) >= 3:
                break
            if run.poll() is not None:
                break
            time.sleep(0.1)
        os.killpg(run.pid, signal.SIGINT)
        stdout, stderr = run.communicate(timeout=120)
    finally:
        run.kill()
    report = json.loads(stdout.strip().splitlines()[-1])
    assert report["stopped_by"] == "interrupted" and report["steps"] >= 3, stderr[-3000:]
    assert stderr.count("SIGINT: stopping after this step") == 1  # not once more per worker
    assert load_checkpoint(out / "checkpoint").step == report["steps"]


@pytest.mark.slow
def test_a_failing_dataset_read_by_workers_ends_the_process(tmp_path: Path) -> None:
    """The workers ignore SIGTERM, so multiprocessing could not terminate them at exit: a dataset
    error (a plugin's missing file) printed its traceback and the process hung for ever."""
    (tmp_path / "driver.py").write_text(_WORKERS_DRIVER)
    done = subprocess.run(
        [sys.executable, str(tmp_path / "driver.py"), str(tmp_path / "out")],
        env={**os.environ, "OMP_NUM_THREADS": "1", "BROKEN_ITEM": "7"},
        capture_output=True,
        text=True,
        timeout=120,  # before the fix: no exit at all
    )
    assert done.returncode == 1 and "FileNotFoundError: /data/img_7.png" in done.stderr, done.stderr[-3000:]


def test_a_model_that_samples_another_size_than_the_data_is_refused(tmp_path: Path) -> None:
    """A model trained on 32 px images whose config did not say so sampled 64 px noise in bench run."""
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    small = ImageConditionDataset(images, [[LABELS[i]] for i in range(8)], LABELS)
    with pytest.raises(
        TrainingError, match=r"samples 64x64 images .* the dataset's are 32x32: set sample_size=32"
    ):
        train(config(tmp_path), small, show_progress=False)
    assert not (tmp_path / "checkpoint").exists()


def test_a_run_stopped_by_its_time_budget_records_the_whole_budget_spent(tmp_path: Path) -> None:
    """The last step's checkpoint held the time at that step's start, under the budget: the next
    --resume trained one step more instead of saying the budget is spent."""
    run = train(
        config(tmp_path, max_steps=10_000, checkpoint_every=1, max_minutes=0.002),
        dataset(),
        show_progress=False,
    )
    assert run.stopped_by == "max_minutes"
    assert load_checkpoint(tmp_path / "checkpoint").training_state["elapsed_seconds"] >= 0.002 * 60


def test_existing_checkpoint_needs_resume(tmp_path: Path) -> None:
    data = dataset()
    with pytest.raises(TrainingError, match="no checkpoint"):
        train(config(tmp_path, resume=True), data, show_progress=False)
    train(config(tmp_path, max_steps=1), data, show_progress=False)
    with pytest.raises(TrainingError, match="--resume"):
        train(config(tmp_path, max_steps=1), data, show_progress=False)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_loss = training._Trainer._loss

    def diverging(self, images, conds, step, part=0):
        loss = real_loss(self, images, conds, step, part)
        return loss * float("nan") if step >= 3 else loss

    monkeypatch.setattr(training._Trainer, "_loss", diverging)
    with pytest.raises(TrainingError, match="diverged") as error:
        train(config(tmp_path, checkpoint_every=2), dataset(), show_progress=False)
    assert "last good checkpoint" in str(error.value) and "--lr" in str(error.value)
    kept = load_checkpoint(tmp_path / "checkpoint")
    assert kept.step == 2
    assert all(torch.isfinite(v).all() for v in kept.model_state.values())


def test_recipes_and_messages() -> None:
    ref = RECIPES["reference"]
    assert (ref.preset, ref.scheduler, ref.num_train_timesteps, ref.lr, ref.batch_size, ref.epochs) == (
        "seed",
        "cosine",
        100,
        1e-5,
        32,
        200,
    )
    assert ref.ema_decay is None and ref.cond_drop_prob == 0 and ref.min_snr_gamma is None
    default = TrainConfig.from_recipe("default", batch_size=64)
    assert default.batch_size == 64 and default.ema_decay and default.cond_drop_prob > 0
    assert (
        default.min_snr_gamma == 5.0 and not TrainConfig.from_recipe("default", min_snr_gamma=0).min_snr_gamma
    )
    with pytest.raises(TrainingError, match="unknown training recipe"):
        TrainConfig.from_recipe("fastest")
    with pytest.raises(TrainingError, match="unknown training option"):
        TrainConfig.from_dict({"learning_rate": 1})
    message = training._oom_message(TrainConfig(batch_size=128, grad_accum=2), resumable=True)
    # the same run in more passes (a resume may change it), or a new run at a smaller batch
    assert "--grad-accum 4" in message and "--resume with it" in message and "--batch-size 64" in message
    # out of memory before the first checkpoint: no resume to offer
    assert "--resume" not in training._oom_message(TrainConfig(batch_size=128, grad_accum=2))


@pytest.mark.parametrize(
    "batch, accum, world, offered, smaller",
    [(128, 2, 1, 4, 64), (6, 2, 1, 6, 2), (12, 2, 3, 4, 6), (96, 1, 1, 2, 48), (4, 4, 1, None, None)],
)
def test_the_out_of_memory_message_offers_only_passes_that_split_the_batch(
    tmp_path: Path, batch: int, accum: int, world: int, offered: int | None, smaller: int | None
) -> None:
    """It offered twice the passes, which the trainer refused where they do not split each
    process's share (batch 6 in 4), more passes where each already takes one image, and a smaller
    batch that the passes no longer split (batch 2 in 4)."""
    message = training._oom_message(
        config(tmp_path, batch_size=batch, grad_accum=accum, checkpoint_every=5), world
    )
    if smaller is None:
        assert "--batch-size" not in message and "each pass already takes one image" in message, message
    else:
        assert f"a new run at --batch-size {smaller}" in message
        assert training._split_problem(smaller, accum, world) is None
    if offered is None:
        assert "--grad-accum" not in message, message
    else:
        assert f"try --grad-accum {offered} (the same batch in {offered} passes" in message, message
        assert training._split_problem(batch, offered, world) is None


def test_measure_throughput(tmp_path: Path) -> None:
    result = measure_throughput(config(tmp_path), dataset(), steps=2, warmup=1)
    assert result["images_per_second"] > 0 and result["processes"] == 1
    assert result["peak_memory_mb"] is None and result["peak_reserved_mb"] is None  # no CUDA memory
    assert not (tmp_path / "checkpoint").exists()


def _torchrun(*args: str) -> list[str]:
    """Two CPU processes (gloo) through accelerate, as `accelerate launch` starts them.

    ``accelerate launch --multi_gpu`` runs torchrun; on CPU we call torchrun directly
    (``accelerate launch --cpu`` starts one process unless MPI is set up).
    """
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    return [torchrun, "--standalone", "--nproc_per_node", "2", *args]


# Trains as RUN.json says and prints each process's step and why it stopped. CLOCK_RATE makes
# process 1's clock run that many times faster: the processes then disagree about the time.
_DDP_DRIVER = """
import json, os, sys, time, types
from bench import training
from bench.plugins import get

spec = json.load(open(sys.argv[1]))
rate = float(os.environ.get("CLOCK_RATE", "1")) if os.environ["RANK"] == "1" else 1.0
training.time = types.SimpleNamespace(perf_counter=lambda: rate * time.perf_counter())
data = get("datasets", "synthetic").factory(scenes=4, use_cache=False)
summary = training.train(training.TrainConfig.from_dict(spec["train"]), data, show_progress=False)
print(json.dumps({"rank": os.environ["RANK"], "steps": summary.steps, "stopped_by": summary.stopped_by}), flush=True)
"""


def _ddp_run(tmp_path: Path, **train_overrides) -> tuple[list[str], dict]:
    """The torchrun command of a two-process run of _DDP_DRIVER, and its environment."""
    (tmp_path / "driver.py").write_text(_DDP_DRIVER)
    train_spec = {**config(tmp_path / "ddp", **train_overrides).to_dict()}
    (tmp_path / "run.json").write_text(json.dumps({"train": train_spec}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return _torchrun(str(tmp_path / "driver.py"), str(tmp_path / "run.json")), env


def _reports(stdout: str) -> list[dict]:
    return sorted((json.loads(line) for line in stdout.splitlines() if line.startswith('{"rank"')), key=str)


@pytest.mark.slow
def test_processes_that_disagree_about_the_time_stop_at_the_same_step(tmp_path: Path) -> None:
    # Each process reading its own clock against --max-minutes, the faster one stopped first and
    # the other hung in the next step's gradient all-reduce: they now agree on the largest time.
    command, env = _ddp_run(tmp_path, max_steps=None, max_minutes=0.02, lr_schedule="cosine")
    done = subprocess.run(
        command, env={**env, "CLOCK_RATE": "3"}, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]
    reports = _reports(done.stdout)
    assert [r["stopped_by"] for r in reports] == ["max_minutes"] * 2
    assert reports[0]["steps"] == reports[1]["steps"] > 0
    assert load_checkpoint(tmp_path / "ddp" / "checkpoint").step == reports[0]["steps"]


@pytest.mark.slow
def test_sigterm_to_the_launcher_stops_every_process_at_one_step_with_a_checkpoint(tmp_path: Path) -> None:
    # A cluster's time limit signals the launcher, which forwards it to each process and waits 30 s.
    command, env = _ddp_run(tmp_path, max_steps=100_000, checkpoint_every=0)
    launcher = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "ddp" / "loss.jsonl"
    try:
        for _ in range(1200):  # until a few steps are done (the processes start in seconds)
            if log.exists() and len(log.read_text().splitlines()) >= 3:
                break
            if launcher.poll() is not None:
                break
            time.sleep(0.1)
        launcher.send_signal(signal.SIGTERM)
        stdout, stderr = launcher.communicate(timeout=120)
    finally:
        launcher.kill()
    reports = _reports(stdout)
    assert [r["stopped_by"] for r in reports] == ["interrupted"] * 2, stderr[-3000:]
    assert reports[0]["steps"] == reports[1]["steps"] >= 3
    assert load_checkpoint(tmp_path / "ddp" / "checkpoint").step == reports[0]["steps"]


@pytest.mark.slow
def test_two_processes_train_and_sample(tmp_path: Path) -> None:
    """DDP over two CPU processes (gloo), started as `accelerate launch` starts them."""
    data_options = {"scenes": 4, "use_cache": False}
    spec = {
        # two micro-batches on each process too: DDP's no_sync until the last one
        "train": {**config(tmp_path / "ddp", max_steps=3).to_dict(), "hflip": True, "grad_accum": 2},
        "dataset": {"name": "synthetic", "options": data_options},
        "sample": {"scheduler": "ddim", "steps": 2, "n": 3},
    }
    (tmp_path / "run.json").write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        _torchrun("-m", "bench.training", str(tmp_path / "run.json")),
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["processes"] == 2 and report["steps"] == 3
    images = torch.load(tmp_path / "ddp" / "samples.pt")
    assert images.shape == (3, 3, 64, 64) and images.abs().max() <= 1
    # The same run in one process gives the same weights (draws are made for the global batch).
    from bench.plugins import get

    data = get("datasets", "synthetic").factory(**data_options)
    one_config = {**spec["train"], "out_dir": str(tmp_path / "one"), "grad_accum": 1}
    train(TrainConfig(**one_config), data, show_progress=False)
    two = load_checkpoint(tmp_path / "ddp" / "checkpoint").model_state
    one = load_checkpoint(tmp_path / "one" / "checkpoint").model_state
    for key in one:
        torch.testing.assert_close(two[key], one[key], atol=1e-5, rtol=1e-4)
    # The logged loss is the whole batch's, as one process logs it, not the main process's share.
    logged = {
        run: [json.loads(line)["loss"] for line in (tmp_path / run / "loss.jsonl").read_text().splitlines()]
        for run in ("ddp", "one")
    }
    assert len(logged["ddp"]) == 3 and logged["ddp"] == pytest.approx(logged["one"], rel=1e-4)


def test_init_from_starts_from_the_given_weights_and_refuses_other_presets(tmp_path: Path) -> None:
    from bench.checkpoints import CheckpointError, export_weights, load_model

    first = train(config(tmp_path / "a", max_steps=2), dataset(), show_progress=False)
    shipped = export_weights(first.checkpoint, tmp_path / "a.safetensors", dtype="fp32")
    source, _, _ = load_model(shipped)
    # lr 0 and no EMA: the one step changes nothing, so the checkpoint holds the starting weights
    tuned = train(
        config(tmp_path / "b", max_steps=1, lr=0.0, warmup_steps=0, ema_decay=None, init_from=str(shipped)),
        dataset(),
        show_progress=False,
    )
    start, _, _ = load_model(tuned.checkpoint, use_ema=False)
    for (name, a), (_, b) in zip(source.state_dict().items(), start.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    # names both presets the right way round (it said the tiny weights were saved with 'small'),
    # and the fix, without the 2,500 characters of key names it once listed
    with pytest.raises(
        CheckpointError,
        match=r"were saved for preset 'tiny' and do not fit the model this run trains \(preset 'small'\): "
        r"pass --preset tiny$",
    ):
        train(
            config(tmp_path / "c", preset="small", init_from=str(shipped), max_steps=1),
            dataset(),
            show_progress=False,
        )


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_loss_target_follows_the_prediction_type(tmp_path: Path, prediction_type: str) -> None:
    from diffusers import DDPMScheduler

    data = dataset(8)
    trainer = training._Trainer(
        config(tmp_path, batch_size=8, hflip=False, prediction_type=prediction_type), data
    )
    assert trainer.noise_config["prediction_type"] == prediction_type
    images, conds = next(trainer.data.batches([list(range(8))], 0))
    seen = {}

    def zero_net(noisy, t, cond):  # records what the network was given, predicts 0
        seen["noisy"], seen["t"] = noisy.float(), t
        return torch.zeros_like(noisy)

    trainer.net = zero_net
    loss = trainer._loss(images, conds, step=3).item()
    reference = DDPMScheduler.from_config(trainer.noise_config)
    ab = reference.alphas_cumprod[seen["t"]][:, None, None, None]
    noise = (seen["noisy"] - ab.sqrt() * images) / (1 - ab).sqrt()
    target = reference.get_velocity(images, noise, seen["t"]) if prediction_type == "v_prediction" else noise
    assert loss == pytest.approx(target.pow(2).mean().item(), rel=1e-4)


def test_unknown_prediction_type_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="prediction type must be one of"):
        training._Trainer(config(tmp_path, prediction_type="x0"), dataset(8))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"batch_size": 0}, "--batch-size must be at least 1, got 0"),
        ({"batch_size": -4}, "--batch-size must be at least 1, got -4"),
        ({"lr": -1.0}, "--lr must be a number, 0 or more"),
        ({"lr": float("nan")}, "--lr must be a number, 0 or more"),
        ({"max_steps": 0}, "--max-steps must be at least 1"),
        ({"max_minutes": -1.0}, "--max-minutes must be more than 0"),
        ({"ema_decay": 1.5}, r"--ema must be in \[0, 1\)"),
        ({"cond_drop_prob": 1.0}, r"--cond-drop must be in \[0, 1\)"),
        ({"num_train_timesteps": 0}, "--timesteps must be at least 2"),
        ({"warmup_steps": -3}, "--warmup-steps must be 0 or more"),
    ],
)
def test_values_that_cannot_train_are_refused_before_the_data_is_read(
    tmp_path: Path, overrides, message
) -> None:
    # batch 0 was a ZeroDivisionError deep in the trainer; batch -4 hung; lr -1 was torch's error.
    with pytest.raises(TrainingError, match=message):
        train(config(tmp_path, **overrides), _UntouchableDataset(), show_progress=False)
    assert not tmp_path.joinpath("checkpoint").exists()


def test_every_recipe_passes_its_own_check() -> None:
    for recipe in RECIPES.values():
        recipe.check()


class _UntouchableDataset:
    """Fails a test that reads it: the synthetic set renders for minutes on first read."""

    def __len__(self) -> int:
        raise AssertionError("the dataset was read before the config was checked")

    def __getattr__(self, name: str):
        raise AssertionError(f"the dataset's {name} was read before the config was checked")


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        ({"preset": "huge"}, CheckpointError, "the training config: .*unknown ddpm-unet preset 'huge'"),
        ({"model": "nope"}, CheckpointError, "the training config needs model 'nope'"),
        ({"scheduler": "cosinee"}, RegistryError, "unknown scheduler 'cosinee'"),
    ],
)
def test_misspelt_model_or_schedule_fails_before_the_data_is_read(
    tmp_path: Path, overrides, error, message
) -> None:
    with pytest.raises(error, match=message):
        training._Trainer(config(tmp_path, **overrides), _UntouchableDataset())


def test_resume_with_another_prediction_target_is_refused(tmp_path: Path) -> None:
    data = dataset()
    train(config(tmp_path, max_steps=3, prediction_type="epsilon"), data, show_progress=False)
    with pytest.raises(TrainingError, match="--timesteps 100 --prediction epsilon"):
        train(config(tmp_path, resume=True, prediction_type="v_prediction"), data, show_progress=False)


def _logged_lrs(out: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (out / "loss.jsonl").read_text().splitlines()]
    return [(r["step"], r["lr"]) for r in rows]


def test_cosine_lr_schedule_warms_up_then_decays_to_zero(tmp_path: Path) -> None:
    """Two warm-up steps, then a cosine decay over the other four: lr 0 at the last step. A row's
    lr is the one after that step's scheduler step (the next step's lr)."""
    import math

    lr, warmup, total = 1e-3, 2, 6
    train(config(tmp_path / "cos", lr_schedule="cosine", checkpoint_every=0), dataset(), show_progress=False)
    logged = _logged_lrs(tmp_path / "cos")
    assert [step for step, _ in logged] == [1, 2, 3, 4, 5, 6]

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))

    assert [v for _, v in logged] == pytest.approx([lr * factor(s) for s in range(1, total + 1)], abs=1e-12)
    assert max(v for _, v in logged) == pytest.approx(lr)  # the peak is the given lr
    assert logged[-1][1] == pytest.approx(0.0, abs=1e-12)
    after_warmup = [v for _, v in logged[1:]]
    assert all(a > b for a, b in zip(after_warmup, after_warmup[1:], strict=False))  # decays
    # The constant schedule (the default) stays at the given lr after warm-up.
    train(config(tmp_path / "const", max_steps=4, checkpoint_every=0), dataset(), show_progress=False)
    assert [v for _, v in _logged_lrs(tmp_path / "const")] == pytest.approx([lr] * 4)


def test_cosine_lr_schedule_follows_the_wall_time_budget(tmp_path: Path) -> None:
    """With --max-minutes and no step bound the run ends at an unknown step, so the decay follows
    the training seconds: half the budget gone, half the lr; the budget gone, lr 0."""
    trainer = training._Trainer(
        config(tmp_path, lr_schedule="cosine", max_steps=None, max_minutes=2.0, warmup_steps=0), dataset(8)
    )
    assert trainer.total_steps is None
    factors = []
    for seconds in (0.0, 60.0, 120.0, 500.0):
        trainer.elapsed = seconds
        factors.append(trainer._lr_factor(step=3))
    assert factors == pytest.approx([1.0, 0.5, 0.0, 0.0], abs=1e-12)
    # Both budgets: whichever is further along sets the lr (the run stops at the first one).
    both = training._Trainer(
        config(tmp_path, lr_schedule="cosine", max_steps=10, max_minutes=2.0, warmup_steps=0), dataset(8)
    )
    both.elapsed = 30.0  # a quarter of the time, half of the steps
    assert both._lr_factor(step=5) == pytest.approx(0.5)
    both.elapsed = 90.0  # three quarters of the time
    assert both._lr_factor(step=5) == pytest.approx(0.5 * (1 + math.cos(0.75 * math.pi)))


def test_autotune_needs_compile(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="needs compile"):
        training._Trainer(config(tmp_path, autotune=True, compile=False), dataset(8))
    with pytest.raises(TrainingError, match="needs compile"):
        training._Trainer(config(tmp_path, autotune=True), dataset(8))  # compile is off by default on CPU
    trainer = training._Trainer(config(tmp_path, batch_size=8), dataset(8))
    assert trainer.use_compile is False


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weights_make_every_target_an_x0_loss_weighted_min_snr_gamma(prediction_type: str) -> None:
    # The same x0 error, expressed as the network's target, weighs min(SNR, gamma) * |x0 error|^2.
    g = torch.Generator().manual_seed(0)
    alpha_bar = torch.tensor([0.02, 0.3, 0.5, 0.9, 0.999])
    a, s = alpha_bar.sqrt()[:, None], (1 - alpha_bar).sqrt()[:, None]
    x0, eps = torch.randn(5, 16, generator=g), torch.randn(5, 16, generator=g)
    x0_hat = x0 + 0.1 * torch.randn(5, 16, generator=g)
    x_t = a * x0 + s * eps
    eps_hat = (x_t - a * x0_hat) / s  # the noise that x0_hat implies
    if prediction_type == "v_prediction":
        err = (a * eps_hat - s * x0_hat) - (a * eps - s * x0)
    else:
        err = eps_hat - eps
    weight = training.min_snr_weight(alpha_bar, 5.0, prediction_type)
    snr = alpha_bar / (1 - alpha_bar)
    expected = snr.clamp(max=5.0) * (x0_hat - x0).square().mean(1)
    torch.testing.assert_close(weight * err.square().mean(1), expected, rtol=1e-4, atol=1e-6)
    # The ends of a schedule: pure noise (zero SNR) and a clean image (infinite SNR) stay finite.
    ends = training.min_snr_weight(torch.tensor([0.0, 1.0]), 5.0, prediction_type)
    assert torch.isfinite(ends).all() and ends[1] == 0


def test_min_snr_gamma_changes_the_loss_and_trains(tmp_path: Path) -> None:
    data = dataset(8)
    plain = training._Trainer(config(tmp_path / "plain", batch_size=8, prediction_type="v_prediction"), data)
    weighted = training._Trainer(
        config(tmp_path / "snr", batch_size=8, prediction_type="v_prediction", min_snr_gamma=5.0), data
    )
    weighted.model.load_state_dict(plain.model.state_dict())
    images, conds = next(plain.data.batches([list(range(8))], 0))
    with torch.no_grad():
        a, b = plain._loss(images, conds, step=3).item(), weighted._loss(images, conds, step=3).item()
    assert math.isfinite(b) and b > 0 and abs(a - b) > 1e-4 * a
    summary = train(config(tmp_path / "run", min_snr_gamma=5.0), data, show_progress=False)
    losses = [json.loads(line)["loss"] for line in (summary.out_dir / "loss.jsonl").read_text().splitlines()]
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses)


def test_the_loss_plot_names_the_loss_it_shows() -> None:
    assert training._loss_name(TrainConfig(prediction_type="epsilon")) == "MSE on the predicted noise"
    v_snr = TrainConfig(prediction_type="v_prediction", min_snr_gamma=5.0)
    assert training._loss_name(v_snr) == "MSE on the predicted v, Min-SNR-5 weighted"


def test_log_scale_line_plot_leaves_out_what_it_cannot_draw(tmp_path: Path) -> None:
    from PIL import Image

    from bench.plotting import line_plot

    out = line_plot(
        [0, 1, 2, 3], [0.2, 0.0, 0.01, 0.001], tmp_path / "loss.png", "t", "step", "loss", log_y=True
    )
    with Image.open(out) as image:
        assert image.size == (800, 500) and image.format == "PNG"
        # the curve (blue) is drawn: three positive points make a line
        pixels = torch.frombuffer(bytearray(image.convert("RGB").tobytes()), dtype=torch.uint8).view(-1, 3)
        assert (pixels == torch.tensor([31, 119, 180], dtype=torch.uint8)).all(dim=1).any()


@pytest.mark.parametrize("switch", ["group_norm_channels_last", "group_norm_by_channel_stats"])
def test_group_norm_variants_train_and_exclude_each_other(tmp_path: Path, switch: str) -> None:
    from bench.groupnorm import GroupNormByChannelStats, GroupNormChannelsLast

    variant = {
        "group_norm_channels_last": GroupNormChannelsLast,
        "group_norm_by_channel_stats": GroupNormByChannelStats,
    }
    with pytest.raises(
        TrainingError, match=f"group_norm_by_views and {switch} .*GroupNorm variants: choose one"
    ):
        training._Trainer(config(tmp_path, group_norm_by_views=True, **{switch: True}), dataset(8))
    trainer = training._Trainer(config(tmp_path, **{switch: True}), dataset(8))
    assert all(
        type(m) is variant[switch] for m in trainer.model.modules() if isinstance(m, torch.nn.GroupNorm)
    )
    kind = {"group_norm_channels_last": "channels-last", "group_norm_by_channel_stats": "channel-stats"}
    assert trainer.settings()["group_norm"] == kind[switch]
    summary = train(config(tmp_path / "run", max_steps=2, **{switch: True}), dataset(8), show_progress=False)
    assert summary.steps == 2 and math.isfinite(summary.final_loss)


def _switched_modules(model: torch.nn.Module, switch: str) -> list[bool]:
    """Per module the switch acts on: whether it is switched."""
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0
    from diffusers.models.upsampling import Upsample2D

    if switch == "fold_upsample":
        return [type(m) is not Upsample2D for m in model.modules() if isinstance(m, Upsample2D)]
    return [type(m.processor) is not AttnProcessor2_0 for m in model.modules() if isinstance(m, Attention)]


@pytest.mark.parametrize("switch", ["fold_upsample", "attention_by_sums"])
def test_a_model_level_switch_trains_the_same_losses(tmp_path: Path, switch: str) -> None:
    """--fold-upsample and --attention-by-sums change how modules compute, not what: the same loss
    curve (fp32, up to the rounding of other sums), the same state_dict keys in the checkpoint."""
    trainer = training._Trainer(config(tmp_path / "probe", **{switch: True}), dataset(8))
    switched = _switched_modules(trainer.model, switch)
    assert switched and all(switched)
    losses = {}
    for on in (False, True):
        out = tmp_path / f"{switch}-{on}"
        train(config(out, max_steps=4, **{switch: on}), dataset(8), show_progress=False)
        losses[on] = [json.loads(x)["loss"] for x in (out / "loss.jsonl").read_text().splitlines()]
    assert len(losses[True]) == 4 and losses[True] == pytest.approx(losses[False], rel=1e-4)
    from safetensors import safe_open

    keys = {}
    for on in (False, True):
        path = next((tmp_path / f"{switch}-{on}" / "checkpoint").glob("*.safetensors"))
        with safe_open(str(path), "pt") as f:
            keys[on] = sorted(f.keys())
    assert keys[True] == keys[False]


def test_the_logged_speed_is_the_last_interval_s_not_the_run_s_since_a_slow_first_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first step that compiles for minutes would otherwise hide the steady speed in every later
    row of loss.jsonl (a cumulative rate read 378 images/s at step 100 on an H100 training at 2,900)."""
    from types import SimpleNamespace

    from bench import progress as progress_module

    clock = SimpleNamespace(now=0.0)
    monkeypatch.setattr(progress_module, "time", SimpleNamespace(perf_counter=lambda: clock.now))
    real_step = training._Trainer.train_step

    def step(self, images, conds):  # 100 s for the first step (a compile), 1 s for each one after
        clock.now += 100.0 if self.step == 0 else 1.0
        return real_step(self, images, conds)

    monkeypatch.setattr(training._Trainer, "train_step", step)
    shown: list[str] = []  # the progress bar's status text before each step

    def progress(iterator, label, length, status):
        for item in iterator:
            shown.append(status())
            yield item

    monkeypatch.setattr(progress_module, "progress", progress)
    summary = train(
        config(tmp_path, max_steps=6, log_every=2, checkpoint_every=0), dataset(8), show_progress=True
    )
    rows = [json.loads(line) for line in (tmp_path / "loss.jsonl").read_text().splitlines()]
    # batch 4: 8 images in 101 s, then 8 images in 2 s per interval (rounded to 2 decimals)
    assert [r["images_per_second"] for r in rows] == [pytest.approx(8 / 101, abs=0.01), 4.0, 4.0]
    # the bar shows the last logged row: nothing before the first log, then each row in turn
    assert shown[:3] == ["", "", f"loss {rows[0]['loss']:.4f} 0 img/s"]
    assert shown[4] == f"loss {rows[1]['loss']:.4f} 4 img/s"
    # the summary gives the last interval's speed beside the whole run's (which counts the compile)
    assert summary.steady_images_per_second == 4.0
