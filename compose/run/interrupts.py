"""SIGINT and SIGTERM stop a run, and no code in the run can lose them.

A signal sets a flag and raises ``KeyboardInterrupt`` in the main thread. A library that
catches that exception and drops it (a bare ``except:``, an ``except BaseException`` that
does not re-raise, a ``__del__`` it was raised in) can therefore no longer make a run that
was told to stop go on and report success: the run checks the flag at every named point
of its progress (``point``: every training step, evaluation and latency batch, save and
report) and before it declares its result, and raises there.

A second signal while the run is stopping (the user pressing Ctrl-C again while the
report is written) ends the process at once with exit 130. Every file a run writes is
written to a temporary name and renamed into place, so what that leaves behind is at
most a ``*.partial`` file that no reader takes for a result.

Named points also let tests stop a run at an exact place without racing it: with
``RECIPE_COMPOSE_PAUSE_AT`` set to comma-separated ``fnmatch`` patterns, the run pauses
at the first point matching each pattern, writes that point's name to the file named by
``RECIPE_COMPOSE_PAUSE_FILE`` (with ``.rankN`` appended on rank N > 0 of a multi-process
run) and waits for a signal (at most ``PAUSE_LIMIT_S``, then it goes on).
"""

from __future__ import annotations

import fnmatch
import os
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from compose import atomic

__all__ = ["check", "handling_signals", "point", "received", "stopping", "PAUSE_AT_ENV", "PAUSE_FILE_ENV"]

PAUSE_AT_ENV = "RECIPE_COMPOSE_PAUSE_AT"
PAUSE_FILE_ENV = "RECIPE_COMPOSE_PAUSE_FILE"
#: A paused run that no signal reaches goes on after this long (a test that died must not leave it hanging).
PAUSE_LIMIT_S = 600.0
#: Beside the pause file: its presence ends a pause, and the run goes on from that point.
RESUME_SUFFIX = ".resume"
EXIT_INTERRUPTED = 130

_IDLE, _REQUESTED, _STOPPING = "idle", "requested", "stopping"
_state = _IDLE
_signal_name: str | None = None
_patterns: list[str] | None = None


def received() -> str | None:
    """The name of the signal that asked this process to stop (``"SIGINT"``), or None."""
    return _signal_name


def _handler(signum, frame) -> None:
    global _state, _signal_name
    name = signal.Signals(signum).name
    if _state != _IDLE:  # asked again while stopping (or while a dropped first request waits for a check)
        os.write(2, f"\n{name} again: stopping now, without cleaning up\n".encode())
        os._exit(EXIT_INTERRUPTED)
    _state, _signal_name = _REQUESTED, name
    raise KeyboardInterrupt


@contextmanager
def handling_signals():
    """Within the block, SIGINT and SIGTERM stop the run as described above (main thread only)."""
    global _state, _signal_name
    previous = {sig: signal.signal(sig, _handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    _state, _signal_name = _IDLE, None
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _state = _IDLE


def check() -> None:
    """Raise ``KeyboardInterrupt`` if a signal asked the run to stop and it has not stopped yet."""
    if _state == _REQUESTED:
        raise KeyboardInterrupt


@contextmanager
def stopping():
    """The run is stopping (writing its report after an interruption): a further signal ends it at once."""
    global _state
    if _state == _IDLE:  # a KeyboardInterrupt that no signal raised (e.g. raised by a test)
        yield
        return
    _state = _STOPPING
    yield


def _pause_patterns() -> list[str]:
    global _patterns
    if _patterns is None:
        raw = os.environ.get(PAUSE_AT_ENV, "")
        _patterns = [p.strip() for p in raw.split(",") if p.strip()]
    return _patterns


def point(name: str) -> None:
    """A named point of the run's progress, e.g. ``"b/step 10"`` or ``"b/saving"``.

    Stops the run here if a signal asked it to (``check``); pauses here for a test (above).
    Names: ``STAGE/start``, ``STAGE/step N``, ``STAGE/evaluating``, ``STAGE/latency``,
    ``STAGE/saving`` (the artifact written, not yet in place), ``STAGE/report``,
    ``run/result`` (before the status is decided) and ``run/stopping`` (writing the report
    of an interrupted run).
    """
    if _state == _REQUESTED:
        raise KeyboardInterrupt
    patterns = _pause_patterns()
    if patterns:
        for pattern in patterns:
            if fnmatch.fnmatchcase(name, pattern):
                patterns.remove(pattern)
                _pause(name)
                break


def _pause(name: str) -> None:
    target = os.environ.get(PAUSE_FILE_ENV)
    if target:
        rank = int(os.environ.get("RANK", "0"))
        path = Path(target + (f".rank{rank}" if rank else ""))
        atomic.write_text(path, f"{name}\n{os.getpid()}\n")
    else:
        print(f"[paused at {name}; pid {os.getpid()}]", file=sys.stderr, flush=True)
    resume = Path(str(path) + RESUME_SUFFIX) if target else None
    deadline = time.monotonic() + PAUSE_LIMIT_S
    while time.monotonic() < deadline:
        time.sleep(0.05)  # a signal's KeyboardInterrupt (or os._exit) ends the wait
        if resume is not None and resume.exists():  # the test changed what it wanted to and lets the run go on
            resume.unlink(missing_ok=True)
            return
