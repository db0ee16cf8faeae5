"""Read a task's data splits: local TSV/CSV/JSONL/plain-text files, or Hugging Face datasets."""

from __future__ import annotations

import csv
import functools
import json
import os
import random
import sys
from collections.abc import Mapping
from pathlib import Path

from compose.errors import DataError

_FORMATS = {
    ".tsv": "tsv",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".txt": "text",
    ".raw": "text",
    ".tokens": "text",
}


def read_split(
    name: str, spec: Mapping, columns: list[str], seed: int, *, text_columns: list[str] | None = None
) -> list[dict]:
    """Rows of one split as dicts, checked to have ``columns``; limited/shuffled as the spec says.
    ``text_columns``: the columns a ``holdout.whole_texts`` compares (default: the first of ``columns``)."""
    if "path" in spec:
        rows = read_file(Path(spec["path"]), spec.get("format", "auto"), columns, name)
    else:
        rows = read_hf_dataset(spec, columns, name)
    if not rows:
        where = spec.get("path") or spec.get("dataset")
        raise DataError(f"split '{name}' ({where}) has no rows")
    if spec.get("holdout"):
        rows = held_out(rows, spec["holdout"], text_columns or columns[:1], name)
    limit = spec.get("limit")
    if spec.get("shuffle"):
        rows = rows[:]
        random.Random(seed).shuffle(rows)
    if limit is not None:
        rows = rows[:limit]
    return rows


def held_out(rows: list[dict], holdout: Mapping, text_columns: list[str], split: str = "") -> list[dict]:
    """The rows of one part of a file split in two by ``holdout`` (share, seed, part, whole_texts, group_by):
    ``held`` is a share of the rows drawn by the seed, ``rest`` every other row. Two splits of one
    file, one ``held`` and one ``rest`` with the same settings, never share a row.

    With ``whole_texts``, only rows none of whose texts (``text_columns``: a pair task's two) another
    row's text contains are drawn (SST-2's whole sentences, whose phrases are rows of their own), and
    ``rest`` also leaves out every row with a text inside a held one: no part of a held-out text is
    trained on. With ``group_by`` (a column or several), rows that share a value in those columns (the
    same sentence, the same id) are drawn together: they all land on one side."""
    if holdout.get("group_by"):
        held = _group_draw(rows, holdout["group_by"], holdout["share"], holdout.get("seed", 0), split)
        keep = holdout["part"] == "held"
        return [row for row, is_held in zip(rows, held) if is_held == keep]
    if not holdout.get("whole_texts"):
        rng = random.Random(f"holdout:{holdout['seed']}")
        held = [rng.random() < holdout["share"] for _ in rows]
        keep = holdout["part"] == "held"
        return [row for row, is_held in zip(rows, held) if is_held == keep]
    texts = tuple(tuple(" ".join(str(row.get(column, "")).split()) for column in text_columns) for row in rows)
    held, inside = _whole_text_draw(texts, holdout["share"], holdout["seed"])
    if holdout["part"] == "held":
        return [row for row, is_held in zip(rows, held) if is_held]
    return [
        row
        for row, is_held, row_texts in zip(rows, held, texts)
        if not is_held and not any(text in inside for text in row_texts)
    ]


def _group_draw(rows: list[dict], group_by, share: float, seed: int, split: str) -> list[bool]:
    """Held mask where rows sharing a value in any ``group_by`` column are one group (drawn as one)."""
    columns = [group_by] if isinstance(group_by, str) else list(group_by)
    parent: dict = {}

    def root(key):
        while parent.setdefault(key, key) != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    keys = []
    for number, row in enumerate(rows, start=1):
        missing = [c for c in columns if c not in row]
        if missing:
            raise DataError(f"split '{split}': holdout.group_by names column(s) {missing} that row {number} lacks")
        values = [("value", str(row[c]).strip()) for c in columns]
        for other in values[1:]:
            parent[root(other)] = root(values[0])
        keys.append(values[0])
    groups = [root(key) for key in keys]
    rng = random.Random(f"holdout:{seed}")
    drawn: dict = {}
    for group in groups:  # in order of first appearance: the same file and seed always hold out the same groups
        if group not in drawn:
            drawn[group] = rng.random() < share
    return [drawn[group] for group in groups]


def _word_spans(text: str, *, strict: bool) -> set[str]:
    """Every run of whole words in ``text`` (without the text itself when ``strict``)."""
    words = text.split()
    n = len(words)
    return {" ".join(words[i:j]) for i in range(n) for j in range(i + 1, n + 1) if not (strict and j - i == n)}


@functools.lru_cache(maxsize=4)  # one file is read by several splits (train, selection, a distillation split)
def _whole_text_draw(texts: tuple[tuple[str, ...], ...], share: float, seed: int) -> tuple[list[bool], frozenset[str]]:
    """(held mask, every text inside a held one) for a holdout by whole texts; ``texts``: each row's texts."""
    inner = set()
    for text in {text for row in texts for text in row}:
        inner |= _word_spans(text, strict=True)
    rng = random.Random(f"holdout:{seed}")
    held = [all(text not in inner for text in row) and rng.random() < share for row in texts]
    inside = set()
    for row, is_held in zip(texts, held):
        if is_held:
            for text in row:
                inside |= _word_spans(text, strict=False)
    return held, frozenset(inside)


def file_format(path: Path, fmt: str, split: str) -> str:
    """The format of a data file: ``fmt``, or from its extension when ``auto``."""
    if fmt != "auto":
        return fmt
    found = _FORMATS.get(path.suffix.lower())
    if found is None:
        raise DataError(
            f"split '{split}': cannot tell the format of {path.name} from its extension; "
            "set format: tsv, csv, jsonl or text"
        )
    return found


def read_file(path: Path, fmt: str, columns: list[str], split: str, *, max_lines: int | None = None) -> list[dict]:
    """Rows of a local data file, checked to have ``columns``.

    ``max_lines`` reads only the file's first lines (validation's cheap look at the
    data). A UTF-8 byte-order mark (Excel and GLUE's MRPC files have one) is dropped.
    """
    if not path.is_file():
        raise DataError(f"split '{split}': {not_a_data_file(path)}")
    fmt = file_format(path, fmt, split)
    text = _read_text(path, split, max_lines)
    if fmt == "text":  # one row per line, under the task's text column (WikiText and the like)
        if len(columns) != 1:
            raise DataError(
                f"split '{split}': {path} is plain text (one column), but the task reads "
                f"{', '.join(repr(c) for c in columns)}; use a TSV, CSV or JSONL file"
            )
        return [{columns[0]: line} for line in text.splitlines()]
    if fmt == "jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise DataError(f"split '{split}': {path}:{number}: not a JSON object: {exc}") from None
            if not isinstance(row, dict):
                raise DataError(f"split '{split}': {path}:{number}: expected a JSON object per line")
            _check_columns(row, columns, path, number, split)
            rows.append(row)
        return rows
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    reader = csv.DictReader(
        text.splitlines(),
        delimiter="\t" if fmt == "tsv" else ",",
        quoting=csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL,
    )
    header = reader.fieldnames or []
    missing = [c for c in columns if c not in header]
    if missing:
        raise MissingColumns(split, path, missing, header)
    rows = []
    for number, row in enumerate(reader, start=2):
        if None in row or any(row.get(c) is None for c in columns):
            raise DataError(
                f"split '{split}': {path}:{number}: the row has a different number of fields than the header"
            )
        rows.append(row)
    return rows


def not_a_data_file(path: Path) -> str:
    """What is at ``path`` instead of a readable regular file (it is never opened if it is not one)."""
    import stat

    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return f"no such data file {path}"
    except OSError as exc:
        return f"{path} cannot be looked at ({exc.strerror}); check the path and its permissions"
    if stat.S_ISDIR(mode):
        return f"{path} is a folder, not a data file; give the path of the file inside it"
    if stat.S_ISFIFO(mode):
        return f"{path} is a named pipe (FIFO), not a regular file; it was not read: give a data file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return f"{path} is a device, not a regular file; it was not read: give a data file"
    if stat.S_ISSOCK(mode):
        return f"{path} is a socket, not a regular file; it was not read: give a data file"
    if not os.access(path, os.R_OK):
        return f"{path} cannot be read (permission denied); give this user read access to it"
    return f"{path} is not a regular file; give a data file"


def _read_text(path: Path, split: str, max_lines: int | None) -> str:
    if not os.access(path, os.R_OK):
        raise DataError(f"split '{split}': {not_a_data_file(path)}")
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            if max_lines is None:
                text = handle.read()
            else:
                text = "".join(line for _, line in zip(range(max_lines), handle))
    except UnicodeDecodeError:
        number = _first_undecodable_line(path)
        raise DataError(
            f"split '{split}': {path}:{number}: this line is not UTF-8 text; save the file as UTF-8"
        ) from None
    if "\x00" in text:
        number = text.count("\n", 0, text.index("\x00")) + 1
        raise DataError(
            f"split '{split}': {path}:{number}: this line holds a NUL byte, which no text file has; "
            "is this the right file (or a corrupted one)?"
        )
    return text


def _first_undecodable_line(path: Path) -> int:
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError:
                return number
    return 1


class MissingColumns(DataError):
    """A data file's header lacks columns the task reads."""

    def __init__(self, split: str, path: Path, missing: list[str], header: list[str]):
        self.split, self.path, self.missing, self.header = split, path, missing, header
        super().__init__(
            f"split '{split}': {path} has no column {', '.join(repr(m) for m in missing)} "
            f"(its header: {', '.join(header) or 'empty'}); set task.text_column / task.label_column"
        )


def _check_columns(row: dict, columns: list[str], path: Path, number: int, split: str) -> None:
    missing = [c for c in columns if c not in row]
    if missing:
        raise DataError(
            f"split '{split}': {path}:{number}: no key {', '.join(repr(m) for m in missing)} "
            f"(it has: {', '.join(row)}); set task.text_column / task.label_column"
        )


def read_hf_dataset(spec: Mapping, columns: list[str], split: str) -> list[dict]:
    try:
        import datasets  # optional
    except ImportError:
        raise DataError(
            f"split '{split}' names the Hugging Face dataset '{spec['dataset']}', but the `datasets` "
            "package is not installed (pip install datasets), or give a local file with `path:`"
        ) from None
    try:
        kwargs = {"data_files": spec["data_files"]} if spec.get("data_files") else {}
        if spec["dataset"] == "csv" and str(spec.get("data_files", "")).endswith(".tsv"):
            kwargs["delimiter"] = "\t"
        ds = datasets.load_dataset(spec["dataset"], spec.get("config"), split=spec["split"], **kwargs)
    except Exception as exc:  # noqa: BLE001 - network, missing config, unknown split ...
        raise DataError(
            f"split '{split}': cannot load dataset '{spec['dataset']}' ({spec.get('config')}, "
            f"split {spec['split']}): {type(exc).__name__}: {exc}"
        ) from None
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise DataError(
            f"split '{split}': dataset '{spec['dataset']}' has no column {', '.join(missing)} "
            f"(it has: {', '.join(ds.column_names)})"
        )
    return [dict(row) for row in ds]
