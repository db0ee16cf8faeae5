"""Every file and folder recipe-compose writes is written here, with one guarantee.

The guarantee: a reader sees the old content or the new, whole, never a mix, even if the
process is killed or the machine loses power. The new content goes to a temporary name
beside the target (``NAME.partial``), is flushed to disk (``fsync`` of each file), renamed
over the target, and the folder holding it is flushed too, so that the rename itself
survives a crash.

A folder cannot be renamed over another in one step: ``replace_folder`` moves the old
folder aside to ``NAME.old``, renames the new one into place, then deletes ``NAME.old``.
A kill between those two renames leaves only ``NAME.old``; ``recover`` (called by every
reader through ``existing``) renames it back, so the last complete version is what is read.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "PARTIAL",
    "OLD",
    "existing",
    "recover",
    "replace_folder",
    "write_bytes",
    "write_json",
    "write_text",
    "writing_folder",
    "writing_file",
]

PARTIAL = ".partial"
OLD = ".old"


def _fsync_folder(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform without directory descriptors
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _fsync_tree(folder: Path) -> None:
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    for path in [folder, *[p for p in Path(folder).rglob("*") if p.is_dir()]]:
        _fsync_folder(path)


def recover(path: Path) -> Path:
    """If a kill between the two renames of ``replace_folder`` left only ``NAME.old``, put it back."""
    path = Path(path)
    old = path.with_name(path.name + OLD)
    if not path.exists() and old.is_dir():
        old.rename(path)
        _fsync_folder(path.parent)
    return path


def existing(path: Path) -> Path | None:
    """``path`` as a reader should open it (recovered if needed), or None if there is nothing there."""
    path = recover(Path(path))
    return path if path.exists() else None


@contextmanager
def writing_file(path: Path, mode: str = "wb", encoding: str | None = None) -> Iterator:
    """An open temporary file that replaces ``path`` when the block ends without an error."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}{PARTIAL}")  # two processes writing one file never share it
    try:
        with open(tmp, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename is None and exc.errno is not None:  # a failed write names no file: this one
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def write_bytes(path: Path, data: bytes) -> None:
    with writing_file(path, "wb") as handle:
        handle.write(data)


def write_text(path: Path, text: str) -> None:
    with writing_file(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def append_line(path: Path, line: str) -> None:
    """Add ``line`` to the log file ``path`` whole: one ``write`` of the line and its newline on a file opened
    for appending (so lines of several processes never interleave), flushed to disk before returning. A line
    cut short by a crash is the last one, and has no newline: readers skip it."""
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(f"only {written} of {len(data)} bytes of a line reached {path}")
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_folder(tmp: Path, folder: Path) -> None:
    """Put the complete folder ``tmp`` in place of ``folder`` (which may not exist)."""
    tmp, folder = Path(tmp), Path(folder)
    _fsync_tree(tmp)
    recover(folder)
    old = folder.with_name(folder.name + OLD)
    if old.exists():
        shutil.rmtree(old)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    _fsync_folder(folder.parent)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def writing_folder(folder: Path, before_replace: Callable[[], None] | None = None) -> Iterator[Path]:
    """A fresh temporary folder that replaces ``folder`` when the block ends without an error.

    ``before_replace()`` runs when the folder is complete and not yet in place (a point of
    the run's progress, see compose.run.interrupts). On an error the temporary folder goes.
    """
    folder = Path(folder)
    tmp = folder.with_name(folder.name + PARTIAL)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if before_replace is not None:
            before_replace()
        replace_folder(tmp, folder)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.filename is None and exc.errno is not None:  # a failed write names no file: this folder
            raise OSError(exc.errno, exc.strerror, str(folder)) from exc
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
