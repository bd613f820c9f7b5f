"""Which torch.compile mode a sampling or training run asks for, and the compiler's known noise."""

from __future__ import annotations

import warnings


def compile_mode(*, autotune: bool, cuda_graphs: bool) -> str:
    """torch.compile's mode for max-autotune (Triton templates timed per shape) and CUDA graphs
    (the compiled graphs replayed with one launch each, so the host no longer launches every kernel)."""
    if autotune:
        return "max-autotune" if cuda_graphs else "max-autotune-no-cudagraphs"
    return "reduce-overhead" if cuda_graphs else "default"


def quiet_known_compile_warnings() -> None:
    """Silence Dynamo's note on diffusers' ``lru_cache``-wrapped version checks. It is harmless (the
    check is traced through) but comes with a traceback per call site and buried the training and
    sampling logs of every GPU run."""
    warnings.filterwarnings(
        "ignore", message=r"Dynamo detected a call to a `functools\.lru_cache`", category=UserWarning
    )
