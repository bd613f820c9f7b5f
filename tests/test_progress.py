"""Progress where no bar can be drawn: a line a minute in a log."""

from __future__ import annotations

import io

import pytest

from bench import progress as progress_module


class _Clock:
    """time.perf_counter that moves 25 s per call."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 25.0
        return self.now


def test_a_log_gets_a_progress_line_a_minute_with_the_status(monkeypatch: pytest.MonkeyPatch) -> None:
    log = io.StringIO()  # not a terminal
    monkeypatch.setattr(progress_module.sys, "stderr", log)
    monkeypatch.setattr(progress_module.time, "perf_counter", _Clock())
    items = list(progress_module.progress(range(10), "training", length=10, status=lambda: "loss 0.5"))
    assert items == list(range(10))
    lines = log.getvalue().splitlines()
    # 25 s per item after the start: a line at 75 s (item 3), 150 s (6), 225 s (9)
    assert lines == [
        "training: 0/10",
        "training: 3/10 (30%) loss 0.5 [75 s]",
        "training: 6/10 (60%) loss 0.5 [150 s]",
        "training: 9/10 (90%) loss 0.5 [225 s]",
    ]


def test_an_endless_run_in_a_log_counts_items(monkeypatch: pytest.MonkeyPatch) -> None:
    log = io.StringIO()
    monkeypatch.setattr(progress_module.sys, "stderr", log)
    monkeypatch.setattr(progress_module.time, "perf_counter", _Clock())
    list(progress_module.progress(range(3), "sampling"))
    assert log.getvalue().splitlines() == ["sampling: 0", "sampling: 3 [75 s]"]
