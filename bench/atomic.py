"""Atomic file writes: a reader (or an interrupted run) never sees half a file."""

from __future__ import annotations

import functools
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


@functools.cache
def _umask() -> int:
    mask = os.umask(0)  # read by setting: put back at once (read once per process)
    os.umask(mask)
    return mask


def shared_mode(mode: int) -> int:
    """``mode`` less the user's umask: what a file or folder made by ``open`` gets. Temporary files
    are made 0600 (mkstemp, safetensors), which would keep results and weights from the others on a
    shared machine; a umask of 077 still keeps them private."""
    return mode & ~_umask()


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then move the finished file onto ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        # mkstemp makes 0600 (and a writer may replace the file with its own)
        os.chmod(tmp_path, shared_mode(0o666))
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def why_unwritable(folder: str | os.PathLike) -> str | None:
    """Why files cannot be written into ``folder`` (made where missing), or None when they can.
    Probed by a file made and removed in the first folder that exists at or above it (a permission
    check alone misses read-only mounts and immutable folders), so that a command says so before its
    minutes of work instead of a traceback after them; nothing is left behind."""
    folder = Path(folder)
    for path in (folder, *folder.parents):
        try:
            exists, is_dir = path.exists(), path.is_dir()
        except OSError as error:  # a parent that cannot be entered raises, it does not say False
            return f"{path} cannot be reached ({error.strerror or error})"
        if not exists:
            continue
        if not is_dir:
            return f"{path} is a file" + ("" if path == folder else ", so the folder cannot be made")
        try:
            fd, probe = tempfile.mkstemp(prefix=".bench-write-check-", dir=path)
            os.close(fd)
            os.unlink(probe)
        except OSError as error:
            return f"{path} cannot be written to ({error.strerror or error})"
        return None
    return None
