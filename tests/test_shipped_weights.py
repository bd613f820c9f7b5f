"""The weights the project ships: checked by sha256, within budget, loadable, and the judge works."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench.weights import CHECKSUMS, WEIGHTS_DIR, WeightsError, sha256_of, shipped_weights

SHIPPED = ("judge-synthetic.safetensors", "ddpm-unet-small-synthetic.safetensors")


def test_every_shipped_file_matches_its_recorded_sha256_and_fits_the_budget() -> None:
    recorded = {
        line.split()[1]: line.split()[0]
        for line in (WEIGHTS_DIR / CHECKSUMS).read_text().splitlines()
        if line
    }
    assert set(recorded) == set(SHIPPED)
    for name in SHIPPED:
        assert sha256_of(shipped_weights(name)) == recorded[name]
    assert sum((WEIGHTS_DIR / n).stat().st_size for n in SHIPPED) < 48e6


def test_a_changed_or_missing_file_is_refused(tmp_path: Path) -> None:
    copy = tmp_path / "weights"
    shutil.copytree(WEIGHTS_DIR, copy)
    data = bytearray((copy / SHIPPED[1]).read_bytes())
    data[-1] ^= 0xFF
    (copy / SHIPPED[1]).write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="corrupt or were changed"):
        shipped_weights(SHIPPED[1], weights_dir=copy)
    (copy / SHIPPED[0]).unlink()
    with pytest.raises(WeightsError, match="TRAINING.md"):
        shipped_weights(SHIPPED[0], weights_dir=copy)


def test_the_shipped_model_rebuilds_from_its_file_alone() -> None:
    from bench.checkpoints import load_model

    model, noise, meta = load_model(shipped_weights(SHIPPED[1]))
    assert model.config["preset"] == "small"
    assert noise["beta_schedule"] == "squaredcos_cap_v2"
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(10.0e6, rel=0.01)
    # The first README command samples with what the file recommends (TRAINING.md says why).
    assert meta["sampling_defaults"] == {"guidance": 5.0}


def test_the_shipped_judge_reads_unseen_renders(tmp_path: Path) -> None:
    """Real behaviour, not a load check: held-out renders (never trained on) are read right."""
    from bench.plugins import get

    renders = get("datasets", "synthetic").factory(scenes=8, seed=12345, split="heldout", cache_dir=tmp_path)
    judge = get("evaluators", "iclevr-acc").factory(device="cpu", labels=renders.labels)
    images = renders.images_uint8().float() / 127.5 - 1
    assert judge(images, renders.conditions_multi_hot())["acc"] >= 0.95


def test_the_judges_ceiling_on_the_shipped_test_set_is_near_1() -> None:
    """Renders holding exactly test.json's objects: what a perfect generator would score."""
    from bench.conditions import load_condition_set, load_labels_spec
    from bench.runner import DEFAULT_CONDITION_FILES
    from bench_builtins.evaluators.accuracy import make_accuracy_evaluator
    from bench_builtins.evaluators.ceiling import score_renders

    test = load_condition_set(DEFAULT_CONDITION_FILES[0], load_labels_spec())
    judge = {"iclevr-acc": make_accuracy_evaluator(device="cpu", labels=load_labels_spec())}
    metrics = score_renders(test, judge, per_condition=2, seed=0)
    assert metrics["acc_n"] == 2 * len(test) and metrics["acc_objects"] == 2 * sum(map(len, test.conditions))
    assert metrics["acc"] >= 0.95 and set(metrics["acc_by_objects"]) == {1, 2, 3}
    with pytest.raises(ValueError, match="at least 1"):
        score_renders(test, judge, per_condition=0)
