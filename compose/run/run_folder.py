"""The run folder: where a run writes, its layout, its stage records, and one run at a time in each.

This module is the one owner of the run-folder protocol that ``recipe apply``, ``recipe
tune`` (its trials, its stage store and its final evaluations) and ``recipe verify`` share:

- the folder a recipe runs in (``resolve``: ``--output``, else the recipe's ``output.dir``);
- the layout: ``stages/NN-name/`` per stage (``stage_folder``), with the stage's record
  (``STAGE_RECORD``, written and read by ``write_stage_record`` / ``read_stage_record``);
- claiming and locking (``owned`` = ``claim`` + ``locked``), and the one other lock a study's
  workers share (``waiting_lock``: wait for it, where ``locked`` refuses).

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

__all__ = [
    "LOCK",
    "MARKER",
    "STAGES",
    "STAGE_RECORD",
    "RunFolderError",
    "claim",
    "locked",
    "owned",
    "read_stage_record",
    "resolve",
    "stage_folder",
    "stage_record_paths",
    "waiting_lock",
    "write_stage_record",
]

MARKER = ".recipe-compose-run"
LOCK = ".recipe-compose.lock"
#: What a run writes at the top of its folder: a folder holding any of these is not adopted.
WRITTEN = ("report.json", "recipe.resolved.yaml", "stages")
_RESOLVED_HEADER = "# The fully resolved recipe"
#: The folder of a run that holds one folder per stage.
STAGES = "stages"
#: A finished stage's record, in its folder: fingerprints, its report row, its files' digests.
STAGE_RECORD = "stage.json"


def resolve(recipe_data, output: Path | str | None = None) -> Path:
    """The folder a recipe runs in: ``output`` (``--output``) if given, else the recipe's ``output.dir``."""
    return Path(output or recipe_data["output"]["dir"])


def stage_folder(run_dir: Path, index: int, name: str) -> Path:
    """``run_dir/stages/NN-name``: where the stage at ``index`` (0: the input row) keeps its artifact and record."""
    return Path(run_dir) / STAGES / f"{index:02d}-{name}"


def stage_record_paths(run_dir: Path) -> list[Path]:
    """The stage records of a run folder, in stage order."""
    return sorted((Path(run_dir) / STAGES).glob(f"*/{STAGE_RECORD}"))


def read_stage_record(folder: Path) -> dict | None:
    """The record in a stage folder; None where there is none or it cannot be read."""
    try:
        record = json.loads((Path(folder) / STAGE_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_stage_record(folder: Path, record: dict) -> None:
    atomic.write_json(Path(folder) / STAGE_RECORD, record)


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


@contextmanager
def owned(folder: Path, adopt: bool = False) -> Iterator[Path]:
    """Claim ``folder`` and hold its lock for the block (RunFolderError, with nothing changed, if it cannot be)."""
    claim(folder, adopt=adopt)
    with locked(folder):
        yield Path(folder)


@contextmanager
def waiting_lock(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file`` for the block, waiting for other processes that hold it (a
    study's workers, on this machine or a shared file system whose locks work)."""
    import fcntl

    Path(lock_file).parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+", encoding="utf-8") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
