"""Which folders a run may write into, and one run at a time in each.

A run folder carries a marker file (``MARKER``) that this tool wrote when it made or
claimed the folder. ``claim`` lets a run write into a folder that does not exist yet, is
empty, or carries the marker; any other folder is refused before anything runs, so that
no file of the user's is overwritten. ``adopt=True`` (``recipe apply --use-output-folder``)
claims a folder that holds other files too, as long as none of them has a name the run
writes (``report.json``, ``recipe.resolved.yaml``, ``stages/``): the tool still never
deletes or overwrites a file it did not write. Run folders made before the marker existed
(with a ``report.json`` and a ``recipe.resolved.yaml`` that this tool wrote) are claimed.

``locked`` holds an exclusive lock (``fcntl.flock`` on ``LOCK``) while a run writes, so a
second ``recipe apply`` on the same folder is refused, naming the process that holds it;
the operating system releases the lock when that process ends, however it ends.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from compose import atomic
from compose.errors import ComposeError

__all__ = ["LOCK", "MARKER", "RunFolderError", "claim", "locked"]

MARKER = ".recipe-compose-run"
LOCK = ".recipe-compose.lock"
#: What a run writes at the top of its folder: a folder holding any of these is not adopted.
WRITTEN = ("report.json", "recipe.resolved.yaml", "stages")
_RESOLVED_HEADER = "# The fully resolved recipe"


class RunFolderError(ComposeError):
    """The run folder cannot be used; nothing ran and nothing in it was changed."""


def _is_legacy_run(folder: Path) -> bool:
    try:
        report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
        header = (folder / "recipe.resolved.yaml").read_text(encoding="utf-8")[: len(_RESOLVED_HEADER)]
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(report, dict) and "run_dir" in report and "stages" in report and header == _RESOLVED_HEADER


def _listing(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def claim(folder: Path, adopt: bool = False) -> None:
    """Make ``folder`` this tool's run folder, or raise RunFolderError saying why not and what to do."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"the run folder {folder} is a file, not a folder; nothing ran: choose another --output")
    if (folder / MARKER).is_file():
        return
    entries = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
    if entries and not _is_legacy_run(folder):
        clashes = [name for name in WRITTEN if name in entries]
        if not adopt:
            raise RunFolderError(
                f"the run folder {folder} already holds files that recipe-compose did not write "
                f"({_listing(entries)}); nothing ran and nothing there was changed: choose another --output "
                "(or output.dir), or pass --use-output-folder to add the run's files beside them"
            )
        if clashes:
            raise RunFolderError(
                f"the run folder {folder} holds {_listing(clashes)}, which a run would overwrite, and they were "
                "not written by recipe-compose; nothing ran and nothing there was changed: choose another --output"
            )
    folder.mkdir(parents=True, exist_ok=True)
    atomic.write_json(folder / MARKER, {"tool": "recipe-compose", "claimed": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


@contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold the run folder's lock for the block; RunFolderError if another process holds it."""
    import fcntl

    path = Path(folder) / LOCK
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - open for as long as the lock is held
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RunFolderError(
                f"the run folder {folder} is in use by {holder}; nothing ran: wait for that run to end, "
                "or choose another --output"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(
            f"recipe apply (pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')})\n"
        )
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock
