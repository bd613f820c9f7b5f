"""Checkpoints: a directory of safetensors + JSON written atomically, and single shipped files.

A training checkpoint is a directory::

    model.safetensors   the trained weights
    ema.safetensors     the EMA weights (when training keeps an EMA)
    optimizer.pt        optimizer, lr scheduler, RNG states, step, epoch, data-order position
    config.json         model name and config (with preset), noise-schedule config, training
                        config, step, and the sha256 of every file above

It is written into a hidden sibling ``.<name>.tmp-XXXX`` and renamed into place only when
complete; the previous checkpoint stays in place until then, so an interrupted save never
loses the last good one. Shipped weights are ONE ``.safetensors`` file (fp16/bf16 tensors)
whose metadata key ``bench`` holds the same config JSON; ``export_weights`` makes one.

A shipped file may also recommend how to sample it: the metadata key ``sampling_defaults``
holds JSON such as ``{"guidance": 3.0, "guidance_interval": [300, 1000]}`` (``bench export
--guidance 3 --guidance-interval 300,1000``). ``load_model`` checks it and returns it as
``meta["sampling_defaults"]``; ``bench run`` uses it when ``--guidance`` is not given.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.atomic import atomic_write, atomic_write_json, shared_mode
from bench.guidance import (
    GuidanceIntervalError,
    GuidanceScaleError,
    check_interval,
    check_interval_reaches,
    check_scale,
    format_interval,
)
from bench.jsonfile import read_json
from bench.weights import WEIGHTS_DIR, WeightsError, sha256_of, shipped_weights

if TYPE_CHECKING:
    import torch

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
STATE_FILE = "optimizer.pt"
CONFIG_FILE = "config.json"
METADATA_KEY = "bench"
SAMPLING_DEFAULTS_KEY = "sampling_defaults"
# An exported file's own checksum of its tensors, in its header: a checkpoint folder has its
# config.json's sha256s and a shipped file SHA256SUMS, but an exported file travels alone, and a
# byte changed inside a tensor still loads. Files exported before it have none and load as before.
TENSORS_SHA256_KEY = "tensors_sha256"
# ... and of the rest of its header (model and noise config, sampling defaults): a changed digit
# there (num_train_timesteps, a guidance scale) still parses as JSON and would sample wrongly.
HEADER_SHA256_KEY = "header_sha256"
CHECKPOINT_SUBDIR = "checkpoint"  # where `bench train --out DIR` writes its checkpoint (bench/training.py)
# What a checkpoint may be, for the messages that refuse something else.
ACCEPTED = (
    "a checkpoint folder written by `bench train` (its --out folder's checkpoint/) or a single "
    ".safetensors file made by `bench export`"
)


class CheckpointError(Exception):
    """A checkpoint is missing, corrupt, or does not fit its model; the message says what to do."""


@dataclass
class Checkpoint:
    """Everything a checkpoint directory holds (tensors on ``map_location``)."""

    path: Path
    model_name: str
    model_config: dict[str, Any]
    noise_config: dict[str, Any]
    train_config: dict[str, Any]
    step: int
    epoch: int
    model_state: dict[str, torch.Tensor]
    ema_state: dict[str, torch.Tensor] | None = None
    training_state: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def unwrap_model(model: Any) -> Any:
    """The plain module under DDP (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif hasattr(model, "module") and type(model).__name__ in ("DistributedDataParallel", "DataParallel"):
            model = model.module
        else:
            return model


def _state_dict(model_or_state: Any) -> dict[str, torch.Tensor]:
    state = model_or_state if isinstance(model_or_state, dict) else unwrap_model(model_or_state).state_dict()
    # safetensors refuses shared or non-contiguous storage; a detached contiguous copy is cheap.
    return {k: v.detach().contiguous() for k, v in state.items()}


def _previous(path: Path) -> Path:
    return path.parent / f".{path.name}.previous"


def readable(path: str | os.PathLike) -> Path:
    """Where a reader finds the checkpoint ``path``: a save caught between its two renames has the
    old copy aside, read where it lies. Readers never rename: only the writer does (tidy_killed_saves),
    or a reader's rename would make a save in progress fail."""
    path = Path(path)
    previous = _previous(path)
    return previous if not path.exists() and previous.is_dir() else path


def tidy_killed_saves(path: str | os.PathLike) -> None:
    """What killed saves left beside the checkpoint ``path``, tidied by its one writer (the main
    process of a training, before it saves): the old copy renamed aside by a save killed between
    its renames is put back, and the temporary folders of saves killed while writing (each as
    large as a checkpoint, hidden by its dot) are removed."""
    path = Path(path)
    previous = _previous(path)
    if not path.exists() and previous.is_dir():
        try:
            os.replace(previous, path)
        except FileNotFoundError:
            pass  # another process of the launch put it back first
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model_name: str,
    model: Any,
    model_config: dict[str, Any],
    noise_config: dict[str, Any],
    train_config: dict[str, Any] | None = None,
    step: int = 0,
    epoch: int = 0,
    ema: Any | None = None,
    training_state: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory at ``path`` atomically; return ``path``.

    ``model`` and ``ema`` are modules (wrappers are unwrapped) or state dicts. ``training_state``
    (optimizer, lr scheduler, RNG states, data position...) goes to ``optimizer.pt``.
    """
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tidy_killed_saves(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    os.chmod(tmp, shared_mode(0o777))  # mkdtemp makes 0700
    try:
        save_file(_state_dict(model), str(tmp / MODEL_FILE))
        if ema is not None:
            save_file(_state_dict(ema), str(tmp / EMA_FILE))
        if training_state is not None:
            torch.save({**training_state, "step": step, "epoch": epoch}, tmp / STATE_FILE)
        files = {f.name: sha256_of(f) for f in sorted(tmp.iterdir())}
        meta = {
            "format": "bench-checkpoint",
            "format_version": FORMAT_VERSION,
            "model_name": model_name,
            "model_config": model_config,
            "noise_config": noise_config,
            "train_config": train_config or {},
            "step": int(step),
            "epoch": int(epoch),
            "files": files,
            **(extra or {}),
        }
        atomic_write_json(tmp / CONFIG_FILE, meta)
        for f in tmp.iterdir():  # durable before the rename makes it visible
            with open(f, "rb") as handle:
                os.fsync(handle.fileno())
            os.chmod(f, shared_mode(0o666))  # safetensors writes its files 0600
        previous = _previous(path)
        if previous.exists():
            shutil.rmtree(previous)
        if path.exists():
            os.replace(path, previous)
        os.replace(tmp, path)
        shutil.rmtree(previous, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _read_safetensors(file: Path, device: str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    if not file.exists():
        raise CheckpointError(f"weights file {file} is missing")
    # safetensors refuses "cpu:0", the device accelerate gives each CPU process of a launch: a DDP
    # resume on CPUs called its good checkpoint "truncated or corrupt".
    device = "cpu" if str(device).split(":")[0] == "cpu" else str(device)
    try:
        with safe_open(str(file), framework="pt", device=device) as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no items()
    except (SafetensorError, OSError, RuntimeError, ValueError) as error:
        # A .pt/.pth from torch.save (a course model) fails as "header too large": say what it is.
        if file.suffix in (".json", ".jsonl"):  # e.g. a checkpoint's config.json, or a loss log
            if (file.parent / CONFIG_FILE).exists() and (file.parent / MODEL_FILE).exists():
                raise CheckpointError(
                    f"{file} is a file inside the checkpoint folder {file.parent}; pass the folder instead"
                ) from None
            raise CheckpointError(f"{file} is a JSON file, not weights; bench reads {ACCEPTED}") from None
        if _is_torch_pickle(file):
            raise CheckpointError(
                f"{file} is a torch pickle (torch.save, .pt/.pth), not a safetensors file or a bench "
                f"checkpoint folder; bench reads {ACCEPTED}"
            ) from None
        raise CheckpointError(
            f"{file} is truncated or corrupt ({error}); use an earlier checkpoint or re-export the "
            "weights with `bench export`"
        ) from error
    return tensors, metadata


def _is_torch_pickle(file: Path) -> bool:
    """Whether ``file`` starts like a ``torch.save`` file: a zip archive (``PK\\x03\\x04``, torch >= 1.6)
    or a bare pickle (byte 0x80, then its protocol 2-5). A safetensors file, even a cut one, opens
    with its 8-byte header size and then ``{``, whatever those size bytes are."""
    try:
        with open(file, "rb") as handle:
            head = handle.read(9)
    except OSError:
        return False
    if head[8:9] == b"{":
        return False
    return head[:4] == b"PK\x03\x04" or (
        head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")
    )


def read_checkpoint_config(path: Path) -> dict[str, Any]:
    """A checkpoint folder's config.json, or a CheckpointError saying what is wrong with it."""
    config_file = path / CONFIG_FILE
    if not config_file.exists():
        inner = path / CHECKPOINT_SUBDIR
        if (inner / CONFIG_FILE).exists():
            # The folder `bench train --out` wrote: point at its checkpoint rather than guess (one
            # checkpoint, one name, in results files and resume).
            raise CheckpointError(
                f"{path} is a `bench train` output folder, not a checkpoint; its checkpoint is {inner}"
            )
        raise CheckpointError(
            f"{path} is not a bench checkpoint: {CONFIG_FILE} is missing (bench reads {ACCEPTED})"
        )
    return read_json(config_file, CheckpointError)


def _verify_files(path: Path, meta: dict[str, Any], names: list[str]) -> None:
    recorded = meta.get("files", {})
    for name in names:
        file = path / name
        if not file.exists():
            raise CheckpointError(f"checkpoint {path} is incomplete: {name} is missing")
        expected = recorded.get(name)
        if expected is not None and sha256_of(file) != expected:
            raise CheckpointError(
                f"checkpoint file {file} is corrupt or was modified: its sha256 differs from the one "
                f"recorded in {CONFIG_FILE}; use an earlier checkpoint"
            )


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint directory (sha256 of every file checked) into a :class:`Checkpoint`."""
    import torch

    path = readable(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not path.is_dir():
        raise CheckpointError(
            f"{path} is a file; load_checkpoint reads a checkpoint directory (use load_model)"
        )
    meta = read_checkpoint_config(path)
    present = [n for n in (MODEL_FILE, EMA_FILE, STATE_FILE) if n in meta.get("files", {})] or [MODEL_FILE]
    _verify_files(path, meta, present)
    model_state, _ = _read_safetensors(path / MODEL_FILE, str(map_location))
    ema_state = _read_safetensors(path / EMA_FILE, str(map_location))[0] if EMA_FILE in present else None
    training_state = None
    if STATE_FILE in present:
        try:
            training_state = torch.load(path / STATE_FILE, map_location=map_location, weights_only=True)
        except Exception as error:  # noqa: BLE001 - any unpickling failure means a bad file
            raise CheckpointError(f"{path / STATE_FILE} is truncated or corrupt ({error})") from error
    return Checkpoint(
        path=path,
        model_name=meta["model_name"],
        model_config=meta["model_config"],
        noise_config=meta["noise_config"],
        train_config=meta.get("train_config", {}),
        step=int(meta.get("step", 0)),
        epoch=int(meta.get("epoch", 0)),
        model_state=model_state,
        ema_state=ema_state,
        training_state=training_state,
        meta=meta,
    )


def optimizer_steps(optimizer_state: Any) -> int | None:
    """How many steps an optimizer's ``state_dict()`` has taken, by its per-parameter ``step``
    counters (Adam, AdamW; a float tensor in torch 2): the largest, since a parameter that got no
    gradient at a step skips that step. None where none is kept (no step taken yet, an optimizer
    without counters) or where a float32 counter no longer counts exactly (from 2**24 on)."""
    state = optimizer_state.get("state") if isinstance(optimizer_state, Mapping) else None
    counts = []
    for entry in (state or {}).values():
        step = entry.get("step") if isinstance(entry, Mapping) else None
        if step is not None:
            counts.append(float(step.item() if hasattr(step, "item") else step))
    if not counts or not max(counts) < 2**24 or not max(counts).is_integer():
        return None
    return int(max(counts))


def check_step_records(ckpt: Checkpoint) -> None:
    """Refuse a checkpoint whose config.json ``step`` disagrees with the steps its optimizer.pt
    records: the optimizer's own counters, the lr schedule's, and the step it was saved at. A
    resume goes on from config.json's step (the data order, the random draws, the EMA warm-up)
    while the optimizer and lr schedule go on from theirs, so an edited step trained on silently,
    out of step. Each record is compared only where both it and config.json's step are there."""
    state = ckpt.training_state
    if not isinstance(state, Mapping) or "step" not in ckpt.meta:
        return
    schedule = state.get("lr_schedule")
    records = [
        (f"its optimizer state ({STATE_FILE}) has taken", optimizer_steps(state.get("optimizer"))),
        ("its lr schedule has taken", schedule.get("last_epoch") if isinstance(schedule, Mapping) else None),
        (f"{STATE_FILE} was saved after", state.get("step")),
    ]
    for what, steps in records:
        if isinstance(steps, int) and steps != ckpt.step:
            raise CheckpointError(
                f"checkpoint {ckpt.path} is inconsistent: {CONFIG_FILE} says step {ckpt.step} but {what} "
                f"{steps} steps; resuming would put the lr schedule and the data order out of step. Set "
                f"{CONFIG_FILE}'s step back to {steps} if it was edited, or resume from another checkpoint"
            )


def build_model(model_name: str, model_config: dict[str, Any], *, source: str = "the checkpoint") -> Any:
    """Build a registered model from its stored config, with a clear error for unknown names;
    ``source`` names where the config came from in that error."""
    from bench.plugins import get
    from bench.registry import RegistryError

    try:
        factory = get("models", model_name).factory
    except RegistryError as error:
        raise CheckpointError(
            f"{source} needs model {model_name!r}, which no installed plugin provides: {error}"
        ) from error
    try:
        model = factory(**model_config)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{source}: the config for model {model_name!r} is invalid: {error}") from error
    if not isinstance(getattr(model, "config", None), Mapping):
        # Every checkpoint stores it to rebuild the model: without it training failed at its start
        # with an AttributeError.
        raise CheckpointError(
            f"model {model_name!r} has no `config` dict attribute, which a checkpoint stores to rebuild "
            "it (factory(**config)); see register_models in bench/hookspecs.py"
        )
    return model


def state_dict_mismatch(expected: dict[str, Any], state: dict[str, Any]) -> list[str]:
    """How ``state`` fails to fit a module whose state_dict is ``expected``: shape mismatches,
    missing and unexpected keys, each listed (at most 8 names); empty when it fits."""

    def listing(items: list[str]) -> str:
        return ", ".join(items[:8]) + (f" (+{len(items) - 8} more)" if len(items) > 8 else "")

    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    parts = []
    if missing:
        parts.append(f"missing keys ({len(missing)}): {listing(missing)}")
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): {listing(unexpected)}")
    if shapes:
        parts.append(f"shape mismatches: {listing(shapes)}")
    return parts


def load_state_checked(
    model: Any,
    state: dict[str, torch.Tensor],
    source: str,
    target: str = "the model config they were saved with",
    saved_preset: str | None = None,
) -> None:
    """``load_state_dict`` that names missing, unexpected and wrongly shaped keys when they differ.
    ``target`` says which model they are loaded into (another run's, with ``--init-from``, where
    ``saved_preset`` is the preset the weights were saved for)."""
    expected = model.state_dict()
    parts = state_dict_mismatch(expected, state)
    if parts:
        preset = (
            getattr(model, "config", {}).get("preset")
            if isinstance(getattr(model, "config", None), dict)
            else None
        )
        if saved_preset and preset and saved_preset != preset:
            # Another preset explains it all: the key list (2,500 characters) only buried the fix.
            raise CheckpointError(
                f"the weights in {source} were saved for preset {saved_preset!r} and do not fit {target} "
                f"(preset {preset!r}): pass --preset {saved_preset}"
            )
        raise CheckpointError(
            f"the weights in {source}"
            + (f" (saved for preset {saved_preset!r})" if saved_preset else "")
            + f" do not fit {target}"
            + (f" (preset {preset!r})" if preset else "")
            + f": {'; '.join(parts)}. The file was probably written for another preset or edited; "
            "pass the matching --preset/config or use another checkpoint"
        )
    model.load_state_dict(state)


def make_sampling_defaults(
    guidance: float | None = None, guidance_interval: Any = None, source: str = "the export options"
) -> dict[str, Any] | None:
    """The ``sampling_defaults`` a checkpoint recommends: ``{"guidance": g}`` plus
    ``"guidance_interval": [lo, hi]`` when given; None when neither is given."""
    if guidance is None and guidance_interval is None:
        return None
    if guidance is None:
        raise CheckpointError(
            f"{source}: a guidance interval without a guidance scale has no effect; "
            "give the guidance too (bench export --guidance 3 --guidance-interval 300,1000)"
        )
    try:
        defaults: dict[str, Any] = {"guidance": check_scale(guidance, "the recommended guidance")}
    except GuidanceScaleError as error:
        raise CheckpointError(f"{source}: {error}") from error
    try:
        interval = check_interval(guidance_interval, "the recommended guidance interval")
    except GuidanceIntervalError as error:
        raise CheckpointError(f"{source}: {error}") from error
    if interval is not None:
        defaults["guidance_interval"] = list(interval)
    return defaults


def check_sampling_defaults(value: Any, source: str) -> dict[str, Any]:
    """A checkpoint's ``sampling_defaults`` (a dict, or its JSON text), checked; keys bench does
    not know are kept and ignored (a newer bench may write more)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise CheckpointError(
                f"the {SAMPLING_DEFAULTS_KEY!r} metadata of {source} is not JSON ({error}); "
                "re-export the weights with bench export --guidance ..."
            ) from error
    if not isinstance(value, dict):
        raise CheckpointError(
            f"the {SAMPLING_DEFAULTS_KEY!r} of {source} must be a JSON object such as "
            f'{{"guidance": 3.0, "guidance_interval": [300, 1000]}}, not {value!r}'
        )
    checked = make_sampling_defaults(
        value.get("guidance"), value.get("guidance_interval"), f"the {SAMPLING_DEFAULTS_KEY!r} of {source}"
    )
    return {**value, **(checked or {})}


def export_header(file: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """An exported ``.safetensors`` file's bench config (dtype, model...) and its checked
    ``sampling_defaults`` (None without), read from its header only."""
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:
        metadata = f.metadata() or {}
    raw = metadata.get(SAMPLING_DEFAULTS_KEY)
    defaults = None if raw is None else check_sampling_defaults(raw, str(file))
    return json.loads(metadata.get(METADATA_KEY, "{}")), defaults


def describe_sampling_defaults(defaults: dict[str, Any] | None) -> str:
    """``"guidance 3, interval 300-1000"``; ``""`` without defaults."""
    if not defaults or defaults.get("guidance") is None:
        return ""
    text = f"guidance {defaults['guidance']:g}"
    if defaults.get("guidance_interval") is not None:
        text += f", interval {format_interval(defaults['guidance_interval'])}"
    return text


def _single_file_meta(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if path.resolve().parent == WEIGHTS_DIR.resolve():
        try:
            shipped_weights(path.name)  # sha256 against SHA256SUMS
        except WeightsError as error:
            raise CheckpointError(str(error)) from error
    tensors, metadata = _read_safetensors(path)
    if METADATA_KEY not in metadata:
        if (path.parent / CONFIG_FILE).exists():
            # model.safetensors/ema.safetensors of a checkpoint folder: the folder holds the config.
            raise CheckpointError(
                f"{path} is a file inside the checkpoint folder {path.parent}; pass the folder instead"
            )
        raise CheckpointError(
            f"{path} has no bench config in its safetensors metadata (key {METADATA_KEY!r}); it was not "
            "made by `bench export`, so bench cannot tell which model it belongs to"
        )
    try:
        meta = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError as error:
        raise CheckpointError(f"the bench config in {path}'s metadata is corrupt ({error})") from error
    if SAMPLING_DEFAULTS_KEY in metadata:
        meta[SAMPLING_DEFAULTS_KEY] = metadata[SAMPLING_DEFAULTS_KEY]
    # Files exported before a checksum existed have no such key and load as before.
    recorded = metadata.get(TENSORS_SHA256_KEY)
    if recorded is not None and tensors_sha256(tensors) != recorded:
        raise CheckpointError(
            f"{path} is corrupt: its weights do not match the checksum `bench export` wrote into it; "
            "export it again from its checkpoint"
        )
    recorded = metadata.get(HEADER_SHA256_KEY)
    if recorded is not None and header_sha256(metadata) != recorded:
        raise CheckpointError(
            f"{path} is corrupt: its header (model config, noise config, sampling defaults) does not "
            "match the checksum `bench export` wrote into it; export it again from its checkpoint"
        )
    return tensors, meta


def header_sha256(metadata: dict[str, str]) -> str:
    """sha256 over a safetensors header's metadata, its own key left out, in key order."""
    kept = {k: v for k, v in metadata.items() if k != HEADER_SHA256_KEY}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


def tensors_sha256(state: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order (independent of how
    safetensors lays the file out)."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_model(
    path: str | os.PathLike, device: str | torch.device = "cpu", use_ema: bool = True
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Build the model a checkpoint (directory or single ``.safetensors``) holds, in eval mode.

    Returns ``(model, noise_config, meta)``; weights are loaded in float32 (shipped fp16/bf16
    files are upcast). ``use_ema`` picks the EMA weights when the checkpoint has them.
    ``meta["sampling_defaults"]`` (checked) is there when the checkpoint recommends sampling settings;
    ``meta["weights_sha256"]`` names the weights file loaded.
    """
    import torch

    path = readable(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        meta = read_checkpoint_config(path)
        name = EMA_FILE if use_ema and EMA_FILE in meta.get("files", {}) else MODEL_FILE
        _verify_files(path, meta, [name])
        state, _ = _read_safetensors(path / name)
        source = str(path / name)
        weights_sha256 = meta.get("files", {}).get(name)
    else:
        state, meta = _single_file_meta(path)
        source = str(path)
        weights_sha256 = sha256_of(path)
    # Which weights sampled, whatever the path was called: a report keeps two models apart by it.
    meta["weights_sha256"] = weights_sha256
    for key in ("model_name", "model_config", "noise_config"):
        if key not in meta:
            raise CheckpointError(
                f"{source}: the checkpoint config lacks {key!r}; it is not a bench checkpoint"
            )
    if meta.get(SAMPLING_DEFAULTS_KEY) is not None:
        meta[SAMPLING_DEFAULTS_KEY] = check_sampling_defaults(meta[SAMPLING_DEFAULTS_KEY], source)
    trained = (
        meta["noise_config"].get("num_train_timesteps") if isinstance(meta["noise_config"], dict) else None
    )
    if type(trained) is not int or trained < 1:
        # a damaged or hand-edited config (every bench checkpoint records it): 0 was read later as
        # "use --steps 0 or fewer", a missing one as a schedule mismatch
        raise CheckpointError(
            f"{source}: the checkpoint's noise schedule has num_train_timesteps {trained!r}, not a whole "
            "number of at least 1; the checkpoint config is damaged"
        )
    model = build_model(meta["model_name"], meta["model_config"])
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    load_state_checked(model, state, source)
    model = model.to(device=torch.device(device), dtype=torch.float32).eval()
    model.requires_grad_(False)
    return model, dict(meta["noise_config"]), meta


def export_weights(
    checkpoint: str | os.PathLike,
    out_file: str | os.PathLike,
    dtype: torch.dtype | str | None = None,
    use_ema: bool = True,
    guidance: float | None = None,
    guidance_interval: Any = None,
) -> Path:
    """Write one shipped ``.safetensors`` file (fp16/bf16 weights + config metadata) from a checkpoint.

    ``checkpoint`` is a training checkpoint directory, whose EMA weights are taken when it has them
    (unless ``use_ema=False``), or an exported ``.safetensors`` file, re-written (another dtype, new
    sampling defaults; without new ones its own are kept). ``dtype`` None: fp16 from a checkpoint,
    the file's own dtype when re-writing one. Record the file's sha256
    (``bench.weights.sha256_of``) in the weights folder's SHA256SUMS to ship it.
    ``guidance`` (and ``guidance_interval``, ``(lo, hi)`` training timesteps) are written as the
    file's recommended sampling settings (metadata ``sampling_defaults``), which ``bench run``
    uses when ``--guidance`` is not given.
    """
    import torch
    from safetensors.torch import save_file

    defaults = make_sampling_defaults(guidance, guidance_interval)

    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    source = Path(checkpoint)
    if source.is_file():
        state, meta = _single_file_meta(source)
        previous = meta.pop(SAMPLING_DEFAULTS_KEY, None)
        if defaults is None and previous is not None:
            defaults = check_sampling_defaults(previous, str(source))
        # Re-writing keeps the file's dtype unless another is asked (a bf16 file stayed bf16 only
        # when --dtype bf16 was repeated).
        own = getattr(torch, str(meta.get("dtype", "float16")), torch.float16)
    else:
        own = torch.float16
        loaded = load_checkpoint(source)
        ema = use_ema and loaded.ema_state is not None
        state = loaded.ema_state if ema else loaded.model_state
        meta = {
            "format": "bench-weights",
            "format_version": FORMAT_VERSION,
            "model_name": loaded.model_name,
            "model_config": loaded.model_config,
            "noise_config": loaded.noise_config,
            "train_config": loaded.train_config,
            "step": loaded.step,
            "epoch": loaded.epoch,
            "weights": "ema" if ema else "model",
        }
    if defaults is not None and defaults.get("guidance_interval") is not None:
        steps = (meta.get("noise_config") or {}).get("num_train_timesteps", 1000)
        try:
            check_interval_reaches(defaults["guidance_interval"], steps, "the recommended guidance interval")
        except GuidanceIntervalError as error:
            raise CheckpointError(f"{source}: {error}") from error
    dtype = own if dtype is None else dtypes[dtype] if isinstance(dtype, str) else dtype
    meta["dtype"] = str(dtype).replace("torch.", "")
    # Check the weights fit the model before shipping them.
    load_state_checked(build_model(meta["model_name"], meta["model_config"]), state, str(source))
    state = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    metadata = {METADATA_KEY: json.dumps(meta), TENSORS_SHA256_KEY: tensors_sha256(state)}
    if defaults is not None:
        metadata[SAMPLING_DEFAULTS_KEY] = json.dumps(defaults)
    metadata[HEADER_SHA256_KEY] = header_sha256(metadata)
    return atomic_write(out_file, lambda p: save_file(state, str(p), metadata=metadata))
