"""Evaluators: judge loading, the pooled accuracy definition, FID/KID offline, judge training."""

from __future__ import annotations

import socket

import pytest
import torch
import torchvision
from torch import nn

import bench_builtins.evaluators.accuracy as acc_mod
import bench_builtins.evaluators.fid as fid_mod
from bench.plugins import get_plugins
from bench_builtins.evaluators.judge import JudgeError, load_judge


def course_net(seed: int = 0) -> nn.Module:
    """The course judge built independently of the code under test, with random weights."""
    torch.manual_seed(seed)
    net = torchvision.models.resnet18()
    net.fc = nn.Sequential(nn.Linear(512, 24), nn.Sigmoid())
    # Random BN statistics too, so a loader that skipped buffers would score differently.
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


@pytest.fixture(scope="module")
def course_ckpt(tmp_path_factory):
    net = course_net()
    path = tmp_path_factory.mktemp("judge") / "checkpoint.pth"
    torch.save({"model": net.state_dict()}, path)
    return path, net


def random_conditions(b: int, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    cond = torch.zeros(b, 24)
    for i in range(b):
        k = 1 + i % 3
        cond[i, torch.randperm(24, generator=gen)[:k]] = 1
    return cond


def random_images(b: int, seed: int = 2) -> torch.Tensor:
    return torch.rand(b, 3, 64, 64, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def course_compute_acc(out: torch.Tensor, onehot_labels: torch.Tensor) -> float:
    """The course script's loop, written plainly."""
    acc, total = 0, 0
    for i in range(out.size(0)):
        k = int(onehot_labels[i].sum().item())
        total += k
        _, outi = out[i].topk(k)
        _, li = onehot_labels[i].topk(k)
        for j in outi:
            if j in li:
                acc += 1
    return acc / total


def evaluator(**options):
    return get_plugins().registry("evaluators").get("iclevr-acc").factory(**options)


# --- judge loading -------------------------------------------------------------------------------


def test_course_checkpoint_scores_like_the_course_script(course_ckpt):
    path, net = course_ckpt
    images, cond = random_images(40), random_conditions(40)
    result = evaluator(judge=str(path), device="cpu", batch_size=16)(images, cond)
    with torch.no_grad():
        expected = course_compute_acc(net(images), cond)
    assert result["acc"] == expected
    assert result["acc_n"] == 40
    assert set(result["acc_by_objects"]) == {1, 2, 3}
    assert 0 <= result["acc_per_image_mean"] <= 1


def test_alias_and_label_names(course_ckpt):
    path, _ = course_ckpt
    labels = [f"l{i}" for i in range(24)]
    entry = get_plugins().registry("evaluators").get("acc")
    assert entry.name == "iclevr-acc"
    result = entry.factory(judge=path, device="cpu", labels=labels)(random_images(6), random_conditions(6))
    assert all(k in labels for k in result["acc_per_label"])


def test_safetensors_and_bare_state_dict_load_the_same(course_ckpt, tmp_path):
    from safetensors.torch import save_file

    path, net = course_ckpt
    bare = tmp_path / "bare.pt"
    torch.save(net.state_dict(), bare)
    st = tmp_path / "judge.safetensors"
    save_file({k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()}, str(st))
    x = random_images(2)
    ref = load_judge(path)(x)
    assert torch.equal(load_judge(bare)(x), ref)
    half = load_judge(st)
    assert next(half.parameters()).dtype == torch.float32
    assert torch.allclose(half(x), ref, atol=5e-2)


def test_judge_load_errors(course_ckpt, tmp_path):
    path, net = course_ckpt
    with pytest.raises(JudgeError, match="does not exist"):
        load_judge(tmp_path / "nope.pth")
    text = tmp_path / "notes.pth"
    text.write_text("hello, not a checkpoint")
    with pytest.raises(JudgeError, match="not a PyTorch checkpoint"):
        load_judge(text)
    truncated = tmp_path / "trunc.pth"
    truncated.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(JudgeError, match="truncated"):
        load_judge(truncated)
    state = net.state_dict()
    wrong = dict(state)
    wrong["fc.0.weight"] = torch.zeros(10, 512)
    del wrong["layer4.1.bn2.bias"]
    bad = tmp_path / "wrong.pth"
    torch.save({"model": wrong}, bad)
    with pytest.raises(
        JudgeError, match=r"missing keys.*layer4\.1\.bn2\.bias.*shape mismatches.*fc\.0\.weight"
    ):
        load_judge(bad)
    other = tmp_path / "other.pth"
    torch.save({"model": {"linear.weight": torch.zeros(2, 2)}, "epoch": 3}, other)
    with pytest.raises(JudgeError, match="unexpected keys"):
        load_judge(other)


def test_shipped_judge_loads():
    net = load_judge(None)
    assert net.fc[0].weight.shape == (24, 512)


# --- the accuracy definition ----------------------------------------------------------------------


def onehot(*rows):
    out = torch.zeros(len(rows), 24)
    for i, row in enumerate(rows):
        out[i, list(row)] = 1
    return out


def test_hand_computed_example():
    scores = torch.full((3, 24), -5.0)
    scores[0, [3]] = 2  # k=1, top1 = 3, condition {3}: 1 hit
    scores[1, [0, 5, 7]] = torch.tensor([3.0, 2.0, 1.0])  # k=3, top3 = {0,5,7}, condition {0,7,9}: 2 hits
    scores[2, [1, 2]] = torch.tensor([1.0, 2.0])  # k=2, top2 = {2,1}, condition {4,6}: 0 hits
    cond = onehot([3], [0, 7, 9], [4, 6])
    assert acc_mod.pooled_accuracy(scores, cond) == 3 / 6
    assert acc_mod.per_image_mean_accuracy(scores, cond) == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert acc_mod.accuracy_by_objects(scores, cond) == {1: 1.0, 2: 0.0, 3: 2 / 3}
    per_label = acc_mod.per_label_hit_rate(scores, cond)
    assert per_label == {0: 1.0, 3: 1.0, 4: 0.0, 6: 0.0, 7: 1.0, 9: 0.0}


def test_extra_objects_never_penalised():
    # The image shows more objects than asked (high scores for 10 and 11): only the top k_i count.
    scores = torch.zeros(1, 24)
    scores[0, [2, 10, 11]] = torch.tensor([9.0, 8.0, 7.0])
    assert acc_mod.pooled_accuracy(scores, onehot([2])) == 1.0
    scores[0, 2] = 7.5  # now an extra object outranks it: the definition counts a miss
    assert acc_mod.pooled_accuracy(scores, onehot([2])) == 0.0


def test_ties_break_towards_lower_index():
    scores = torch.zeros(2, 24)  # all tied: the top-k are labels 0..k-1
    cond = onehot([0, 5], [1])
    assert acc_mod.per_image_hits(scores, cond)[0].tolist() == [1, 0]
    assert acc_mod.pooled_accuracy(scores, cond) == 1 / 3


def test_pooled_differs_from_per_image_mean_and_matches_loop():
    gen = torch.Generator().manual_seed(5)
    scores, cond = torch.rand(50, 24, generator=gen), random_conditions(50, seed=7)
    assert acc_mod.pooled_accuracy(scores, cond) == course_compute_acc(scores, cond)
    scores = torch.zeros(2, 24)
    scores[0, 0] = 1  # k=1 hit
    cond = onehot([0], [1, 2, 3])  # k=3 with top3 = {0, 1, 2} -> 2 hits
    assert acc_mod.pooled_accuracy(scores, cond) == 3 / 4
    assert acc_mod.per_image_mean_accuracy(scores, cond) == pytest.approx((1 + 2 / 3) / 2)


def test_misses_name_what_was_not_found_and_what_was_said_instead(monkeypatch):
    ev = evaluator(judge=load_judge(None), device="cpu", labels=[f"l{i}" for i in range(24)])
    scores = torch.full((3, 24), -5.0)
    scores[0, 3] = 2  # condition {3}: found
    scores[1, [0, 5, 7]] = torch.tensor([3.0, 2.0, 1.0])  # condition {0, 7, 9}: 9 missed, 5 said
    scores[2, [1, 2]] = torch.tensor([1.0, 2.0])  # condition {4, 6}: both missed, 2 and 1 said
    monkeypatch.setattr(ev, "scores", lambda images: scores)  # the judge's scores, fixed by hand
    misses = ev.misses(random_images(3), onehot([3], [0, 7, 9], [4, 6]))
    assert misses == [(1, ["l9"], ["l5"]), (2, ["l4", "l6"], ["l2", "l1"])]


def test_empty_condition_is_an_error():
    with pytest.raises(ValueError, match="name no object"):
        acc_mod.pooled_accuracy(torch.zeros(2, 24), onehot([1], []))


def test_input_checks(course_ckpt):
    path, _ = course_ckpt
    ev = evaluator(judge=path, device="cpu")
    cond = random_conditions(2)
    with pytest.raises(ValueError, match=r"look like \[0, 1\]"):
        ev(torch.rand(2, 3, 64, 64), cond)
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        ev(torch.rand(2, 3, 64, 64) * 255, cond)
    with pytest.raises(ValueError, match="dtype"):
        ev((torch.rand(2, 3, 64, 64) * 255).to(torch.uint8), cond)
    with pytest.raises(ValueError, match=r"shape \(B, 3, 64, 64\)"):
        ev(random_images(2)[:, :, :32, :32], cond)
    with pytest.raises(ValueError, match=r"shape \(B, 3, 64, 64\)"):
        ev(random_images(2)[:, :1], cond)
    with pytest.raises(ValueError, match=r"\(B, 24\)"):
        ev(random_images(2), torch.ones(2, 10))
    with pytest.raises(ValueError, match="must match"):
        ev(random_images(2), random_conditions(3))


# --- FID / KID ------------------------------------------------------------------------------------


class TinyDataset(torch.utils.data.Dataset):
    labels = [f"l{i}" for i in range(24)]
    image_size = 64

    def __init__(self, n: int = 24, cache_key: str | None = "tiny-v1") -> None:
        self.images = random_images(n, seed=11)
        self.conds = random_conditions(n)
        self.reads = 0
        if cache_key:
            self.cache_key = cache_key

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        self.reads += 1
        return self.images[i], self.conds[i]


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(fid_mod, "TORCH_FIDELITY_WEIGHTS", fid_mod.Path("/nonexistent/inception.pth"))


def test_fid_and_kid_offline_use_judge_features_and_cache(course_ckpt, tmp_path, no_network, monkeypatch):
    path, _ = course_ckpt
    fid_mod._memory_cache.clear()
    data = TinyDataset()
    reg = get_plugins().registry("evaluators")
    opts = dict(dataset=data, judge=str(path), device="cpu", cache_dir=tmp_path, ref_n=20)
    images = random_images(8, seed=3)
    fid = reg.get("fid").factory(**opts)(images, None)
    assert set(fid) == {"fid-judge", "fid-judge_n", "fid-judge_ref_n"}
    assert fid["fid-judge_n"] == 8 and fid["fid-judge_ref_n"] == 20
    assert fid["fid-judge"] == fid["fid-judge"] and fid["fid-judge"] > 0  # finite, positive
    assert data.reads == 20
    assert len(list((tmp_path / "real-features").glob("judge-*.safetensors"))) == 1

    kid = reg.get("kid").factory(**opts)(images, None)
    assert kid["kid-judge_n"] == 8 and kid["kid-judge_ref_n"] == 20 and kid["kid-judge_subset_size"] == 8
    assert {"kid-judge", "kid-judge_std"} <= set(kid)
    # Second call, fresh process state: the disk cache answers, no reference image is read again.
    fid_mod._memory_cache.clear()
    monkeypatch.setattr(fid_mod, "_extract_batched", _counting(fid_mod._extract_batched, calls := []))
    again = reg.get("fid").factory(**opts)(images, None)
    assert data.reads == 20 and len(calls) == 1  # only the generated images
    assert again["fid-judge"] == pytest.approx(fid["fid-judge"])
    # Same images -> a distance near zero (float64 covariances; N below the feature dimension).
    same = reg.get("fid").factory(**opts)(data.images[fid_mod.reference_indices(24, 20)], None)
    assert abs(same["fid-judge"]) < 1e-3


def _counting(fn, calls):
    def wrapped(*args, **kwargs):
        calls.append(1)
        return fn(*args, **kwargs)

    return wrapped


def test_fid_without_cache_key_keys_on_content(course_ckpt, tmp_path, no_network):
    path, _ = course_ckpt
    fid_mod._memory_cache.clear()
    opts = dict(judge=str(path), device="cpu", cache_dir=tmp_path, ref_n=10)
    ev = get_plugins().registry("evaluators").get("fid").factory(dataset=TinyDataset(cache_key=None), **opts)
    ev(random_images(4), None)
    other = TinyDataset(cache_key=None)
    other.images = other.images.flip(0)  # other content, other subset -> another cache entry
    get_plugins().registry("evaluators").get("fid").factory(dataset=other, **opts)(random_images(4), None)
    assert len(list((tmp_path / "real-features").glob("*.safetensors"))) == 2


def test_fid_errors(course_ckpt, tmp_path, no_network):
    path, _ = course_ckpt
    reg = get_plugins().registry("evaluators")
    with pytest.raises(ValueError, match="reference dataset"):
        reg.get("fid").factory(judge=str(path), device="cpu")
    with pytest.raises(ValueError, match="--fid-weights .*missing.pth does not exist"):
        reg.get("fid").factory(dataset=TinyDataset(), judge=str(path), fid_weights=tmp_path / "missing.pth")
    ev = reg.get("fid").factory(dataset=TinyDataset(), judge=str(path), device="cpu", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="at least 2"):
        ev(random_images(1), None)


# --- judge training -------------------------------------------------------------------------------


def test_the_judges_held_out_images_are_whole_scenes():
    """Frames _0, _1, _2 of one i-CLEVR scene share objects and pixels: they go to one side."""
    from bench_builtins.evaluators.judge_training import heldout_split

    files = [f"CLEVR_train_{s:06d}_{k}.png" for s in range(40) for k in range(3)]
    held, train = heldout_split(files, len(files), 0.1, seed=0)
    assert len(held) == 12 and len(held) + len(train) == 120  # 4 of 40 scenes, 3 frames each
    scene = lambda i: files[i].rsplit("_", 1)[0]  # noqa: E731
    assert not {scene(i) for i in held.tolist()} & {scene(i) for i in train.tolist()}
    held, train = heldout_split(None, 50, 0.1, seed=0)  # no file names: images
    assert len(held) == 5 and sorted(held.tolist() + train.tolist()) == list(range(50))


def test_train_judge_writes_a_loadable_judge(tmp_path):
    import json

    from bench_builtins.evaluators.judge_training import train_judge

    data = TinyDataset(n=12)
    out = tmp_path / "judge.safetensors"
    lines = []
    metrics = train_judge(
        data,
        out,
        heldout=TinyDataset(n=6),
        epochs=1,
        batch_size=8,
        lr=1e-3,
        device="cpu",
        seed=0,
        log=lines.append,
    )
    assert out.exists() and out.with_suffix(".json").exists()
    assert json.loads(out.with_suffix(".json").read_text())["heldout_n"] == 6
    assert {"heldout_acc_clean", "heldout_acc_blur1", "heldout_acc_downup32"} <= set(metrics)
    net = load_judge(out)
    ev = evaluator(judge=net, device="cpu")
    assert 0 <= ev(random_images(3), random_conditions(3))["acc"] <= 1


def test_a_stop_signal_ends_judge_training_after_the_epoch_and_still_saves(tmp_path, monkeypatch):
    import os
    import signal

    from bench_builtins.evaluators import judge_training

    real_augment, calls = judge_training.augment, []

    def augment_then_ctrl_c(*args, **kwargs):  # the first batch of epoch 1 asks to stop
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return real_augment(*args, **kwargs)

    monkeypatch.setattr(judge_training, "augment", augment_then_ctrl_c)
    out, lines = tmp_path / "judge.safetensors", []
    metrics = judge_training.train_judge(
        TinyDataset(n=12), out, heldout=TinyDataset(n=6), epochs=5, batch_size=4, lr=1e-3, device="cpu",
        log=lines.append,
    )  # fmt: skip
    assert metrics["epochs"] == 1 and metrics["stopped_by"] == "interrupted" and len(calls) == 3  # one epoch
    assert metrics["stopped_early"]
    assert "SIGINT: stopped after epoch 1" in lines
    assert "heldout_acc_clean" in metrics and load_judge(out) is not None


def test_augment_keeps_shape_and_range():
    from bench_builtins.evaluators.judge_training import augment, gaussian_blur

    x = random_images(4)
    y = augment(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1
    flat = torch.full((2, 3, 16, 16), 0.3)
    assert torch.allclose(gaussian_blur(flat, torch.tensor([0.0, 1.5])), flat, atol=1e-6)


def test_inception_fid_errors_name_the_option_and_the_missing_package(tmp_path, monkeypatch) -> None:
    with pytest.raises(fid_mod.FidError, match=r"--fid-weights .*nope.pth does not exist"):
        fid_mod.resolve_extractor(fid_weights=tmp_path / "nope.pth", device="cpu")
    with pytest.raises(fid_mod.FidError, match=r"--fid-weights .* is a folder; pass the local Inception"):
        fid_mod.resolve_extractor(fid_weights=tmp_path, device="cpu")
    weights = tmp_path / "pt_inception.pth"
    weights.write_bytes(b"weights")
    monkeypatch.setattr(fid_mod, "_torch_fidelity_available", lambda: False)
    with pytest.raises(
        fid_mod.FidError, match=r"torch-fidelity .* not installed \(pip install torch-fidelity\)"
    ):
        fid_mod.resolve_extractor(fid_weights=weights, device="cpu")


def test_misses_after_accuracy_of_the_same_images_runs_the_judge_once(course_ckpt, monkeypatch) -> None:
    path, _ = course_ckpt
    ev = get_plugins().registry("evaluators").get("iclevr-acc").factory(judge=str(path), device="cpu")
    calls = []
    import bench_builtins.evaluators.judge as judge_mod

    original = judge_mod.judge_logits
    monkeypatch.setattr(judge_mod, "judge_logits", lambda *a, **k: calls.append(1) or original(*a, **k))
    images, conditions = random_images(4), torch.zeros(4, 24)
    conditions[:, 0] = 1
    ev(images, conditions)
    ev.misses(images, conditions)
    assert len(calls) == 1
    ev(images.clone(), conditions)  # other images: scored anew
    assert len(calls) == 2


def test_a_judge_file_that_needs_full_unpickling_says_so(course_ckpt, tmp_path, capsys):
    """A pickled whole module loaded without a word, though unpickling runs the file's code."""
    path, net = course_ckpt
    whole = tmp_path / "whole.pth"
    torch.save({"model": net.state_dict(), "epoch": _Epoch(3)}, whole)  # an object: not weights_only
    x = random_images(2)
    assert torch.equal(load_judge(whole)(x), load_judge(path)(x))
    err = capsys.readouterr().err
    assert f"judge {whole}: holds more than tensors; loading it with full unpickling" in err
    load_judge(path)
    assert "full unpickling" not in capsys.readouterr().err  # a plain checkpoint loads quietly


@pytest.mark.parametrize("content", [b'[["red sphere"]]', bytes(range(256)) * 8])
def test_a_judge_file_that_is_no_torch_file_is_not_unpickled(tmp_path, capsys, content):
    """A JSON or random bytes under a .pth name were said to hold "more than tensors" and were
    loaded with full unpickling before the error: a false warning about running the file's code."""
    path = tmp_path / "judge.pth"
    path.write_bytes(content)
    with pytest.raises(JudgeError, match="it is not a PyTorch checkpoint") as error:
        load_judge(path)
    assert "Weights only" not in str(error.value)  # torch's page of advice is not the reason
    assert "full unpickling" not in capsys.readouterr().err


class _Epoch:
    def __init__(self, n: int) -> None:
        self.n = n


@pytest.mark.parametrize("name", ["error", "steps", "images/s", "seeds", "brightness_error"])
def test_a_metric_named_like_a_report_column_is_refused(name):
    """An evaluator's "images/s" made a second images/s column, its "error" sat beside the row's."""
    from bench.results import MetricsError, checked_metrics

    with pytest.raises(MetricsError, match=f"returned a metric named '{name}', a name the results rows"):
        checked_metrics("mine", {name: 1.0}, {})
    assert checked_metrics("mine", {"brightness": 1.0}, {}) == {"brightness": 1.0}


def test_a_stopped_judge_training_resumes_to_the_judge_of_an_unstopped_run(tmp_path):
    """Stopped after its first epoch (--max-minutes), then resumed: the same weights as two epochs
    straight, its state file removed at the end; a state of other options, or none, is refused."""
    from safetensors.torch import load_file

    from bench_builtins.evaluators.judge_training import JudgeResumeError, resume_state_path, train_judge

    kwargs = dict(
        heldout=TinyDataset(n=4), epochs=2, batch_size=4, lr=1e-3, device="cpu", seed=3, log=lambda m: None
    )
    straight = train_judge(TinyDataset(n=12), tmp_path / "straight.safetensors", **kwargs)
    out = tmp_path / "judge.safetensors"
    with pytest.raises(JudgeResumeError, match="nothing to resume"):
        train_judge(TinyDataset(n=12), out, resume=True, **kwargs)
    first = train_judge(TinyDataset(n=12), out, time_limit_s=0.0, **kwargs)
    assert first["epochs"] == 1 and first["stopped_by"] == "max_minutes" and resume_state_path(out).exists()
    # The budget counts every run of this out: resumed with it spent, nothing more is trained.
    spent = train_judge(TinyDataset(n=12), out, resume=True, time_limit_s=0.0, **kwargs)
    assert (spent["epochs"], spent["steps"], spent["stopped_by"]) == (1, 3, "max_minutes")
    assert resume_state_path(out).exists()
    with pytest.raises(JudgeResumeError, match=r"lr: stopped run 0.001, this one 0.002"):
        train_judge(TinyDataset(n=12), out, resume=True, **{**kwargs, "lr": 2e-3})
    resumed = train_judge(TinyDataset(n=12), out, resume=True, **kwargs)
    assert (resumed["epochs"], resumed["steps"]) == (straight["epochs"], straight["steps"]) == (2, 6)
    assert resumed["final_loss"] == straight["final_loss"]
    a, b = load_file(str(tmp_path / "straight.safetensors")), load_file(str(out))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not resume_state_path(out).exists()  # finished: nothing left to resume
    resume_state_path(out).write_bytes(b"not a state")
    with pytest.raises(JudgeResumeError, match="damaged or not a judge training state"):
        train_judge(TinyDataset(n=12), out, resume=True, **kwargs)


def test_a_judge_training_whose_time_limit_falls_after_its_last_epoch_finished(tmp_path):
    """The limit is checked before an epoch: a run past it only once every epoch is done is a
    finished run, not an early stop that leaves a state to resume."""
    from bench_builtins.evaluators.judge_training import resume_state_path, train_judge

    out = tmp_path / "judge.safetensors"
    kwargs = dict(heldout=TinyDataset(n=4), batch_size=4, lr=1e-3, device="cpu", seed=3, log=lambda m: None)
    done = train_judge(TinyDataset(n=12), out, epochs=1, time_limit_s=0.0, **kwargs)
    assert (done["epochs"], done["stopped_by"], done["stopped_early"]) == (1, "epochs", False)
    assert not resume_state_path(out).exists()
