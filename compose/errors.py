"""Errors the CLI turns into messages and exit codes (never tracebacks)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a recipe, located in the file the user edits."""

    message: str
    path: str = "$"  # JSON path, e.g. $.stages[2].with.bits
    file: str | None = None
    line: int | None = None  # 1-based
    column: int | None = None  # 1-based
    severity: str = "error"  # or "warning"

    def format(self) -> str:
        where = self.file or "<recipe>"
        if self.line is not None:
            where += f":{self.line}:{self.column or 1}"
        return f"{where}: {self.path}: {self.message}"

    def to_json(self) -> dict:
        return {
            "severity": self.severity,
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "path": self.path,
            "message": self.message,
        }


class ComposeError(Exception):
    """Base class of the errors recipe-compose reports to the user."""


class RecipeError(ComposeError):
    """The recipe is invalid; nothing ran. Carries every problem found."""

    def __init__(self, problems: list[Problem]):
        self.problems = [p for p in problems if p.severity == "error"]
        self.warnings = [p for p in problems if p.severity != "error"]
        super().__init__("\n".join(p.format() for p in self.problems))


class PluginError(ComposeError):
    """A plugin could not be loaded or registered something invalid."""


class StageFailed(ComposeError):
    """A stage raised while it ran."""

    def __init__(self, stage: str, cause: BaseException):
        self.stage = stage
        self.cause = cause
        super().__init__(f"stage '{stage}' failed: {type(cause).__name__}: {cause}")


class DataError(ComposeError):
    """A data file is missing or malformed."""


class ModelLoadError(ComposeError):
    """A model or tokenizer could not be loaded."""


class OutOfMemory(ComposeError):
    """A stage ran out of memory."""


class DiskFull(ComposeError):
    """The disk filled up while a stage's results were written."""


class MachineFault(ComposeError):
    """The machine refused a file operation (permissions, a read-only disk, a path that cannot be)."""


#: errno -> (what went wrong, what to do), for faults of the machine rather than of recipe-compose.
_FILE_FAULTS = {
    "EACCES": ("permission denied", "give this user write access to it, or choose another --output"),
    "EPERM": ("operation not permitted", "give this user write access to it, or choose another --output"),
    "EROFS": ("the file system is read-only", "choose an --output on a writable disk"),
    "ENOTDIR": ("a part of the path is a file, not a folder", "choose an --output whose parents are folders"),
    "EISDIR": ("a folder is where a file must go", "remove or rename that folder, or choose another --output"),
    "ENAMETOOLONG": ("the path is too long for the file system", "choose a shorter --output"),
    "EMFILE": ("too many open files", "raise the limit (ulimit -n) and run `recipe apply` again to resume"),
}


def os_error_in(exc: BaseException) -> OSError | None:
    """The operating system's error behind ``exc``: ``exc`` itself, one it was raised from or during (its
    ``__cause__`` / ``__context__`` chain), or one a library reports only in its text: safetensors' "... (os
    error 28)", or "[Errno 28] ..." in a message. None where there is none."""
    import os
    import re

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc
        found = re.search(r"\(os error (\d+)\)|\[Errno (\d+)\]", str(exc))
        if found is not None:
            code = int(found.group(1) or found.group(2))
            return OSError(code, os.strerror(code), getattr(exc, "filename", None))
        exc = exc.__cause__ or exc.__context__
    return None


def file_fault_message(exc: OSError) -> str | None:
    """The machine's words for a file-system fault: the path, what went wrong, what to do (None: not one)."""
    import errno

    name = errno.errorcode.get(exc.errno or -1)
    path = exc.filename or "a file of the run"
    if name in ("ENOSPC", "EDQUOT"):
        what = "no space left on the device" if name == "ENOSPC" else "the disk quota is used up"
        return (
            f"{what} (the disk is full) while writing {path}; the partial files were removed and finished "
            "stages are kept: free some space and run `recipe apply` again to resume"
        )
    if name in _FILE_FAULTS:
        what, fix = _FILE_FAULTS[name]
        return f"{what}: {path}; {fix}"
    return None


def explain_failure(exc: BaseException, run_dir=None) -> BaseException:
    """Out-of-memory and file-system faults as messages that say what to do; others unchanged."""
    import errno

    oom_types = (MemoryError,)
    try:
        import torch

        oom_types += (torch.OutOfMemoryError,)
    except (ImportError, AttributeError):  # pragma: no cover - older torch
        pass
    if isinstance(exc, oom_types):
        return OutOfMemory(
            f"out of memory ({exc}); lower the stage's batch_size, or turn on `checkpointing: true` "
            "for stages that train; finished stages are kept, so `recipe apply` resumes after them"
        )
    os_error = os_error_in(exc)
    message = file_fault_message(os_error) if os_error is not None else None
    if message is None:
        return exc
    return DiskFull(message) if os_error.errno in (errno.ENOSPC, errno.EDQUOT) else MachineFault(message)
