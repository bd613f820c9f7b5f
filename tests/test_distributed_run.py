"""``bench run`` split over processes: shards, seeds, and a two-process CPU run against one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from image_checks import assert_same_images_across_batch_shapes
from PIL import Image

from bench.distributed import gather, launched, shard, world

RUN = [
    "run",
    "--checkpoint", "random",
    "--preset", "tiny",
    "--scheduler", "ddim",
    "--steps", "2",
    "--seeds", "0",
    "--evaluators", "none",
    "--no-denoising-figure",
    "--device", "cpu",
]  # fmt: skip


def test_shards_cover_every_row_once_in_order() -> None:
    for n in (0, 1, 5, 64, 65):
        for size in (1, 2, 3, 8):
            parts = [shard(n, rank, size) for rank in range(size)]
            assert [i for p in parts for i in range(n)[p]] == list(range(n))
            assert max(p.stop - p.start for p in parts) - min(p.stop - p.start for p in parts) <= 1


def test_a_shard_sampled_alone_gives_the_same_images_as_the_whole_run() -> None:
    import torch

    from bench.noise import noise_config
    from bench.plugins import get
    from bench.sampling import SamplingOptions, sample

    torch.manual_seed(0)
    model = get("models", "ddpm-unet").factory(preset="tiny")
    conditions = torch.zeros(5, 24)
    conditions[:, 3] = 1
    kwargs = dict(
        train_config=noise_config("cosine"),
        steps=2,
        seed=7,
        device="cpu",
        options=SamplingOptions.plain(batch_size=5),
    )
    whole = sample(model, "ddim", conditions, **kwargs).images
    tail = sample(model, "ddim", conditions[2:], first_index=2, **kwargs).images
    assert_same_images_across_batch_shapes(whole[2:], tail)  # the same noise per image
    assert not torch.allclose(whole[:3], tail, atol=1e-2)  # and not just the first images again


def test_one_process_is_rank_zero_of_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert not launched() and world("cpu") == (0, 1) and gather(3) == [3]


def _bench(args: list[str], out: Path, processes: int) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "bench"]
    if processes > 1:
        launcher = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc_per_node", str(processes), "-m", "bench",
        ]  # fmt: skip
    # OMP_NUM_THREADS=1: two processes on two cores; --device cpu makes accelerate pick gloo.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "ACCELERATE_MIXED_PRECISION"):
        env.pop(name, None)
    done = subprocess.run(
        [*launcher, *args, "--out", str(out)], env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _pngs(out: Path) -> dict[str, np.ndarray]:
    return {
        str(p.relative_to(out)): np.asarray(Image.open(p)) for p in sorted((out / "images").rglob("*.png"))
    }


@pytest.mark.slow
def test_two_processes_sample_the_same_images_as_one(tmp_path: Path) -> None:
    one = _bench(RUN, tmp_path / "one", 1)
    two = _bench(RUN, tmp_path / "two", 2)

    images_one, images_two = _pngs(tmp_path / "one"), _pngs(tmp_path / "two")
    assert len(images_one) == 2 * 32 + 2  # test + new_test, 32 images each, and their grids
    assert images_one.keys() == images_two.keys()
    for name, pixels in images_one.items():
        assert np.array_equal(pixels, images_two[name]), name

    rows_one = json.loads((tmp_path / "one" / "results.json").read_text())["rows"]
    rows_two = json.loads((tmp_path / "two" / "results.json").read_text())["rows"]
    assert [(r["condition_set"], r["n_images"]) for r in rows_two] == [("test", 32), ("new_test", 32)]
    assert [(r["condition_set"], r["n_images"]) for r in rows_one] == [("test", 32), ("new_test", 32)]
    for row in rows_two:
        speed = row["speed"]
        assert row["error"] is None and speed["processes"] == 2 and speed["total_images"] == 64
        assert speed["images_per_s"] == pytest.approx(64 / speed["seconds"])
    assert all(r["speed"]["processes"] == 1 for r in rows_one)
    # Only the main process prints the summary.
    assert two.stdout.count("results: ") == one.stdout.count("results: ") == 1


def test_another_process_out_of_memory_reaches_the_cell_as_out_of_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A process that ran out of GPU memory reached the main one as a RuntimeError, so the cell's
    row lost its "try --batch-size N" and the main process kept its memory."""
    from types import SimpleNamespace

    import torch

    import bench.runner
    import bench.sampling

    mine = object()  # this process's SampleResult
    parts = [mine, "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"]
    monkeypatch.setattr(bench.runner, "barrier", lambda: None)
    monkeypatch.setattr(bench.runner, "gather", lambda value: parts if value is mine else None)
    monkeypatch.setattr(bench.sampling, "sample", lambda *args, **kwargs: mine)
    ctx = SimpleNamespace(
        size=2,
        rank=0,
        main=True,
        conditions=torch.zeros(4, 24),
        model=None,
        train_noise={},
        device="cpu",
        options=None,
    )
    with pytest.raises(
        torch.cuda.OutOfMemoryError, match="process 1 of 2: OutOfMemoryError: CUDA out of memory"
    ):
        bench.runner._sample_all(ctx, "ddim", seed=0, steps=1)
    parts[1] = "ValueError: a plugin's bug"
    with pytest.raises(RuntimeError, match="process 1 of 2 failed: ValueError"):
        bench.runner._sample_all(ctx, "ddim", seed=0, steps=1)


def test_a_failed_warm_up_in_one_process_stops_every_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model failing in one process's warm-up left the others waiting for it in the first cell
    for ever: now each process shares its outcome, and every one stops with the failure."""
    from types import SimpleNamespace

    import torch

    import bench.runner
    import bench.sampling
    from bench.sampling import SamplingOptions

    shared: list[object] = []  # what this process put into the all-gather
    others: list[object] = [(100.0, 2.0)]  # process 1's outcome

    def all_gather(value: object) -> list[object]:
        shared.append(value)
        return [value, *others]

    monkeypatch.setattr(bench.runner, "all_gather", all_gather)
    monkeypatch.setattr(
        bench.sampling, "sample", lambda *a, **k: SimpleNamespace(peak_memory_mb=None, warmup_seconds=0.5)
    )
    models = SimpleNamespace(get=lambda name: SimpleNamespace(plugin="my-plugin"))
    ctx = SimpleNamespace(
        size=2, rank=0, main=True, conditions=torch.zeros(4, 24), model=None, train_noise={}, device="cpu",
        options=SamplingOptions.plain(batch_size=4), guidance=SimpleNamespace(guidance=[1.0]),
        log=lambda message: None, plugins=SimpleNamespace(registry=lambda kind: models),
        config=SimpleNamespace(model="mine"), warm_ups={},
    )  # fmt: skip
    bench.runner._warm_up(ctx)
    assert ctx.warm_ups == {False: (100.0, 2.0)}  # the largest figures of both processes
    others[0] = "ValueError: a plugin's bug"
    with pytest.raises(
        RuntimeError, match="process 1 of 2 failed in the warm-up: ValueError: a plugin's bug"
    ):
        bench.runner._warm_up(ctx)
    others[0] = "OutOfMemoryError: CUDA out of memory"
    with pytest.raises(torch.cuda.OutOfMemoryError, match="process 1 of 2: OutOfMemoryError"):
        bench.runner._warm_up(ctx)

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("my own bug")

    monkeypatch.setattr(bench.sampling, "sample", broken)
    others[0], shared[:] = (100.0, 2.0), []
    with pytest.raises(
        Exception, match="--model mine: its forward .plugin .my-plugin.. failed: ValueError: my own bug"
    ):
        bench.runner._warm_up(ctx)
    assert shared == ["ValueError: my own bug"]  # it still reached the collective the others wait in
