"""The i-CLEVR judge: a torchvision ResNet18 with a 24-way sigmoid head, and its checkpoints.

Accepted checkpoints: the course format (``torch.load(path)["model"]`` is the state_dict), a bare
state_dict saved with ``torch.save``, or a ``.safetensors`` file (the project's own, stored fp16).
Every load is fp32 on the requested device, in eval mode.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

NUM_LABELS = 24
FEATURE_DIM = 512
SHIPPED_JUDGE = "judge-synthetic.safetensors"


class JudgeError(ValueError):
    """A judge checkpoint is missing, unreadable, or holds weights of another network."""


def build_judge() -> nn.Module:
    """The course judge architecture with random weights (no download: ``weights=None``)."""
    import torchvision
    from torch import nn

    net = torchvision.models.resnet18(weights=None)
    net.fc = nn.Sequential(nn.Linear(FEATURE_DIM, NUM_LABELS), nn.Sigmoid())
    return net


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise JudgeError(
            f"could not read judge {path} as safetensors ({path.stat().st_size} bytes): {error}. "
            "The file is probably truncated or not a safetensors file; re-copy or re-train it."
        ) from error


def _torch_load(path: Path) -> Any:
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # A course checkpoint may pickle more than tensors (optimizer state, numbers). A file that
        # is no torch.save output at all (a zip, or a pickle of protocol 2 or more: b"\x80") has
        # nothing to unpickle: the warning below named a JSON or text file as holding more than tensors.
        if not (_starts_with(path, b"PK") or _starts_with(path, b"\x80")):
            raise _unreadable(path, None) from error
    except Exception as error:  # noqa: BLE001 - truncation shows up as many exception types
        raise _unreadable(path, error) from error
    # The user's own checkpoint file, named explicitly: full unpickling is theirs to allow, but it
    # runs whatever code the file holds, so it is said (a judge file from someone else is a risk).
    print(
        f"judge {path}: holds more than tensors; loading it with full unpickling (torch.load "
        "weights_only=False), which runs code the file may hold: only for files you trust",
        file=sys.stderr,
    )
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
        raise _unreadable(path, error) from error


def _unreadable(path: Path, error: BaseException | None) -> JudgeError:
    size = path.stat().st_size
    if zipfile.is_zipfile(path) or _starts_with(path, b"PK"):
        why = "it looks like a PyTorch checkpoint that is truncated or corrupt"
    else:
        why = "it is not a PyTorch checkpoint (torch.save) nor a .safetensors file"
    detail = f" Error: {type(error).__name__}: {error}" if error is not None else ""
    return JudgeError(f"could not load judge {path} ({size} bytes): {why}.{detail}")


def _starts_with(path: Path, magic: bytes) -> bool:
    with open(path, "rb") as f:
        return f.read(len(magic)) == magic


def _state_dict_of(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    import torch

    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict) and "model" in obj:  # the course format
        obj = obj["model"]
        if isinstance(obj, torch.nn.Module):
            obj = obj.state_dict()
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        keys = list(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise JudgeError(
            f"judge checkpoint {path} holds no state_dict: expected {{'model': state_dict}} or a state_dict, "
            f"found {keys}"
        )
    # Weights saved from nn.DataParallel carry a "module." prefix.
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def _check_keys(net: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    from bench.checkpoints import state_dict_mismatch

    parts = state_dict_mismatch(net.state_dict(), state)
    if parts:
        raise JudgeError(
            f"judge checkpoint {path} does not fit the judge architecture (torchvision resnet18 with "
            f"fc = Sequential(Linear(512, 24), Sigmoid())): " + " | ".join(parts)
        )


def default_judge_path() -> Path:
    """The project's shipped judge, sha256-verified (raises bench.weights.WeightsError if absent)."""
    from bench.weights import shipped_weights

    return shipped_weights(SHIPPED_JUDGE)


def load_judge(path: str | Path | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """Load a judge checkpoint (course format, state_dict or .safetensors) as fp32, eval mode.

    ``path=None`` loads the project's shipped judge (``judge-synthetic.safetensors``).
    """
    import torch

    path = default_judge_path() if path is None else Path(path).expanduser()
    if not path.exists():
        raise JudgeError(
            f"judge checkpoint {path} does not exist; pass the path of checkpoint.pth or a .safetensors file"
        )
    if path.is_dir():
        raise JudgeError(f"judge checkpoint {path} is a directory; pass the checkpoint file inside it")
    if path.suffix == ".safetensors" or _is_safetensors(path):
        state = _read_safetensors(path)
    else:
        state = _state_dict_of(_torch_load(path), path)
    net = build_judge()
    _check_keys(net, state, path)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    net.load_state_dict(state, strict=True)
    net.eval().requires_grad_(False)
    return net.to(device=torch.device(device), dtype=torch.float32)


def _is_safetensors(path: Path) -> bool:
    """A safetensors file starts with an 8-byte little-endian header length then a JSON '{'."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and not head.startswith(b"PK")


def judge_features(judge: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The judge's 512-d penultimate features (after global average pooling) for images in [-1, 1]."""
    import torch

    x = judge.conv1(images)
    x = judge.maxpool(judge.relu(judge.bn1(x)))
    x = judge.layer4(judge.layer3(judge.layer2(judge.layer1(x))))
    return torch.flatten(judge.avgpool(x), 1)


def judge_logits(judge: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """Pre-sigmoid scores from penultimate features. Sigmoid is monotone, so ranking by logits is
    ranking by the judge's scores, but logits keep apart scores that saturate to exactly 1.0."""
    return judge.fc[0](features)


def file_identity(path: str | Path) -> str:
    """A content key for a weights file (sha256), for caches keyed by feature extractor."""
    from bench.weights import sha256_of

    return sha256_of(path)
