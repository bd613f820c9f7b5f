"""The environment of a test's subprocess that imports bench: the repository and its built-in
plugins go ahead of the PYTHONPATH already set, which is kept (a GPU machine may hold diffusers only
there: session 36's GPU run lost it and failed an import)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def bench_env(**extra: str) -> dict[str, str]:
    """os.environ plus ``extra``, with bench and the built-in plugins importable."""
    kept = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**os.environ, **extra, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins"), *kept])}
