"""Testing helpers for plugin authors (and this project's own tests), as pytest's ``Pytester`` is for pytest plugins.

- ``plugin_host(plugin, ...)``: a host with only the given plugin modules registered,
  exactly as the entry points would register them (their schemas are checked).
- ``stage_settings(host, stage, **chosen)``: a stage's ``with:`` settings as a recipe
  would give them: the schema's defaults (nested ones too) under what is chosen.
- ``stage_context(host, stage, model, ...)``: a ``StageContext`` to call a stage's
  ``run`` (or its training hooks) directly, on the CPU, without a recipe.
- ``run_recipe(*args)``: the ``recipe`` command in this process (``run_recipe("apply",
  "recipe.yaml", "--output", "out")``); returns its exit code.
- ``recipe_command()`` and ``PausedRun``: the command in a child process, and a run
  that pauses at named points of its progress so a test can signal it there.

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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from compose.plugin_host import PluginHost
from compose.recipe.schema import fill_defaults
from compose.run.interrupts import PAUSE_AT_ENV, PAUSE_FILE_ENV
from compose.stage import StageContext

__all__ = ["HANG_S", "PausedRun", "plugin_host", "recipe_command", "run_recipe", "stage_context", "stage_settings"]

#: Only a hung process fails on time: no limit here assumes a CPU speed.
HANG_S = 3600.0


def plugin_host(*plugins) -> PluginHost:
    """A plugin host with only ``plugins`` (modules or objects holding hook implementations) registered."""
    host = PluginHost()
    for plugin in plugins:
        host.register(plugin)
    return host


def stage_settings(host: PluginHost, stage: str, **chosen) -> dict:
    """The settings a recipe's ``with: {chosen}`` gives stage ``stage``: every schema default filled in."""
    import copy

    return fill_defaults(copy.deepcopy(dict(chosen)), host.stage(stage).schema)


def stage_context(
    host: PluginHost,
    stage: str,
    model,
    *,
    settings: dict | None = None,
    tokenizer=None,
    task=None,
    family: str = "encoder",
    work_dir: Path | None = None,
    seed: int = 0,
    recipe: dict[str, Any] | None = None,
    name: str | None = None,
) -> StageContext:
    """A context for calling stage ``stage``'s ``run`` directly: CPU, no progress bars, the schema's defaults.

    ``settings`` are what a recipe's ``with:`` would say (defaults are filled in); a stage
    that reads data needs a ``task`` and ``tokenizer``; one that writes files a ``work_dir``.
    """
    import torch

    from compose.progress import Progress

    return StageContext(
        name=name or stage,
        plugin=stage,
        settings=stage_settings(host, stage, **(settings or {})),
        model=model,
        tokenizer=tokenizer,
        task=task,
        family=family,
        work_dir=work_dir,
        seed=seed,
        device=torch.device("cpu"),
        progress=Progress(enabled=False),
        recipe=recipe or {},
        plugin_host=host,
    )


def run_recipe(*args: str) -> int:
    """Run the ``recipe`` command in this process with ``args``; its exit code (output goes to stdout/stderr)."""
    from compose.cli.main import main

    return main(list(args))


def recipe_command() -> list[str]:
    """The ``recipe`` command of the running Python environment."""
    script = Path(sys.executable).parent / "recipe"
    return [str(script)] if script.exists() else [sys.executable, "-m", "compose.cli.main"]


class PausedRun:
    """``recipe COMMAND ARGS`` (``apply`` by default) in a child process that pauses at the first point
    matching each of ``at``.

    ``folder``: where the pause file and the child's stderr (``stderr.txt``) go.
    ``ranks``: the processes that pause (``--nproc N``: N).
    ``sigint_ignored``: start it with SIGINT ignored, as a background job of a non-interactive
    shell (``cmd &`` in a script, many CI runners) is.
    """

    def __init__(
        self,
        args: Sequence[str],
        at: Sequence[str],
        folder: Path,
        ranks: int = 1,
        env: dict | None = None,
        sigint_ignored: bool = False,
        command: str = "apply",
    ):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.flag = self.folder / "paused"
        self.ranks = ranks
        self._clear()
        self.stderr_path = self.folder / "stderr.txt"
        full_env = {**os.environ, **(env or {}), PAUSE_AT_ENV: ",".join(at), PAUSE_FILE_ENV: str(self.flag)}
        with open(self.stderr_path, "wb") as err:
            ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None
            self.process = subprocess.Popen(
                [*recipe_command(), command, *args],
                env=full_env,
                stdout=subprocess.DEVNULL,
                stderr=err,
                preexec_fn=ignore,
            )

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
                raise AssertionError(
                    f"the run ended (exit {self.process.returncode}) before it paused:\n{self.stderr()[-3000:]}"
                )
            time.sleep(0.02)
        raise AssertionError("the run did not pause within the hang limit")

    def paused_pids(self) -> list[int]:
        return [int(flag.read_text(encoding="utf-8").split("\n")[1]) for flag in self._flags() if flag.exists()]

    def send(self, sig: int = signal.SIGINT) -> None:
        """Send ``sig`` to the ``recipe`` process (the paused one, or the launcher of ``--nproc``)."""
        self._clear()
        self.process.send_signal(sig)

    def resume(self) -> None:
        """Let the paused run go on from where it paused (after the test changed the world under it)."""
        from compose.run.interrupts import RESUME_SUFFIX

        flags = self._flags()
        self._clear()
        for flag in flags:
            Path(str(flag) + RESUME_SUFFIX).write_text("", encoding="utf-8")

    def wait(self) -> int:
        return self.process.wait(timeout=HANG_S)

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")
