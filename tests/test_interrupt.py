"""StopRequest: the first signal asks to stop, a repeat within the window is the same request,
a later one stops at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

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


# A library's optional import, as torch's C start-up imports numpy: a failed import is swallowed.
_PROBER = """
try:
    import optional  # noqa: F401
except BaseException:
    optional = None
"""
_COMMAND = """
import sys, time
from bench.interrupt import sigterm_as_ctrl_c

try:
    with sigterm_as_ctrl_c():
        import prober  # noqa: F401
        time.sleep(10)  # the command's work, which the SIGTERM ends
        print("ran to the end")
except KeyboardInterrupt:
    print("interrupted")
    sys.exit(130)
"""


def _assert_interrupted(tmp_path: Path, command_text: str) -> None:
    """``command_text`` run as a script whose import of ``prober`` meets a SIGTERM: it must end by
    its interrupt path (exit 130), not run to its end nor die by the signal."""
    (tmp_path / "optional.py").write_text("import signal\nsignal.raise_signal(signal.SIGTERM)\n")
    (tmp_path / "prober.py").write_text(_PROBER)
    (tmp_path / "command.py").write_text(command_text)
    command = [sys.executable, str(tmp_path / "command.py")]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout) == (130, "interrupted\n"), done.stderr


def test_a_sigterm_during_an_import_is_raised_once_the_import_is_over(tmp_path: Path) -> None:
    """Raised inside the import, the KeyboardInterrupt was swallowed by the importer and the command
    ran to its end (bench train killed at start-up trained on; elsewhere numpy was left half-imported)."""
    _assert_interrupted(tmp_path, _COMMAND)


_HANGING_IMPORT = """
import signal, time
signal.raise_signal(signal.SIGTERM)  # deferred: the import is under way
time.sleep(1.5)  # past REPEAT_WINDOW_S: the next one is the user asking again
signal.raise_signal(signal.SIGTERM)
time.sleep(600)  # an import that never ends
"""


def test_a_second_signal_stops_an_import_that_hangs(tmp_path: Path) -> None:
    """Every signal during an import was deferred, a second one too: a hanging import needed kill -9."""
    (tmp_path / "hanging.py").write_text(_HANGING_IMPORT)
    (tmp_path / "command.py").write_text(_COMMAND.replace("import prober", "import hanging"))
    command = [sys.executable, str(tmp_path / "command.py")]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout) == (130, "interrupted\n"), done.stderr


# bench train, SIGTERM or SIGINT as numpy starts to import: torch's C start-up imports it and swallowed the
# KeyboardInterrupt, and the run trained to its end (exit 0).
_TRAIN_SIGTERMED_AT_NUMPY = """
import os, signal, sys
from bench.cli import main

assert "numpy" not in sys.modules  # else the SIGTERM below would never come

def signal_at_numpy(event, args, fired=[]):
    if event == "import" and args[0] == "numpy" and not fired:
        fired.append(True)
        os.kill(os.getpid(), getattr(signal, os.environ["SIGNAL_AT_NUMPY"]))

sys.addaudithook(signal_at_numpy)
main(sys.argv[1:], prog_name="bench")
"""


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_bench_train_stopped_while_it_imports_is_an_interrupt(tmp_path: Path, name: str) -> None:
    """SIGINT too: Python's own Ctrl-C handler raised inside the import, and the run trained on."""
    (tmp_path / "driver.py").write_text(_TRAIN_SIGTERMED_AT_NUMPY)
    out = tmp_path / "train"
    args = ["train", "--preset", "tiny", "--max-steps", "1", "--batch-size", "2", "--scenes", "1"]
    args += ["--device", "cpu", "--no-compile", "--out", str(out)]
    env = {**os.environ, "BENCH_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    env["SIGNAL_AT_NUMPY"] = name
    command = [sys.executable, str(tmp_path / "driver.py"), *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 130, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1:] == ["interrupted"] and "Traceback" not in done.stderr
    assert not (out / "checkpoint").exists()


# The redelivery caught between its check and its signal as the command ends: the signal arrived
# after the handlers were put back, and SIGTERM's default killed the process without a word.
_COMMAND_ENDING_AS_REDELIVERED = """
import signal, sys, threading, time
from bench import interrupt

checked, ended = threading.Event(), threading.Event()
real_kill = signal.pthread_kill

def late_kill(thread_id, signum):
    checked.set()  # the import is over and the command not: the signal is on its way
    ended.wait(10)
    time.sleep(0.2)  # past the command's end (the handlers put back there, without a fix)
    real_kill(thread_id, signum)

interrupt.signal.pthread_kill = late_kill
try:
    with interrupt.sigterm_as_ctrl_c():
        import prober  # noqa: F401
        checked.wait(10)
        ended.set()
    print("ran to the end")
except KeyboardInterrupt:
    print("interrupted")
    sys.exit(130)
"""


def test_a_signal_redelivered_as_the_command_ends_is_still_an_interrupt(tmp_path: Path) -> None:
    _assert_interrupted(tmp_path, _COMMAND_ENDING_AS_REDELIVERED)
