"""StopRequest: the first signal asks to stop, a repeat within the window is the same request,
a later one stops at once."""

from __future__ import annotations

import os
import signal

import pytest

from bench import interrupt
from bench.interrupt import StopRequest


def test_first_signal_requests_a_stop_and_the_handlers_come_back(capsys) -> None:
    before = signal.getsignal(signal.SIGTERM)
    with StopRequest("saving") as stop:
        assert stop.requested is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) == before
    assert "SIGTERM: saving; once more stops at once" in capsys.readouterr().err


def test_a_signal_forwarded_by_a_launcher_is_the_same_request(capsys) -> None:
    # Ctrl-C under torchrun: the terminal's SIGINT, then the launcher's copy a moment later.
    with StopRequest("saving", announce=False) as stop:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested == "SIGINT"
    assert capsys.readouterr().err == ""  # not the main process: nothing said


def test_a_second_signal_after_the_window_stops_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(interrupt, "REPEAT_WINDOW_S", 0.0)
    with pytest.raises(KeyboardInterrupt), StopRequest("saving", announce=False):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
