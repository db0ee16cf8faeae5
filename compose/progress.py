"""The live view: stage, step and ETA bars on stderr, and log lines above them.

On a terminal the bars redraw in place (rich). When stderr is not a terminal (CI, a
pipe, nohup, a file), redrawing would print nothing until the end, so plain lines
are printed instead, one at most every ``RECIPE_COMPOSE_PROGRESS_INTERVAL`` seconds
(default 30; 0: none): the piece of work, step/total, rate and ETA.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import (
    Progress as RichProgress,
)

#: Seconds between plain progress lines when stderr is not a terminal (0: no lines).
INTERVAL_ENV = "RECIPE_COMPOSE_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 30.0


def interval_from_env() -> float:
    """``RECIPE_COMPOSE_PROGRESS_INTERVAL`` in seconds; ValueError (saying the fix) if it is not one."""
    text = os.environ.get(INTERVAL_ENV, "").strip()
    if not text:
        return DEFAULT_INTERVAL
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise ValueError(
            f"{INTERVAL_ENV}={text!r}: expected a number of seconds between progress lines "
            f"(e.g. {INTERVAL_ENV}=60; 0 prints none)"
        )
    return value


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Bar:
    """A handle on one progress bar: ``advance()``, ``update(description=..., total=...)``."""

    def __init__(self, progress: RichProgress | None, task_id):
        self._progress = progress
        self._task_id = task_id

    def advance(self, steps: float = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task_id, steps)

    def update(self, **fields) -> None:
        if self._progress is not None:
            self._progress.update(self._task_id, **fields)


class PlainBar(Bar):
    """A bar that prints a plain line now and then instead of redrawing (stderr is not a terminal)."""

    def __init__(self, lines: _PlainLines, description: str, total: float | None, completed: float = 0):
        super().__init__(None, None)
        self._lines = lines
        self.description = description
        self.total = total
        self.completed = completed
        self.started = lines.clock()
        # the rate is measured from here (moved on at each printed line: the recent rate)
        self.since, self.completed_since = self.started, completed

    def advance(self, steps: float = 1) -> None:
        self.completed += steps
        self._lines.tick(self)

    def update(self, **fields) -> None:
        for name in ("description", "total", "completed"):
            if name in fields:
                setattr(self, name, fields[name])
        self._lines.tick(self)

    def line(self, now: float) -> str:
        """``finetune: training: 120/375 (32%), 2.10/s, elapsed 57s, ETA 2m01s``."""
        elapsed = now - self.since
        rate = (self.completed - self.completed_since) / elapsed if elapsed > 0 else 0.0
        done = f"{self.completed:g}"
        if self.total:
            done += f"/{self.total:g} ({100 * self.completed / self.total:.0f}%)"
        parts = [f"{self.description}: {done}"]
        if rate > 0:
            parts.append(f"{rate:.3g}/s")
        parts.append(f"elapsed {format_duration(now - self.started)}")
        if self.total and rate > 0:
            parts.append(f"ETA {format_duration(max(0.0, self.total - self.completed) / rate)}")
        return ", ".join(parts)


class _PlainLines:
    """Prints the active bar's line at most once per ``interval`` seconds of ``clock``."""

    def __init__(self, console: Console, interval: float, clock: Callable[[], float]):
        self.console = console
        self.interval = interval
        self.clock = clock
        self.last = clock()
        self.active: list[PlainBar] = []
        self.lock = threading.Lock()

    def tick(self, bar: PlainBar | None = None) -> None:
        with self.lock:
            bar = bar or (self.active[-1] if self.active else None)
            now = self.clock()
            if bar is None or now - self.last < self.interval:
                return
            self.last = now
            text = bar.line(now)
            bar.since, bar.completed_since = now, bar.completed
        self.console.print(f"[progress] {text}", markup=False, highlight=False, soft_wrap=True)


class Progress:
    """What stages report progress through (``ctx.progress``).

    console:  where bars and log lines go (default: stderr).
    enabled:  False shows nothing (``--quiet``, other ranks, tests).
    interval: seconds between plain progress lines when the console is not a
              terminal (default: ``RECIPE_COMPOSE_PROGRESS_INTERVAL`` or 30; 0: none).
    clock:    the time source of those lines (tests pass a fake one).
    """

    def __init__(
        self,
        console: Console | None = None,
        enabled: bool = True,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self.plain = enabled and (not self.console.is_terminal or self.console.is_dumb_terminal)
        interval = interval_from_env() if interval is None else interval
        self._lines = _PlainLines(self.console, interval, clock) if self.plain and interval > 0 else None
        self._heartbeat: threading.Thread | None = None
        self._stop = threading.Event()
        self._rich = (
            RichProgress(
                SpinnerColumn(),
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            if enabled and not self.plain
            else None
        )

    def __enter__(self):
        if self._rich is not None:
            self._rich.start()
        if self._lines is not None:  # a line also while one step (or an untracked wait) takes long
            self._stop.clear()
            self._heartbeat = threading.Thread(target=self._beat, name="progress-lines", daemon=True)
            self._heartbeat.start()
        return self

    def __exit__(self, *exc):
        if self._rich is not None:
            self._rich.stop()
        if self._heartbeat is not None:
            self._stop.set()
            self._heartbeat.join()
            self._heartbeat = None

    def _beat(self) -> None:
        while not self._stop.wait(max(self._lines.interval, 1.0)):
            self._lines.tick()

    @contextmanager
    def track(self, description: str, total: float | None = None, completed: float = 0):
        """A bar for one piece of work (``completed`` already done, e.g. when resuming); removed when the block ends."""
        if self._lines is not None:
            bar = PlainBar(self._lines, description, total, completed)
            with self._lines.lock:
                self._lines.active.append(bar)
            try:
                yield bar
            finally:
                with self._lines.lock:
                    self._lines.active.remove(bar)
            return
        if self._rich is None:
            yield Bar(None, None)
            return
        task_id = self._rich.add_task(description, total=total, completed=completed)
        try:
            yield Bar(self._rich, task_id)
        finally:
            self._rich.remove_task(task_id)

    def add_bar(self, description: str, total: float | None = None) -> Bar:
        """A bar that stays until the run ends (the executor's stage bar)."""
        if self._lines is not None:
            bar = PlainBar(self._lines, description, total)
            with self._lines.lock:
                self._lines.active.insert(0, bar)  # below the pieces of work tracked inside it
            return bar
        if self._rich is None:
            return Bar(None, None)
        return Bar(self._rich, self._rich.add_task(description, total=total))

    def log(self, message: str) -> None:
        if self.enabled:
            self.console.print(message, markup=False, highlight=False, soft_wrap=True)
