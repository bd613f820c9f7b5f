"""scripts/bundle_results.sh: what comes back from a GPU run, in parts small enough to transfer."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bundle_results.sh"


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_bundle_keeps_results_seed0_grids_misses_and_weights_drops_checkpoints_and_images(
    tmp_path: Path,
) -> None:
    src = tmp_path / "camp"
    _write(src / "run" / "results.json", b"{}")
    _write(src / "run" / "images" / "cell" / "seed0" / "test_grid.png", b"grid")
    _write(src / "run" / "images" / "cell" / "seed0" / "test_misses.png", b"misses")
    _write(src / "run" / "images" / "cell" / "seed0" / "0.png", b"one image")
    _write(src / "run" / "images" / "cell" / "seed1" / "test_misses.png", b"seed 1's misses")
    _write(src / "run" / "images" / "cell" / "seed1" / "test_grid.png", b"seed 1's grid")
    _write(src / "train" / "checkpoint" / "model.safetensors", b"x" * 1000)
    _write(src / "train" / "loss.jsonl", b"{}\n")
    weights = os.urandom(2_500_000)  # incompressible: needs three 1 MB parts
    _write(src / "small.safetensors", weights)

    out = tmp_path / "out"
    subprocess.run(["bash", str(SCRIPT), str(src), str(out), "1"], check=True, capture_output=True)
    parts = sorted(out.glob("bundle.tgz.part-*"))
    assert len(parts) == 3 and all(p.stat().st_size <= 2**20 for p in parts)

    with tarfile.open(fileobj=io.BytesIO(b"".join(p.read_bytes() for p in parts)), mode="r:gz") as tar:
        names = {Path(n).as_posix().removeprefix("./") for n in tar.getnames() if tar.getmember(n).isfile()}
        assert tar.extractfile("./small.safetensors").read() == weights
    assert names == {
        "run/results.json",
        "run/images/cell/seed0/test_grid.png",
        "run/images/cell/seed0/test_misses.png",
        "train/loss.jsonl",
        "small.safetensors",
    }


WAIT = SCRIPT.parent / "gpu_wait.sh"


def test_gpu_wait_brings_progress_always_and_the_bundle_once_done(tmp_path: Path) -> None:
    out, dest = tmp_path / "camp", tmp_path / "dest"
    _write(out / "train-a.log", b"step 10\nstep 20\n")
    _write(Path(f"{out}.bundle") / "bundle.tgz.part-aa", b"part")
    running = subprocess.run(["bash", str(WAIT), str(out), str(dest), "0"], capture_output=True, text=True)
    assert running.returncode == 0 and "not done" in running.stdout and "step 20" in running.stdout
    # Before DONE only the progress so far comes back: the logs, never the bundle's parts.
    assert sorted(p.name for p in dest.iterdir()) == ["progress.tgz"]
    with tarfile.open(dest / "progress.tgz") as progress:
        assert progress.extractfile("./train-a.log").read() == b"step 10\nstep 20\n"
    (out / "DONE").touch()
    done = subprocess.run(["bash", str(WAIT), str(out), str(dest), "600"], capture_output=True, text=True)
    assert done.returncode == 0 and "DONE" in done.stdout
    assert (dest / "bundle.tgz.part-aa").read_bytes() == b"part"


def test_gpu_wait_shows_progress_not_warning_tracebacks(tmp_path: Path) -> None:
    out = tmp_path / "camp"
    log = b'training 10%\rtraining 50% loss 0.1\nUserWarning: Dynamo detected a call\n  File "x.py"\n'
    _write(out / "train-a.log", log + b"  torch._dynamo.utils.warn_once(msg)\n")
    _write(out / "seed-a" / "loss.jsonl", b'{"step": 25, "loss": 0.5}\n{"step": 50, "loss": 0.4}\n')
    shown = subprocess.run(
        ["bash", str(WAIT), str(out), str(tmp_path / "dest"), "0"], capture_output=True, text=True
    )
    assert "training 50% loss 0.1" in shown.stdout and '"step": 50' in shown.stdout
    assert "Dynamo" not in shown.stdout and "warn_once" not in shown.stdout
