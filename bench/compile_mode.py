"""Which torch.compile mode and options a sampling or training run asks for, and the compiler's known noise."""

from __future__ import annotations

import contextlib
import warnings
from typing import Any


def compile_mode(*, autotune: bool, cuda_graphs: bool) -> str:
    """torch.compile's mode for max-autotune (Triton templates timed per shape) and CUDA graphs
    (the compiled graphs replayed with one launch each, so the host no longer launches every kernel)."""
    if autotune:
        return "max-autotune" if cuda_graphs else "max-autotune-no-cudagraphs"
    return "reduce-overhead" if cuda_graphs else "default"


def compile_only_switch_error(
    compiled: bool, *, autotune: bool, tune_kernels: bool, freeze_weights: bool = False
) -> str | None:
    """Why these switches cannot run without torch.compile (None when they can): all are settings
    of the compiler (freezing for sampling only)."""
    if compiled:
        return None
    if autotune:
        return "autotune is a torch.compile mode: it needs compile"
    if tune_kernels:
        return "tune_kernels tunes torch.compile's kernels: it needs compile"
    if freeze_weights:
        return "freeze_weights folds the weights into torch.compile's graph: it needs compile"
    return None


def compile_options(
    *,
    autotune: bool,
    cuda_graphs: bool,
    force_layout_opt: bool,
    tune_kernels: bool = False,
    freeze_weights: bool = False,
) -> dict[str, Any]:
    """torch.compile's ``options`` for that mode (Inductor settings scoped to this one compile).

    ``force_layout_opt``: Inductor's channels_last layout optimisation for every graph. Inductor
    decides it per graph by counting forward convolutions, so a training step's backward graph,
    which has none, runs without it and converts layouts around each ``convolution_backward``
    (BENCHMARKS.md, session 9: 17 ms of copies a step at batch 128, and 22-24 % more images/s
    for the seed preset on an H100 with it forced).

    ``tune_kernels``: Inductor's coordinate-descent tuning of each generated kernel's launch
    settings (BENCHMARKS.md, session 13).

    ``freeze_weights``: Inductor's freezing, the weights folded into the graph as constants
    (inference only), so autocast need not cast them on every call (BENCHMARKS.md, session 31).
    The graph may keep the weights it was compiled with; the caller recompiles when they change,
    and holds :func:`weights_frozen` around every call (the option alone freezes nothing).
    """
    from torch._inductor import list_mode_options  # here: importing bench must not import Inductor

    options = dict(list_mode_options(compile_mode(autotune=autotune, cuda_graphs=cuda_graphs)))
    if force_layout_opt:
        options["force_layout_optimization"] = True
    if tune_kernels:
        options["coordinate_descent_tuning"] = True
    if freeze_weights:
        options["freezing"] = True
    return options


def weights_frozen() -> contextlib.AbstractContextManager:
    """Inductor's freezing switched on, to hold around every call of a model compiled with it.

    torch.compile's ``options={"freezing": True}`` is not enough: Dynamo decides whether the
    parameters stay attributes of the graph (which freezing folds) or become its inputs while it
    traces, from the global setting, before those options apply. With the options alone the
    generated code still took every weight as an input and cast it each call (torch 2.14, CPU).
    The trace and compile happen inside the first calls (and any recompile inside a later one), so
    the setting is held around every call."""
    from torch._inductor import config  # here: importing bench must not import Inductor

    return config.patch(freezing=True)


def compile_wait_note(*, training: bool, autotune: bool, tune_kernels: bool) -> str:
    """What a compiled run waits for before its first step, as measured for the `seed` preset on an
    H100 (BENCHMARKS.md, sessions 15, 17 and 22), so that minutes of silence are not taken for a hang."""
    if training:
        wait = "about 11-12 minutes with --tune-kernels" if tune_kernels else "about 2 minutes"
    else:
        wait = (
            "about 3.5 minutes per batch shape with --tune-kernels"
            if tune_kernels
            else "about 1 minute per batch shape"
        )
    more = "; longer with --autotune" if autotune else ""
    return (
        f"torch.compile: the first {'step' if training else 'pass'} compiles first ({wait} for the seed "
        f"preset on an H100{more}); Inductor's disk cache shortens it for shapes compiled before"
    )


def quiet_known_compile_warnings() -> None:
    """Silence Dynamo's note on diffusers' ``lru_cache``-wrapped version checks. It is harmless (the
    check is traced through) but comes with a traceback per call site and buried the training and
    sampling logs of every GPU run."""
    warnings.filterwarnings(
        "ignore", message=r"Dynamo detected a call to a `functools\.lru_cache`", category=UserWarning
    )
