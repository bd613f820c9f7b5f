"""The speed suite (benchmarks/) runs on the CPU and `bench report` renders its JSON.

The suite is kept out of the default run (it measures, it does not test); this runs its CPU
part once at the smallest sizes in a subprocess, so a broken benchmark is caught here. No
assertion on a time: only that figures exist and are positive.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
from subprocess_env import bench_env

ROOT = Path(__file__).resolve().parents[1]
SCHEDULERS = ("cosine", "ddim", "dpm++2m", "unipc", "euler", "heun")

pytest.importorskip("pytest_benchmark")


@pytest.mark.slow
def test_cpu_benchmarks_run_and_report(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    env = {
        **os.environ,
        # the smallest sizes: 2 images, 2 steps, 1 round; one training step
        "BENCH_CPU_STEPS": "2",
        "BENCH_CPU_BATCH": "2",
        "BENCH_CPU_ROUNDS": "1",
        "BENCH_CPU_TRAIN_BATCH": "2",
        "BENCH_CPU_TRAIN_STEPS": "1",
    }
    command = [
        sys.executable,
        "-m",
        "pytest",
        "benchmarks/",
        "-k",
        "cpu and tiny",
        "--benchmark-only",
        f"--benchmark-json={out}",
        "-q",
        "-p",
        "no:cacheprovider",
    ]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    data = json.loads(out.read_text())
    benchmarks = data["benchmarks"]
    sampled = {b["extra_info"].get("scheduler") for b in benchmarks}
    assert set(SCHEDULERS) <= sampled, sampled
    assert any(b["extra_info"].get("scheduler", "").startswith("train") for b in benchmarks)
    for bench in benchmarks:
        extra = bench["extra_info"]
        assert extra["images_per_s"] > 0, bench["name"]
        assert extra["device"] == "cpu"
        assert extra["batch_size"] >= 1

    from bench.report import render_report

    table = render_report([out], "github")
    for name in SCHEDULERS:
        assert f"| {name} " in table, (name, table)
    assert "images/s" in table


def run_script(name: str, out: Path, *args: str, **env: str) -> str:
    """``python scripts/NAME OUT ARGS`` (``bash`` for a ``.sh``) with bench and the built-in plugins
    importable and ``env`` added to the environment; returns what it printed."""
    env = bench_env(**env)
    runner = ["bash"] if name.endswith(".sh") else [sys.executable]
    done = subprocess.run(
        [*runner, str(ROOT / "scripts" / name), str(out), *args],
        check=True,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done.stdout


def test_the_cpu_schedulers_are_chosen_by_environment(tmp_path: Path) -> None:
    """BENCH_CPU_SCHEDULERS was documented and ignored: every scheduler ran."""
    env = {**os.environ, "BENCH_CPU_SCHEDULERS": "cosine,ddim", "BENCH_CPU_STEPS": "2"}
    command = [sys.executable, "-m", "pytest", "benchmarks/", "--collect-only", "-q", "-k", "sampling_cpu"]
    listed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    collected = sorted(
        line.split("[", 1)[1] for line in listed.splitlines() if "::test_sampling_cpu_tiny[" in line
    )
    assert collected == ["cosine-2]", "ddim-2]"], listed


def test_the_sampling_profiler_splits_the_time_by_op_family(tmp_path: Path) -> None:
    """scripts/profile_sampling.py on the CPU, tiny preset: the table and the family shares exist."""
    run_script(
        "profile_sampling.py", tmp_path, "--preset", "tiny", "--batch", "4", "--steps", "2", "--guidance", "2"
    )
    summary = json.loads((tmp_path / "profile.json").read_text())
    shares = {name: family["share"] for name, family in summary["families"].items()}
    assert summary["device"] == "cpu" and summary["steps"] == 2 and summary["guidance"] == 2.0
    assert sum(shares.values()) == pytest.approx(1.0) and shares["convolution"] > 0
    assert 0 < summary["device_busy_share"] <= 1.0 + 1e-6
    assert "aten::" in (tmp_path / "profile.txt").read_text()
    assert "aten::" in (tmp_path / "host.txt").read_text()
    # the busiest ops by their whole names, busiest first, each with its family and calls per step
    kernels = summary["kernels"]
    times = [k["ms_per_step"] for k in kernels]
    assert kernels and times == sorted(times, reverse=True) and all(k["calls_per_step"] > 0 for k in kernels)
    assert {k["family"] for k in kernels} <= set(summary["families"]) and sum(
        k["share"] for k in kernels
    ) <= 1 + 1e-6
    assert any(k["name"].startswith("aten::") for k in kernels)


def test_the_tuning_pair_times_its_two_runs_one_after_the_other(tmp_path: Path) -> None:
    """scripts/tuning_pair.sh on the CPU, tiny preset: both runs write their timing, the baseline
    timed only once the other had compiled, the tuned run only after the baseline had finished."""
    run_script("tuning_pair.sh", tmp_path, "2", "1", "60", PRESET="tiny")
    baseline, tuned = (
        json.loads((tmp_path / name / "timing.json").read_text()) for name in ("baseline", "tuned")
    )
    assert baseline["timed_after_file"] is True and tuned["timed_after_file"] is True
    assert tuned["timed_at"] >= (tmp_path / "baseline" / "timing.json").stat().st_mtime
    assert baseline["timed_at"] >= (tmp_path / "tuned.ready").stat().st_mtime
    assert baseline["options"]["tune_kernels"] is False and tuned["preset"] == "tiny"


def test_the_sweep_times_each_setting_after_the_one_before_and_samples_in_chunks(tmp_path: Path) -> None:
    """scripts/sampling_sweep.sh on the CPU, tiny preset: three settings, each timed after the one
    before it had finished; --images samples several chunks of --batch."""
    printed = run_script(
        "sampling_sweep.sh",
        tmp_path,
        "1",
        "60",
        "b2=--batch 2 --images 4",
        "b4=--batch 4",
        "one=--batch 1 --images 4",
    )
    timings = {n: json.loads((tmp_path / n / "timing.json").read_text()) for n in ("b2", "b4", "one")}
    assert [timings[n]["images"] for n in ("b2", "b4", "one")] == [4, 4, 4]
    assert [timings[n]["batch"] for n in ("b2", "b4", "one")] == [2, 4, 1]
    assert timings["b4"]["timed_at"] >= (tmp_path / "b2" / "timing.json").stat().st_mtime
    assert timings["one"]["timed_at"] >= (tmp_path / "b4" / "timing.json").stat().st_mtime
    assert all(t["timed_after_file"] is True for t in timings.values())
    assert printed.count("images/s unprofiled") == 3 and "NOT COMPARABLE" not in printed
    for t in timings.values():  # the time per step is that of one chunk
        chunks = t["images"] // t["batch"]
        assert t["ms_per_step_unprofiled"] == pytest.approx(
            t["images"] * 1e3 / (t["images_per_s_unprofiled"] * chunks), rel=1e-6
        )


def test_the_sweep_flags_timings_taken_while_a_setting_still_compiled(tmp_path: Path) -> None:
    """A wait for the compiles shorter than they take (1 s here, for processes that import torch and
    build a model first) starts the timings beside the late ones: the tiny model's timing runs while
    the 113.7 M-parameter one still builds, and is flagged (session 32's first sweep on an H100 timed
    a setting at half its speed that way, unflagged). The last to compile times alone: not flagged
    (session 33's sweep flagged such a one)."""
    printed = run_script("sampling_sweep.sh", tmp_path, "1", "1", "a=--batch 2 --preset tiny", "b=--batch 16")
    lines = printed.splitlines()
    # b, 16 images through the large model, is still compiling when a's timing has ended
    assert (tmp_path / "b.ready").stat().st_mtime > (tmp_path / "a.done").stat().st_mtime
    assert lines[0].startswith("a: ") and "images/s unprofiled" in lines[0]
    assert "NOT COMPARABLE" in lines[1]
    assert lines[2].startswith("b: ") and "images/s unprofiled" in lines[2] and len(lines) == 3
    # marked for scripts/sweep_pick.py, which leaves such a timing out
    assert (tmp_path / "a.not-comparable").exists() and not (tmp_path / "b.not-comparable").exists()


def test_a_setting_that_fails_at_once_does_not_let_the_next_timing_start_beside_another(
    tmp_path: Path,
) -> None:
    """A setting that fails before it compiles still waits its turn to end: the one after it is timed
    only once the one before it has finished (session 33's sweep on an H100 timed two settings at
    once behind a failed one, each at about half its speed)."""
    printed = run_script(
        "sampling_sweep.sh", tmp_path, "1", "60", "a=--batch 2", "broken=--no-such-flag", "c=--batch 2"
    )
    c = json.loads((tmp_path / "c" / "timing.json").read_text())
    assert c["timed_at"] >= (tmp_path / "a" / "timing.json").stat().st_mtime
    assert (tmp_path / "broken.done").stat().st_mtime >= (tmp_path / "a.done").stat().st_mtime
    assert "broken: no timing" in printed and printed.count("images/s unprofiled") == 2


def test_the_training_profiler_times_and_splits_a_training_step(tmp_path: Path) -> None:
    """scripts/profile_training.py on the CPU, tiny preset: the step's time, its families, both tables."""
    run_script(
        "profile_training.py", tmp_path, "--preset", "tiny", "--batch", "4", "--steps", "2", "--warmup", "1"
    )
    summary = json.loads((tmp_path / "profile.json").read_text())
    shares = {name: family["share"] for name, family in summary["families"].items()}
    assert summary["device"] == "cpu" and summary["batch"] == 4 and summary["compile"] is False
    assert summary["ms_per_step_unprofiled"] > 0 and summary["images_per_s_unprofiled"] > 0
    assert summary["images_per_s_unprofiled"] == pytest.approx(4e3 / summary["ms_per_step_unprofiled"])
    assert sum(shares.values()) == pytest.approx(1.0) and shares["convolution"] > 0
    assert 0 < summary["device_busy_share"] <= 1.0 + 1e-6
    # the step's backward and optimizer ran under the profiler, not only a forward
    host = (tmp_path / "host.txt").read_text()
    assert "convolution_backward" in host and "aten::" in host


def test_conv_layouts_counts_the_backward_convolutions_and_what_each_group_norm_changes(
    tmp_path: Path,
) -> None:
    """scripts/conv_layouts.py, tiny preset: every convolution_backward of the step is counted, and
    both GroupNorm variants that keep channels_last leave fewer calls mixing layouts."""
    summaries = {}
    for kind in ("native", "views", "channels-last"):
        run_script("conv_layouts.py", tmp_path / kind, "--preset", "tiny", "--group-norm", kind)
        summaries[kind] = json.loads((tmp_path / kind / "conv_layouts.json").read_text())
    for summary in summaries.values():
        assert summary["convolution_backward_calls"] == sum(row["calls"] for row in summary["layouts"]) > 0
        assert summary["convolution_backward_calls"] == summaries["native"]["convolution_backward_calls"]
    for kind in ("views", "channels-last"):
        assert summaries[kind]["mixed_layout_calls"] < summaries["native"]["mixed_layout_calls"]


def test_a_misspelt_size_variable_stops_the_suite_before_it_measures() -> None:
    env = {**os.environ, "BENCH_CPU_STPES": "2"}  # BENCH_CPU_STEPS, misspelt: the default 10,25 ran
    command = [
        sys.executable,
        "-m",
        "pytest",
        "benchmarks/",
        "--collect-only",
        "-q",
        "-p",
        "no:cacheprovider",
    ]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "unknown environment variable(s): BENCH_CPU_STPES (did you mean BENCH_CPU_STEPS?)" in proc.stderr


def test_the_loss_check_frees_compiled_graphs_and_trains_a_reference_that_does_not_fit_in_passes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Session 22: at batch 512 the loss check ran out of memory on an 80 GB H100, the compiled
    graphs' pool still held while eager trained. Each curve now releases what it compiled, and an
    eager reference that does not fit in one pass trains in 2, 4... (gradient accumulation: the
    same weights), where eager bf16 at batch 1024 (about 124 GB) left the tuned kernels unchecked."""
    import torch

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import test_training_speed as suite

    resets: list[str] = []
    monkeypatch.setattr(suite.torch._dynamo, "reset", lambda: resets.append("reset"))
    from bench.training import TrainConfig
    from bench_builtins.datasets.base import random_dataset

    config = TrainConfig(
        preset="tiny", batch_size=2, device="cpu", bf16=False, compile=False, channels_last=False
    )
    losses = suite.loss_curve(config, random_dataset(4), 2)
    assert len(losses) == 2 and resets == ["reset"]

    real_curve = suite.loss_curve
    passes: list[int] = []

    def fits_in_two_passes(config: TrainConfig, *args: object) -> list[float]:
        passes.append(config.grad_accum)
        if config.grad_accum < 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return real_curve(config, *args)

    monkeypatch.setattr(suite, "loss_curve", fits_in_two_passes)
    curve, used = suite.eager_loss_curve(config, random_dataset(4), 2)
    assert used == 2 and passes == [1, 2] and curve == pytest.approx(losses, rel=1e-5)
    assert resets == ["reset", "reset", "reset"]  # the failed pass's memory released too

    def never_fits(*_args: object) -> list[float]:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(suite, "loss_curve", never_fits)
    with pytest.raises(torch.cuda.OutOfMemoryError):  # one image per pass and still too big
        suite.eager_loss_curve(config, random_dataset(4), 2)


def test_a_gpu_sampling_figure_gets_its_share_of_the_cards_peak(monkeypatch: pytest.MonkeyPatch) -> None:
    """Session 24: the GPU sampling benchmarks all failed on an H200 ('float' object is not
    subscriptable): the rounds' peak memory had been written over the card's peak FLOP/s."""
    import torch

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from speed_helpers import SEED_GFLOP_PER_IMAGE, record_sampling

    from bench.sampling import SampleResult

    class Benchmark:
        extra_info: dict = {}

    rounds = [
        SampleResult(
            images=torch.zeros(4, 3, 8, 8),
            nfe=100,
            seconds=s,
            peak_memory_mb=m,
            steps=100,
            scheduler="cosine",
        )
        for s, m in ((2.0, 500.0), (1.0, 700.0), (4.0, 600.0))
    ]
    info = record_sampling(
        Benchmark(),
        rounds,
        preset="seed",
        variant="graphs",
        device="cpu",
        compile_=True,
        cuda_graphs=True,
        dtype="bf16",
        batch_size=4,
        peak={"measured_tflops": 800.0, "nominal_tflops": 989.0},
    )
    assert (
        info["images_per_s"] == 2.0 and info["peak_memory_mb"] == 700.0
    )  # the median round; the largest peak
    tflops = SEED_GFLOP_PER_IMAGE * 1e9 * 100 * 2.0 / 1e12
    assert info["achieved_tflops"] == pytest.approx(tflops)
    assert info["fraction_of_measured_peak"] == pytest.approx(tflops / 800.0)
    assert info["fraction_of_nominal_peak"] == pytest.approx(tflops / 989.0)


def test_benchmark_counts_from_the_environment_are_whole_numbers_from_their_minimum(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """BENCH_TRAIN_STEPS=0 timed nothing and then failed on a loss that was never computed."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from speed_helpers import env_int, env_ints

    monkeypatch.setenv("BENCH_TRAIN_STEPS", "0")
    with pytest.raises(ValueError, match="BENCH_TRAIN_STEPS must be at least 1, got 0"):
        env_int("BENCH_TRAIN_STEPS", 20)
    assert env_int("BENCH_TRAIN_STEPS", 20, minimum=0) == 0
    monkeypatch.setenv("BENCH_TRAIN_STEPS", "ten")
    with pytest.raises(ValueError, match="BENCH_TRAIN_STEPS: 'ten' is not a whole number"):
        env_int("BENCH_TRAIN_STEPS", 20)
    monkeypatch.delenv("BENCH_TRAIN_STEPS")
    assert env_int("BENCH_TRAIN_STEPS", 20) == 20
    monkeypatch.setenv("BENCH_SPEED_BATCH", "256, 512")
    assert env_ints("BENCH_SPEED_BATCH", "256") == [256, 512]
    monkeypatch.setenv("BENCH_SPEED_BATCH", "256,-1")
    with pytest.raises(ValueError, match="BENCH_SPEED_BATCH must be at least 1, got -1"):
        env_ints("BENCH_SPEED_BATCH", "256")


def _spans(path: Path, colour: tuple[int, int, int], below: int = 0) -> tuple[int, int]:
    """The first and last column holding ``colour`` in the image's rows from ``below`` down."""
    from PIL import Image

    with Image.open(path) as image:
        rgb = image.convert("RGB")
        columns = [
            x for x in range(rgb.width) for y in range(below, rgb.height) if rgb.getpixel((x, y)) == colour
        ]
    return (min(columns), max(columns)) if columns else (-1, -1)


def test_a_bar_chart_draws_each_bar_to_its_value_and_marks_the_target(tmp_path: Path) -> None:
    from bench.plotting import _SCATTER_COLORS, PlotError, bar_chart

    out = bar_chart(
        ["a", "b", "c"], [10.0, 20.0, 40.0], tmp_path / "bars.png", "t", "ms", marker=(30.0, "goal")
    )
    (a0, a1), (b0, b1), (c0, c1) = (_spans(out, colour) for colour in _SCATTER_COLORS[:3])
    assert a0 == b0 == c0 > 0  # every bar starts at the axis
    a, b, c = a1 - a0, b1 - b0, c1 - c0
    assert 0 < a < b < c and b == pytest.approx(2 * a, rel=0.02) and c == pytest.approx(4 * a, rel=0.02)
    # the target's dashed line (below its caption, inside the plot) halfway between b's and c's ends
    m0, m1 = _spans(out, (200, 0, 0), below=40)
    assert b1 < m0 <= m1 < c1 and (m0 + m1) / 2 == pytest.approx((b1 + c1) / 2, abs=3)
    with pytest.raises(PlotError, match="2 labels for 3 values"):
        bar_chart(["a", "b"], [1.0, 2.0, 3.0], tmp_path / "x.png", "t", "ms")


def test_a_profile_is_drawn_and_redrawn_against_a_target(tmp_path: Path) -> None:
    """profile_sampling.py writes profile.png beside profile.json; scripts/plot_profile.py redraws
    it with a target line and refuses a timing.json, which holds no profile."""
    from PIL import Image

    run_script("profile_sampling.py", tmp_path / "p", "--preset", "tiny", "--batch", "2", "--steps", "1")
    with Image.open(tmp_path / "p" / "profile.png") as image:
        assert image.format == "PNG" and image.width == 800
    env = bench_env()
    script = [sys.executable, str(ROOT / "scripts" / "plot_profile.py")]
    out = tmp_path / "target.png"
    subprocess.run(
        [*script, str(tmp_path / "p" / "profile.json"), str(out), "--target-ms", "1"], check=True, env=env
    )
    with Image.open(out) as image:
        assert (200, 0, 0) in {
            image.getpixel((x, y)) for x in range(image.width) for y in range(image.height)
        }
    run_script(
        "profile_sampling.py",
        tmp_path / "t",
        "--preset",
        "tiny",
        "--batch",
        "2",
        "--steps",
        "1",
        "--no-profile",
    )
    refused = subprocess.run(
        [*script, str(tmp_path / "t" / "timing.json"), str(tmp_path / "no.png")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert (
        refused.returncode == 2
        and "not a profile.json" in refused.stderr
        and not (tmp_path / "no.png").exists()
    )


def _script(name: str) -> types.ModuleType:
    """scripts/NAME.py as a module (a script, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


@pytest.mark.parametrize(("form", "cin", "cout"), [("conv_by_gather", 3, 16), ("conv_by_scatter", 16, 3)])
@pytest.mark.parametrize("kernel", [1, 3, 5])
def test_thin_conv_timing_forms_are_the_convolution(form: str, cin: int, cout: int, kernel: int) -> None:
    """scripts/thin_conv_timing.py's matrix-product forms compute the convolution they are timed
    against: float64 agrees to its rounding on a non-square channels_last image, bias included."""
    import torch
    from torch import nn

    script = _script("thin_conv_timing")
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2).double()
    x = torch.randn(2, cin, 9, 7, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    expected = conv(x)
    got = getattr(script, form)(conv, x)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() < 1e-12


def test_thin_conv_timing_triton_forms_are_switched_copies() -> None:
    """The script's Triton forms are copies switched by bench.end_convs (the originals untouched),
    equal to the modules they are timed against (here through their CPU fallback)."""
    import torch
    from torch import nn

    from bench.end_convs import NormSiLUConvOut, TritonConvIn

    script = _script("thin_conv_timing")
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 16, 3, padding=1)
    tail = script.OutputTail(16, 3, groups=4)
    switched_conv, switched_tail = script.on_triton(conv), script.on_triton(tail)
    assert type(switched_conv) is TritonConvIn and type(conv) is nn.Conv2d
    assert type(switched_tail.conv_out) is NormSiLUConvOut and type(tail.conv_out) is nn.Conv2d
    x = torch.randn(2, 3, 8, 8)
    h = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(switched_conv(x), conv(x))
        torch.testing.assert_close(switched_tail(h), tail(h), rtol=1e-4, atol=1e-5)
    assert set(script.forms_of(conv)) == {"cudnn", "padded", "gather", "triton"}
    assert set(script.forms_of(nn.Conv2d(16, 3, 3, padding=1))) == {"cudnn", "padded", "scatter"}
    assert set(script.forms_of(tail)) == {"torch", "triton"}


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--streams", "1,x"], "take whole numbers separated by commas"),
        (["--batches", "0"], "must be at least 1"),
        ([], "needs a CUDA device"),
    ],
)
def test_stream_overlap_refuses_bad_sizes_and_a_machine_without_cuda(
    tmp_path: Path, arguments: list[str], message: str
) -> None:
    """scripts/stream_overlap.py says what is wrong before it builds a model (on a CUDA machine the
    last case would run, so it is skipped there)."""
    import torch

    if not arguments and torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the script would time it")
    command = [sys.executable, "scripts/stream_overlap.py", str(tmp_path / "out"), *arguments]
    proc = subprocess.run(command, cwd=ROOT, env=bench_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert not (tmp_path / "out").exists()


def _timed(sweep: Path, name: str, images_per_s: float, *, comparable: bool = True) -> None:
    """A setting's timing as scripts/sampling_sweep.sh leaves it."""
    (sweep / name).mkdir(parents=True)
    (sweep / name / "timing.json").write_text(json.dumps({"images_per_s_unprofiled": images_per_s}))
    if not comparable:
        (sweep / f"{name}.not-comparable").touch()


def test_the_sweep_pick_takes_the_fastest_candidate_past_the_faster_baseline(tmp_path: Path) -> None:
    pick = _script("sweep_pick").pick
    _timed(tmp_path, "base", 100.0)
    _timed(tmp_path, "base-again", 102.0)  # the faster baseline is the one to beat
    _timed(tmp_path, "small", 102.5)  # 1.005x: under the 1.01x asked
    _timed(tmp_path, "fast", 104.0)  # 1.020x
    _timed(tmp_path, "faster", 105.0)  # 1.029x
    _timed(tmp_path, "flagged", 150.0, comparable=False)  # timed beside a compile: left out
    candidates = ["small", "fast", "faster", "flagged", "failed"]
    best, lines = pick(tmp_path, ["base", "base-again"], candidates, 1.01)
    assert best == "faster"
    assert "flagged: no usable timing" in lines and "failed: no usable timing" in lines
    assert pick(tmp_path, ["base", "base-again"], ["small"], 1.01)[0] is None
    assert pick(tmp_path, ["base", "base-again"], ["small"], 1.004)[0] == "small"
    best, lines = pick(tmp_path, ["missing", "flagged"], candidates, 1.01)
    assert best is None and "nothing picked" in lines[0]


@pytest.mark.slow
def test_the_target_job_carries_the_picked_candidate_into_its_tuned_run(tmp_path: Path) -> None:
    """scripts/sampling_target.sh on the CPU, tiny preset, one step: the untuned sweep times the
    default first and last around the candidate, the pick (any gain, here) carries it with its own
    flags into the target run beside the plain target, and the job ends bundled and DONE (the
    reference loop and the streams need CUDA: the one says so, the other is skipped)."""
    out = tmp_path / "job"
    run_script(
        "sampling_target.sh",
        out,
        PRESET="tiny",
        STEPS="1",
        SWEEP_BATCH="2",
        TARGET_BATCH="2",
        TUNE="",
        MIN_GAIN="0.01",
        CANDIDATES="nchw=--no-channels-last",
        OVERLAP_LIMIT="0",
    )
    sweep = {
        n: json.loads((out / "sweep" / n / "timing.json").read_text()) for n in ("base", "nchw", "base-again")
    }
    assert sweep["nchw"]["timed_at"] >= (out / "sweep" / "base" / "timing.json").stat().st_mtime
    assert sweep["base-again"]["timed_at"] >= (out / "sweep" / "nchw" / "timing.json").stat().st_mtime
    assert "picked: nchw" in (out / "pick.log").read_text()
    target, picked = (
        json.loads((out / "tuned" / n / "timing.json").read_text()) for n in ("target", "target-nchw")
    )
    assert target["options"]["channels_last"] is True and picked["options"]["channels_last"] is False
    assert picked["batch"] == 2 and picked["preset"] == "tiny"
    assert (out / "DONE").exists() and list((tmp_path / "job.bundle").glob("bundle.tgz.part-*"))
