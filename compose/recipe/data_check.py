"""Validation that opens the data: files, headers, columns and a sample of labels.

``recipe validate`` (and ``apply``, before any model loads) reads the first lines of
every local data file the task names, so that a missing file, a misspelt column or
a label the task does not know is reported with its fix before anything runs.
Datasets from the Hugging Face hub are not opened here (that needs the network);
they are checked when the run reads them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from compose.errors import DataError, Problem
from compose.recipe.data import MissingColumns, read_file
from compose.recipe.task_kinds import column_settings, describe_unknown_label, first_unknown_label, label_rule
from compose.recipe.validation import SchemaChecker, did_you_mean

#: Lines read from each data file: enough to catch a wrong column or label set, cheaply.
SAMPLE_LINES = 2000


def check_data(data: Mapping, checker: SchemaChecker, sample_lines: int = SAMPLE_LINES) -> list[Problem]:
    """Problems with the task's local data files (``data``: the resolved recipe)."""
    task = data["task"]
    settings = column_settings(task)
    wanted = [column for _, column in settings]
    rule = label_rule(task)
    problems = []
    for split, spec in task["data"].items():
        problems.extend(_holdout_problems(checker, split, spec))
        if "path" not in spec:
            continue
        where = ("task", "data", split, "path")
        try:
            rows = read_file(Path(spec["path"]), spec.get("format", "auto"), wanted, split, max_lines=sample_lines)
        except MissingColumns as exc:
            problems.extend(_column_problems(checker, exc, settings))
            continue
        except DataError as exc:
            fix = "; fix the path (relative paths are read from the recipe's folder)" if "no such" in str(exc) else ""
            problems.append(checker.problem(where, f"{exc}{fix}"))
            continue
        if not rows:
            problems.append(checker.problem(where, f"split '{split}': {spec['path']} has no rows"))
            continue
        group_by = (spec.get("holdout") or {}).get("group_by")
        absent = [c for c in ([group_by] if isinstance(group_by, str) else group_by or []) if c not in rows[0]]
        if absent:
            problems.append(
                checker.problem(
                    ("task", "data", split, "holdout", "group_by"),
                    f"split '{split}': holdout.group_by names column(s) {absent} that {spec['path']} lacks; "
                    f"its columns: {', '.join(rows[0])}",
                )
            )
        found = first_unknown_label(rows, rule) if rule is not None else None
        if found is not None:
            number, value = found
            problems.append(
                checker.problem(
                    ("task", rule.setting),
                    f"split '{split}': {spec['path']}: row {number} {describe_unknown_label(rule, value)}",
                )
            )
    return problems


def _holdout_problems(checker: SchemaChecker, split: str, spec: Mapping) -> list[Problem]:
    holdout = spec.get("holdout") or {}
    if holdout.get("whole_texts") and holdout.get("group_by"):
        return [
            checker.problem(
                ("task", "data", split, "holdout", "group_by"),
                f"split '{split}': a holdout draws by whole_texts or by group_by, not both; remove one",
            )
        ]
    return []


def _column_problems(checker: SchemaChecker, exc: MissingColumns, settings) -> list[Problem]:
    header = exc.header
    listing = ", ".join(f"{setting}: {column}" for setting, column in settings)
    problems = []
    for setting, column in settings:
        if column not in exc.missing:
            continue
        problems.append(
            checker.problem(
                ("task", setting),
                f"split '{exc.split}': {exc.path} has no column '{column}'{did_you_mean(column, header)}; "
                f"its columns: {', '.join(header) or 'none (empty header)'}; the task reads {listing}",
            )
        )
    return problems
