"""Which torch.compile mode a sampling or training run asks for."""

from __future__ import annotations


def compile_mode(*, autotune: bool, cuda_graphs: bool) -> str:
    """torch.compile's mode for max-autotune (Triton templates timed per shape) and CUDA graphs
    (the compiled graphs replayed with one launch each, so the host no longer launches every kernel)."""
    if autotune:
        return "max-autotune" if cuda_graphs else "max-autotune-no-cudagraphs"
    return "reduce-overhead" if cuda_graphs else "default"
