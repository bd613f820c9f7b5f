"""Progress bars on stderr for long work (click's, so no extra dependency)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import click

T = TypeVar("T")


def progress(
    items: Iterable[T], label: str, length: int | None = None, status: Callable[[], str] | None = None
) -> Iterator[T]:
    """Yield ``items`` while drawing a bar; ``status()`` adds live text (loss, images/s)."""
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


class Rate:
    """Items per second since the last reset, for progress text."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.count = 0

    def add(self, n: int) -> None:
        self.count += n

    @property
    def per_second(self) -> float:
        return self.count / max(time.perf_counter() - self.start, 1e-9)
