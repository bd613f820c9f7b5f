"""A stochastic step's per-image noise drawn on a side CUDA stream while the model runs.

DDPM's step draws its noise through diffusers' ``randn_tensor`` as one small kernel per image (each
image has its own generator, so it does not depend on its chunk): 512 kernels of about 1.7 us a
step at a chunk of 512 on an H100, about 0.87 ms of a 46.5 ms step (BENCHMARKS.md, session 29),
run one after another between two model calls. Launched on a side stream just before the model
call, they run beside it instead. Every generator draws the same tensors in the same order as
before, so the images are the same bit for bit (tests/test_step_noise.py).

Only for schedulers whose draws are known: ``DDPMScheduler`` and its subclasses draw one tensor of
the model output's shape and dtype in each step whose timestep is above 0. While a chunk runs, the
``randn_tensor`` that the scheduler's ``step`` looks up in its module is swapped for one that hands
over the drawn tensor; every other request (another generator, another caller) goes to diffusers'.
Off the GPU there is no side stream: the draws run in place, in the same order (how the test checks
the bookkeeping on a CPU).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

_KNOWN_DRAWS = ("DDPMScheduler",)  # one model-output-shaped draw per step with t > 0


def draws_known(scheduler: Any) -> bool:
    """Whether ``scheduler``'s noise can be drawn ahead: a known class whose ``step`` reads
    ``randn_tensor`` from its module."""
    if not any(cls.__name__ in _KNOWN_DRAWS for cls in type(scheduler).__mro__):
        return False
    module = sys.modules.get(type(scheduler).step.__module__)
    return callable(getattr(module, "randn_tensor", None))


class StepNoiseError(RuntimeError):
    """A scheduler asked for noise other than what was drawn for it (its generators already moved on)."""


class StepNoise:
    """The next step's noise for ``generators`` (one image each), drawn by :meth:`draw` and handed
    over by :meth:`take` when the scheduler asks for it."""

    def __init__(
        self, generators: list[torch.Generator], image_shape: tuple[int, ...], device: torch.device
    ) -> None:
        self.generators = generators
        self.shape = (len(generators), *image_shape)
        self.device = device
        self.dtype = torch.float32  # the loop hands the scheduler fp32 model outputs
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._drawn: torch.Tensor | None = None
        self._ready: torch.cuda.Event | None = None

    def draw(self) -> None:
        """Queue one step's draws (on the side stream on CUDA): the same calls diffusers makes."""
        if self._drawn is not None:
            raise StepNoiseError("the noise drawn for the last step was never asked for")
        one = (1, *self.shape[1:])
        with torch.cuda.stream(self.stream) if self.stream is not None else _nothing():
            self._drawn = torch.cat(
                [torch.randn(one, generator=g, device=self.device, dtype=self.dtype) for g in self.generators]
            )
            if self.stream is not None:
                self._ready = torch.cuda.Event()
                self._ready.record(self.stream)

    def take(self, shape: Any, generator: Any, dtype: torch.dtype | None) -> torch.Tensor | None:
        """The drawn noise if this request is for it; None if the request is not ours."""
        if generator is not self.generators:
            return None
        if self._drawn is None:
            return None  # a draw not foreseen, and not yet made: diffusers' own gives the same values
        if tuple(shape) != self.shape or dtype != self.dtype:
            raise StepNoiseError(
                f"the scheduler asked for noise of shape {tuple(shape)} and dtype {dtype}, drawn as "
                f"{self.shape} and {self.dtype}: run it without --draw-noise-ahead"
            )
        noise, self._drawn = self._drawn, None
        if self.stream is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(self._ready)
            noise.record_stream(current)  # made on the side stream, used and freed on this one
        return noise

    def pending(self) -> bool:
        return self._drawn is not None


@contextmanager
def _nothing() -> Iterator[None]:
    yield


@contextmanager
def drawn_ahead(scheduler: Any, noise: StepNoise) -> Iterator[StepNoise]:
    """Within the block, ``scheduler``'s step takes its noise from ``noise``."""
    module = sys.modules[type(scheduler).step.__module__]
    original = module.randn_tensor

    def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):  # diffusers' signature
        drawn = noise.take(shape, generator, dtype)
        if drawn is not None:
            return drawn
        return original(shape, generator=generator, device=device, dtype=dtype, layout=layout)

    module.randn_tensor = randn_tensor
    try:
        yield noise
    finally:
        module.randn_tensor = original
