"""The live view: stage, step and ETA bars on stderr, and log lines above them."""

from __future__ import annotations

from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress as RichProgress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


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


class Progress:
    """What stages report progress through (``ctx.progress``)."""

    def __init__(self, console: Console | None = None, enabled: bool = True):
        self.console = console or Console(stderr=True)
        self.enabled = enabled
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
            if enabled
            else None
        )

    def __enter__(self):
        if self._rich is not None:
            self._rich.start()
        return self

    def __exit__(self, *exc):
        if self._rich is not None:
            self._rich.stop()

    @contextmanager
    def track(self, description: str, total: float | None = None):
        """A bar for one piece of work; removed when the block ends."""
        if self._rich is None:
            yield Bar(None, None)
            return
        task_id = self._rich.add_task(description, total=total)
        try:
            yield Bar(self._rich, task_id)
        finally:
            self._rich.remove_task(task_id)

    def add_bar(self, description: str, total: float | None = None) -> Bar:
        """A bar that stays until the run ends (the executor's stage bar)."""
        if self._rich is None:
            return Bar(None, None)
        return Bar(self._rich, self._rich.add_task(description, total=total))

    def log(self, message: str) -> None:
        if self.enabled:
            self.console.print(message, markup=False, highlight=False, soft_wrap=True)
