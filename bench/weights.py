"""Weights the project ships: where they are and a sha256 check at every load."""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "plugins" / "bench_builtins" / "weights"
CHECKSUMS = "SHA256SUMS"


class WeightsError(Exception):
    """A shipped weights file is missing or does not match its recorded sha256."""


def sha256_of(path: str | Path) -> str:
    """The file's sha256, hashed once per content: the default checkpoint is checked when it is
    chosen, again when it loads, and named in results (each was a full read). A rewritten file
    has another size or mtime, so it is hashed again."""
    stat = os.stat(path)
    return _sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _recorded(weights_dir: Path) -> dict[str, str]:
    sums = weights_dir / CHECKSUMS
    if not sums.exists():
        return {}
    out = {}
    for line in sums.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            digest, name = line.split(maxsplit=1)
            out[name.strip().lstrip("*")] = digest
    return out


def shipped_weights(name: str, weights_dir: Path = WEIGHTS_DIR) -> Path:
    """The path of shipped weights file ``name``, verified against SHA256SUMS."""
    path = weights_dir / name
    if not path.exists():
        raise WeightsError(
            f"shipped weights {name!r} are missing from {weights_dir}; see TRAINING.md for the "
            "command that rebuilds them, or pass a checkpoint path explicitly"
        )
    expected = _recorded(weights_dir).get(name)
    if expected is None:
        raise WeightsError(f"{weights_dir / CHECKSUMS} records no sha256 for {name!r}")
    actual = sha256_of(path)
    if actual != expected:
        raise WeightsError(
            f"shipped weights {path} are corrupt or were changed: sha256 {actual} != recorded {expected}"
        )
    return path
