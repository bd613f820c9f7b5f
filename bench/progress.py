"""Progress bars on stderr for long work (click's, so no extra dependency)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import click

T = TypeVar("T")


LOG_EVERY_SECONDS = 60.0


def progress(
    items: Iterable[T], label: str, length: int | None = None, status: Callable[[], str] | None = None
) -> Iterator[T]:
    """Yield ``items`` while drawing a bar; ``status()`` adds live text (loss, images/s).

    Where stderr is not a terminal (a log file, a batch job), a bar cannot redraw, so a line is
    written every ``LOG_EVERY_SECONDS`` instead: what is done, the status, the time so far."""
    if not sys.stderr.isatty():
        yield from _progress_lines(items, label, length, status)
        return
    with click.progressbar(
        items,
        length=length,
        label=label,
        file=sys.stderr,
        show_pos=True,
        show_eta=True,
        item_show_func=(lambda _item: status()) if status else None,
    ) as bar:
        yield from bar


def _progress_lines(
    items: Iterable[T], label: str, length: int | None, status: Callable[[], str] | None
) -> Iterator[T]:
    start = last = time.perf_counter()
    done = 0
    print(f"{label}: 0/{length}" if length else f"{label}: 0", file=sys.stderr, flush=True)
    for item in items:
        yield item
        done += 1
        now = time.perf_counter()
        if now - last >= LOG_EVERY_SECONDS:
            last = now
            parts = [f"{done}/{length} ({100 * done / length:.0f}%)" if length else f"{done}"]
            parts += [status()] if status else []
            print(f"{label}: {' '.join(parts)} [{now - start:.0f} s]", file=sys.stderr, flush=True)


class Rate:
    """Items per second since the last reset, for progress text."""

    def __init__(self) -> None:
        self.reset()

    def add(self, n: int) -> None:
        self.count += n

    def reset(self) -> None:
        """Count from now: a rate over the last interval, not since a start that paid for a compile."""
        self.start = time.perf_counter()
        self.count = 0

    @property
    def per_second(self) -> float:
        return self.count / max(time.perf_counter() - self.start, 1e-9)
