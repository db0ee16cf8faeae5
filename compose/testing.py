"""Helpers for testing runs of ``recipe apply`` from outside, for this project and plugin authors.

``PausedRun`` starts ``recipe apply`` so that it stops at named points of its progress
(``compose.run.interrupts.point``: ``"b/step 10"``, ``"b/saving"``, ``"b/report"``...) and
waits there, so that a test can signal (or kill) it at an exact place instead of at a
guessed moment::

    run = PausedRun(["recipe.yaml", "--output", str(out)], at=["b/step 10"], folder=tmp_path)
    assert run.wait_paused() == "b/step 10"
    run.send(signal.SIGINT)
    assert run.wait() == 130
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from compose.run.interrupts import PAUSE_AT_ENV, PAUSE_FILE_ENV

__all__ = ["PausedRun", "recipe_command"]

#: Only a hung process fails on time: no limit here assumes a CPU speed.
HANG_S = 3600.0


def recipe_command() -> list[str]:
    """The ``recipe`` command of the running Python environment."""
    script = Path(sys.executable).parent / "recipe"
    return [str(script)] if script.exists() else [sys.executable, "-m", "compose.cli.main"]


class PausedRun:
    """``recipe apply ARGS`` in a child process that pauses at the first point matching each of ``at``.

    ``folder``: where the pause file and the child's stderr (``stderr.txt``) go.
    ``ranks``: the processes that pause (``--nproc N``: N).
    ``sigint_ignored``: start it with SIGINT ignored, as a background job of a non-interactive
    shell (``cmd &`` in a script, many CI runners) is.
    """

    def __init__(self, args: Sequence[str], at: Sequence[str], folder: Path, ranks: int = 1,
                 env: dict | None = None, sigint_ignored: bool = False):  # fmt: skip
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.flag = self.folder / "paused"
        self.ranks = ranks
        self._clear()
        self.stderr_path = self.folder / "stderr.txt"
        full_env = {**os.environ, **(env or {}), PAUSE_AT_ENV: ",".join(at), PAUSE_FILE_ENV: str(self.flag)}
        with open(self.stderr_path, "wb") as err:
            ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None
            self.process = subprocess.Popen([*recipe_command(), "apply", *args], env=full_env,
                                            stdout=subprocess.DEVNULL, stderr=err, preexec_fn=ignore)  # fmt: skip

    def _flags(self) -> list[Path]:
        return [self.flag] + [self.flag.with_name(f"{self.flag.name}.rank{r}") for r in range(1, self.ranks)]

    def _clear(self) -> None:
        for flag in self._flags():
            flag.unlink(missing_ok=True)

    def wait_paused(self) -> str:
        """Wait until every rank pauses; the point's name (rank 0's). AssertionError if the run ended first."""
        deadline = time.monotonic() + HANG_S
        while time.monotonic() < deadline:
            if all(flag.exists() for flag in self._flags()):
                return self.flag.read_text(encoding="utf-8").split("\n")[0]
            if self.process.poll() is not None:
                raise AssertionError(f"the run ended (exit {self.process.returncode}) before it paused:\n"
                                     f"{self.stderr()[-3000:]}")  # fmt: skip
            time.sleep(0.02)
        raise AssertionError("the run did not pause within the hang limit")

    def paused_pids(self) -> list[int]:
        return [int(flag.read_text(encoding="utf-8").split("\n")[1]) for flag in self._flags() if flag.exists()]

    def send(self, sig: int = signal.SIGINT) -> None:
        """Send ``sig`` to the ``recipe`` process (the paused one, or the launcher of ``--nproc``)."""
        self._clear()
        self.process.send_signal(sig)

    def wait(self) -> int:
        return self.process.wait(timeout=HANG_S)

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")
