"""Ctrl-C or SIGTERM (a cluster's time limit) as a request to stop at the next step and save.

A long loop runs inside ``StopRequest``: the first SIGINT/SIGTERM sets ``requested`` and the loop
ends at its next step boundary, keeping what it made (``bench train`` writes its checkpoint, so
``--resume`` goes on from that step); a second signal interrupts at once, as usual.

A signal within ``REPEAT_WINDOW_S`` of the first counts as the same request, not as the second:
under ``torchrun``/``accelerate launch`` Ctrl-C reaches each worker twice, from the terminal and
forwarded by the launcher (which then waits 30 s for the workers before it kills them)."""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType, TracebackType

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
REPEAT_WINDOW_S = 1.0
_IMPORT_MACHINERY = frozenset({"importlib._bootstrap", "importlib._bootstrap_external"})
_IMPORT_POLL_S = 0.01


class StopRequest:
    """While active (main thread only, where Python delivers signals), holds the first stop
    signal's name in ``requested``; ``None`` while none came."""

    def __init__(self, what: str, announce: bool = True) -> None:
        self.what = what  # what happens now, said when the first signal comes
        self.enabled = threading.current_thread() is threading.main_thread()
        self.announce = announce  # False: say nothing (the other processes of a launch)
        self.requested: str | None = None
        self._first_at = 0.0
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None:
            if time.monotonic() - self._first_at < REPEAT_WINDOW_S:
                return  # the same request, forwarded by a launcher
            raise KeyboardInterrupt  # the second signal: stop now
        self.requested = signal.Signals(signum).name
        self._first_at = time.monotonic()
        if self.announce:
            print(
                f"\n{self.requested}: {self.what}; once more stops at once",
                file=sys.stderr,
                flush=True,
            )

    def __enter__(self) -> StopRequest:
        if self.enabled:
            for sig in _SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)  # type: ignore[arg-type]
        self._previous.clear()


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """For a DataLoader's ``worker_init_fn``: its workers leave Ctrl-C and SIGTERM to the main
    process, which stops at a step boundary and shuts them down. Forked, they would otherwise run
    the main process's handler too, each announcing the stop once more."""
    for sig in _SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def _in_import(frame: FrameType | None) -> bool:
    """Whether ``frame`` runs under an import (importlib's frames, and so a module's top level)."""
    while frame is not None:
        if frame.f_globals.get("__name__") in _IMPORT_MACHINERY:
            return True
        frame = frame.f_back
    return False


@contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM (``kill``, a cluster's time limit) handled as Ctrl-C while a command runs: its
    interrupt path runs (what was kept is said, exit 130) instead of the process dying without a
    word. ``StopRequest`` takes both signals over inside a training loop. Main thread only.

    A SIGTERM or Ctrl-C during an import is raised once the import is over: a KeyboardInterrupt
    raised inside one leaves modules half-imported (numpy.linalg in sys.modules but not on numpy: a
    RecursionError later), or the importer swallows it (torch's C start-up importing numpy) and the
    command runs to its end, as `bench train` did after a Ctrl-C in its first seconds."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    main = threading.get_ident()
    waiting = threading.Event()  # a signal came during an import and waits for its end
    ending = threading.Event()  # the command is over: a signal now is raised after it
    redelivering: list[threading.Thread] = []

    def redeliver() -> None:
        while waiting.is_set() and not ending.wait(_IMPORT_POLL_S):
            if not _in_import(sys._current_frames().get(main)):
                waiting.clear()
                # a real signal, not interrupt_main: it also wakes a blocking call (SIGTERM for
                # either: both raise KeyboardInterrupt here)
                signal.pthread_kill(main, signal.SIGTERM)
                return

    first_at = [0.0]  # when the deferred signal came

    def interrupt(signum: int, frame: FrameType | None) -> None:
        if not (ending.is_set() or _in_import(frame)):
            waiting.clear()
            raise KeyboardInterrupt
        if waiting.is_set():
            if not ending.is_set() and time.monotonic() - first_at[0] >= REPEAT_WINDOW_S:
                # Asked again while an import still runs (one that hangs, say): stop at once, as a
                # second Ctrl-C does everywhere; the first stays pending should the importer
                # swallow this one.
                raise KeyboardInterrupt
            return
        waiting.set()
        first_at[0] = time.monotonic()
        if not ending.is_set():
            thread = threading.Thread(target=redeliver, name="sigterm-after-import", daemon=True)
            redelivering.append(thread)
            thread.start()

    previous = {sig: signal.signal(sig, interrupt) for sig in _SIGNALS}
    try:
        yield
    finally:
        ending.set()
        # A redelivery already past its check sends its signal now: it must find this handler (which,
        # once ending, only records it), not the previous one (SIGTERM's default kills silently).
        for thread in redelivering:
            thread.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if waiting.is_set():
        raise KeyboardInterrupt  # it came during the command's last import, or as it ended
