"""Checkpoints: atomic directories, shipped single files, and errors a user can act on."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench import checkpoints
from bench.checkpoints import CheckpointError, export_weights, load_checkpoint, load_model, save_checkpoint
from bench.noise import noise_config
from bench.weights import sha256_of
from bench_builtins.models.ddpm_unet import make_ddpm_unet

torch.set_num_threads(1)


@pytest.fixture()
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return make_ddpm_unet("tiny")


def _save(
    path: Path, model: torch.nn.Module, name: str = "ddpm-unet", config: dict | None = None, **kw
) -> Path:
    return save_checkpoint(
        path,
        model_name=name,
        model=model,
        model_config=config or model.config,
        noise_config=noise_config("cosine", 100),
        **kw,
    )


def test_round_trip_and_export(tmp_path: Path, model: torch.nn.Module) -> None:
    ema = make_ddpm_unet("tiny")
    _save(tmp_path / "ck", model, ema=ema, step=7, training_state={"position": 3})
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [
        "config.json",
        "ema.safetensors",
        "model.safetensors",
        "optimizer.pt",
    ]
    # As any folder of the user's (the folder was 0700, from mkdtemp, whatever the umask).
    from bench.atomic import shared_mode

    assert (tmp_path / "ck").stat().st_mode & 0o777 == shared_mode(0o777)
    ckpt = load_checkpoint(tmp_path / "ck")
    assert ckpt.step == 7 and ckpt.training_state["position"] == 3 and ckpt.model_config["preset"] == "tiny"
    loaded, noise, meta = load_model(tmp_path / "ck")  # EMA weights by default
    assert noise["beta_schedule"] == "squaredcos_cap_v2" and meta["step"] == 7
    assert all(
        torch.equal(a, b)
        for a, b in zip(loaded.state_dict().values(), ema.state_dict().values(), strict=True)
    )
    raw, _, raw_meta = load_model(tmp_path / "ck", use_ema=False)
    assert torch.equal(raw.cond_embed.weight, model.cond_embed.weight)
    # the sha256 of the weights file that was loaded, EMA or not
    assert meta["weights_sha256"] == sha256_of(tmp_path / "ck" / "ema.safetensors")
    assert raw_meta["weights_sha256"] == sha256_of(tmp_path / "ck" / "model.safetensors")

    shipped = export_weights(tmp_path / "ck", tmp_path / "w.safetensors", dtype="fp16")
    from safetensors import safe_open

    with safe_open(str(shipped), "pt") as f:
        assert f.get_tensor("cond_embed.weight").dtype == torch.float16
    single, noise2, meta2 = load_model(shipped)
    assert noise2 == noise and meta2["weights"] == "ema" and meta2["dtype"] == "float16"
    assert meta2["weights_sha256"] == sha256_of(shipped)
    assert single.cond_embed.weight.dtype == torch.float32
    torch.testing.assert_close(single.cond_embed.weight, ema.cond_embed.weight, atol=1e-3, rtol=1e-3)


def test_an_exported_file_with_a_changed_weight_byte_is_refused(
    tmp_path: Path, model: torch.nn.Module
) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    _save(tmp_path / "ck", model, step=1)
    shipped = export_weights(tmp_path / "ck", tmp_path / "w.safetensors")
    load_model(shipped)  # intact: its own checksum matches
    data = bytearray(shipped.read_bytes())
    data[-3] ^= 0x01  # one bit of the last tensor's data: safetensors itself still reads the file
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt.*checksum"):
        load_model(broken)
    # A file exported before the checksum existed (no such key) loads as before.
    with safe_open(str(shipped), "pt") as f:
        checksums = (checkpoints.TENSORS_SHA256_KEY, checkpoints.HEADER_SHA256_KEY)
        metadata = {k: v for k, v in f.metadata().items() if k not in checksums}
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    save_file(state, str(tmp_path / "old.safetensors"), metadata=metadata)
    load_model(tmp_path / "old.safetensors")


def test_an_exported_file_with_a_changed_header_is_refused(tmp_path: Path, model: torch.nn.Module) -> None:
    """A changed digit in the config still parses as JSON: the header's own checksum catches it."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    _save(tmp_path / "ck", model, step=1)
    shipped = export_weights(tmp_path / "ck", tmp_path / "w.safetensors", guidance=2)
    with safe_open(str(shipped), "pt") as f:
        metadata = dict(f.metadata())
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    assert checkpoints.HEADER_SHA256_KEY in metadata
    meta = json.loads(metadata[checkpoints.METADATA_KEY])
    meta["noise_config"]["num_train_timesteps"] += 1
    for name, changed in {
        "config": {**metadata, checkpoints.METADATA_KEY: json.dumps(meta)},
        "defaults": {**metadata, checkpoints.SAMPLING_DEFAULTS_KEY: '{"guidance": 7.0}'},
    }.items():
        save_file(state, str(tmp_path / f"{name}.safetensors"), metadata=changed)
        with pytest.raises(CheckpointError, match="its header .* does not match the checksum"):
            load_model(tmp_path / f"{name}.safetensors")
    # A file exported before the header checksum existed (no such key) loads as before.
    old = {k: v for k, v in metadata.items() if k != checkpoints.HEADER_SHA256_KEY}
    save_file(state, str(tmp_path / "old.safetensors"), metadata=old)
    assert load_model(tmp_path / "old.safetensors")[2]["sampling_defaults"]


def test_an_exported_file_is_rewritten_with_new_sampling_defaults(
    tmp_path: Path, model: torch.nn.Module
) -> None:
    _save(tmp_path / "ck", model, step=7)
    first = export_weights(tmp_path / "ck", tmp_path / "a.safetensors", dtype="fp16")
    second = export_weights(first, tmp_path / "b.safetensors", guidance=3, guidance_interval=(40, 90))
    third = export_weights(second, tmp_path / "c.safetensors", dtype="bf16")  # keeps the defaults
    # Re-writing without a dtype keeps the file's own (it fell back to fp16).
    from safetensors.torch import load_file

    fourth = export_weights(third, tmp_path / "d.safetensors")
    assert {t.dtype for t in load_file(str(fourth)).values() if t.is_floating_point()} == {torch.bfloat16}
    a, _, meta_a = load_model(first)
    b, noise_b, meta_b = load_model(second)
    c, _, meta_c = load_model(third)
    assert "sampling_defaults" not in meta_a and meta_b["step"] == 7 and noise_b["num_train_timesteps"] == 100
    assert meta_b["sampling_defaults"] == {"guidance": 3.0, "guidance_interval": [40.0, 90.0]}
    assert meta_c["sampling_defaults"] == meta_b["sampling_defaults"] and meta_c["dtype"] == "bfloat16"
    assert all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_interrupted_save_keeps_the_previous_checkpoint(
    tmp_path: Path, model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    _save(tmp_path / "ck", model, step=1)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoints, "atomic_write_json", broken)
    with pytest.raises(OSError):
        _save(tmp_path / "ck", model, step=2)
    assert load_checkpoint(tmp_path / "ck").step == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]  # no temporary directory left


def test_truncated_and_corrupt_files(tmp_path: Path, model: torch.nn.Module) -> None:
    _save(tmp_path / "ck", model)
    shipped = export_weights(tmp_path / "ck", tmp_path / "w.safetensors")
    data = shipped.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(tmp_path / "cut.safetensors")
    weights = tmp_path / "ck" / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-3] ^= 0xFF
    weights.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="sha256"):
        load_model(tmp_path / "ck")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_model(tmp_path / "empty")


def test_weights_that_do_not_fit_their_config(tmp_path: Path, model: torch.nn.Module) -> None:
    wider = make_ddpm_unet("tiny", block_out_channels=[8, 32])
    _save(tmp_path / "ck", wider, config=model.config)  # weights of one shape, config of another
    with pytest.raises(CheckpointError) as error:
        load_model(tmp_path / "ck")
    message = str(error.value)
    assert "shape mismatches" in message and "checkpoint (32" in message and "preset 'tiny'" in message


def test_unknown_model_name(tmp_path: Path, model: torch.nn.Module) -> None:
    _save(tmp_path / "ck", model, name="ddpm-unt")
    with pytest.raises(CheckpointError, match="no installed plugin provides.*ddpm-unet"):
        load_model(tmp_path / "ck")


def test_sampling_defaults_are_checked_on_load(tmp_path: Path, model: torch.nn.Module) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    _save(tmp_path / "ck", model)
    plain = export_weights(tmp_path / "ck", tmp_path / "plain.safetensors")
    assert "sampling_defaults" not in load_model(plain)[2]
    shipped = export_weights(tmp_path / "ck", tmp_path / "w.safetensors", guidance=2.5)
    assert load_model(shipped)[2]["sampling_defaults"] == {"guidance": 2.5}
    with safe_open(str(shipped), "pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    # Written by hand, without the header checksum `bench export` adds (that would refuse any edit).
    metadata.pop(checkpoints.HEADER_SHA256_KEY)
    for bad, message in [
        ("{not json", "not JSON"),
        ('{"guidance": "3"}', "not a finite number"),
        ('{"guidance": 3, "guidance_interval": [900, 300]}', "lower end 900"),
        ('{"guidance_interval": [300, 1000]}', "without a guidance scale"),
    ]:
        save_file(tensors, str(tmp_path / "bad.safetensors"), metadata={**metadata, "sampling_defaults": bad})
        with pytest.raises(CheckpointError, match=message):
            load_model(tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match="negative"):
        export_weights(tmp_path / "ck", tmp_path / "neg.safetensors", guidance=-1)


def test_files_written_atomically_are_readable_by_others(tmp_path: Path) -> None:
    # safetensors replaced mkstemp's file with its own 0600 one: exported weights were private.
    from safetensors.torch import save_file

    from bench import atomic

    path = atomic.atomic_write(
        tmp_path / "w.safetensors", lambda tmp: save_file({"a": torch.zeros(2)}, str(tmp))
    )
    assert path.stat().st_mode & 0o777 == atomic.shared_mode(0o666)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_users_umask(
    tmp_path: Path, model: torch.nn.Module, monkeypatch, umask: int, mode: int
) -> None:
    """0644 was forced: a user whose umask keeps files private got world-readable checkpoints."""
    from bench import atomic

    monkeypatch.setattr(atomic, "_umask", lambda: umask)
    path = atomic.atomic_write_text(tmp_path / "r.json", "{}")
    assert path.stat().st_mode & 0o777 == mode
    folder = _save(tmp_path / "ck", model)
    assert {p.stat().st_mode & 0o777 for p in folder.iterdir()} == {mode}
    assert folder.stat().st_mode & 0o777 == 0o777 & ~umask


def test_a_model_without_a_config_is_refused_with_what_it_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plugin model without ``config`` sampled, then failed `bench train` with an AttributeError
    from deep inside the trainer: a checkpoint needs it to rebuild the model."""
    import bench.plugins
    from bench.checkpoints import build_model
    from bench.registry import Entry

    entry = Entry("models", "m-no-config", lambda **config: torch.nn.Linear(2, 2), "my_plugin")
    monkeypatch.setattr(bench.plugins, "get", lambda kind, name: entry)
    with pytest.raises(CheckpointError, match=r"model 'm-no-config' has no `config` dict attribute"):
        build_model("m-no-config", {})


def test_a_checkpoint_loads_onto_cpu_0_as_a_ddp_process_on_cpus_asks(
    tmp_path: Path, model: torch.nn.Module
) -> None:
    """accelerate gives each CPU process the device cpu:0, which safetensors refused: a DDP resume
    on CPUs called its good checkpoint truncated or corrupt."""
    _save(tmp_path / "ck", model)
    loaded = load_checkpoint(tmp_path / "ck", map_location=torch.device("cpu", 0))
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model_state[key], value), key


def test_optimizer_steps_reads_the_largest_exact_counter() -> None:
    """Adam's per-parameter counters (float tensors): a parameter without a gradient skips a step,
    an optimizer before its first step keeps none, and float32 stops counting exactly at 2**24."""
    params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))]
    optimizer = torch.optim.AdamW(params)
    assert checkpoints.optimizer_steps(optimizer.state_dict()) is None
    for step in range(3):
        params[0].grad = torch.ones(2)
        params[1].grad = torch.ones(2) if step == 0 else None
        optimizer.step()
    assert checkpoints.optimizer_steps(optimizer.state_dict()) == 3
    assert checkpoints.optimizer_steps({"state": {0: {"step": torch.tensor(2.0**24)}}}) is None
    assert checkpoints.optimizer_steps({"state": {0: {"momentum_buffer": torch.zeros(2)}}}) is None
