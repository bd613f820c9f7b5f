"""Each DDPM step's per-image noise, drawn one step ahead on a side CUDA stream.

Every image has its own generator (bench/sampling.py), so a stochastic step draws its noise with
one small kernel per image: 512 kernels a step at batch 512, about 0.9 ms of an H100's 47 ms step
(BENCHMARKS.md, session 29), in line behind the model's call. ``StepNoise`` draws the next step's
noise from the same generators, in the same order, on a side stream while the model runs, and
hands it to the scheduler's ``step`` in place of its own draw: the same values, off the main
stream's path.

The hand-over replaces the ``randn_tensor`` that diffusers' ``DDPMScheduler.step`` calls (a name
of its module) for the length of one ``step`` call. Only ``DDPMScheduler`` itself takes part
(``takes_part``): it draws exactly one sample-shaped tensor per step whose timestep is above 0, so
which steps draw is known before the loop. A draw that goes unused, or a call for noise that was
not drawn, raises instead of shifting every later step's noise. Off CUDA the draws run in line
(nothing to overlap with): the same values, so the CPU tests check the hand-over itself.

Measured on an H100 (BENCHMARKS.md, session 36): 1.009x the untuned GPU default's sampling (0.45 ms
of a 48.9 ms step; half the in-line draws' cost), hence on by default when compiling on CUDA.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


class StepNoiseError(RuntimeError):
    """The scheduler asked for noise other than the one drawn ahead for its step."""


def takes_part(scheduler: Any) -> bool:
    """Whether ``scheduler``'s steps can take noise drawn ahead (a ``DDPMScheduler``, no subclass:
    a subclass may draw otherwise)."""
    from diffusers import DDPMScheduler

    return type(scheduler) is DDPMScheduler and hasattr(sys.modules[DDPMScheduler.__module__], "randn_tensor")


def draws_at(timestep: float) -> bool:
    """Whether ``DDPMScheduler.step`` draws noise at ``timestep`` (its ``if t > 0``)."""
    return float(timestep) > 0


class StepNoise:
    """Per-image noise for the coming steps, two buffers deep: step i's noise is drawn while step
    i - 1's model call runs, into the buffer step i - 2 used."""

    def __init__(
        self, generators: list[torch.Generator], shape: tuple[int, ...], device: torch.device
    ) -> None:
        self.generators = generators
        self.device = device
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.buffers = [torch.empty((len(generators), *shape), device=device) for _ in range(2)]
        self.drawn: list[Any] = [None, None]  # side-stream events: buffer k holds its noise
        self.used: list[Any] = [None, None]  # main-stream events: buffer k's step has read it
        self.queue: deque[int] = deque()  # buffers drawn and not yet handed over, oldest first
        self.next_buffer = 0

    def draw(self) -> None:
        """Queue the draw of one more step's noise (one tensor per image, in generator order)."""
        k = self.next_buffer
        self.next_buffer = 1 - k
        if len(self.queue) == 2:
            raise StepNoiseError("noise drawn for three steps ahead; only two buffers")
        buffer = self.buffers[k]
        if self.stream is None:
            self._draw_into(buffer)
        else:
            if self.used[k] is not None:
                self.stream.wait_event(self.used[k])
            with torch.cuda.stream(self.stream):
                self._draw_into(buffer)
                self.drawn[k] = torch.cuda.Event()
                self.drawn[k].record(self.stream)
        self.queue.append(k)

    def _draw_into(self, buffer: torch.Tensor) -> None:
        # The rows diffusers' randn_tensor draws for a list of generators: one (1, C, H, W) each.
        for row, generator in enumerate(self.generators):
            torch.randn(buffer[row : row + 1].shape, generator=generator, out=buffer[row : row + 1])

    @contextmanager
    def served(self, scheduler: Any, expected: bool) -> Iterator[None]:
        """Inside the block, ``scheduler``'s module draws from the queue instead of the generators.
        ``expected``: whether this step draws (``draws_at`` of its timestep), so whether a queued
        buffer must be handed over."""
        module = sys.modules[type(scheduler).__module__]
        original = module.randn_tensor
        handed: list[int] = []

        def randn_tensor(shape: Any, generator: Any = None, device: Any = None, dtype: Any = None, **_: Any):
            if not expected or not self.queue or handed:
                raise StepNoiseError(
                    "the scheduler drew noise at a step where none was drawn ahead; sample with "
                    "--no-noise-ahead (and report it)"
                )
            k = self.queue.popleft()
            buffer = self.buffers[k]
            if tuple(shape) != tuple(buffer.shape) or (dtype is not None and dtype != buffer.dtype):
                raise StepNoiseError(
                    f"the scheduler asked for noise of shape {tuple(shape)} and dtype {dtype}; "
                    f"{tuple(buffer.shape)} {buffer.dtype} was drawn ahead (sample with --no-noise-ahead)"
                )
            if self.stream is not None:
                torch.cuda.current_stream(self.device).wait_event(self.drawn[k])
            handed.append(k)
            return buffer

        module.randn_tensor = randn_tensor
        try:
            yield
        finally:
            module.randn_tensor = original
        if expected and not handed:
            raise StepNoiseError("the scheduler drew no noise at a step it was expected to draw at")
        for k in handed:
            if self.stream is not None:  # the step's kernels read the buffer: no redraw before they ran
                self.used[k] = torch.cuda.Event()
                self.used[k].record(torch.cuda.current_stream(self.device))

    def close(self) -> None:
        """Have the main stream wait for every draw (the buffers go back to its memory pool)."""
        if self.stream is not None:
            torch.cuda.current_stream(self.device).wait_stream(self.stream)

    def __enter__(self) -> StepNoise:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
