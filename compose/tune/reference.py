"""``recipe tune --compare-with RUN``: the hand-written run the winner is compared with must be of the same task.

A comparison of retained, size and speed means something only where both runs measured
the same task on the same rows with the same metric. ``mismatches`` compares the reference
run's resolved recipe (``recipe.resolved.yaml`` beside its report) with the tune recipe:
the task's kind, columns and labels, the metric, and the evaluation split, by its source's
content (file bytes, limit, order, holdout), not by its name.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from compose.evaluation.report import RESOLVED_RECIPE
from compose.run.fingerprint import data_digest

#: The task settings both runs must share.
TASK_KEYS = ("kind", "text_column", "text_pair_column", "label_column", "labels", "metric", "targets", "block_size")


def _split_source(data: dict) -> dict:
    split = data["evaluate"]["split"]
    return data_digest({"data": {split: data["task"]["data"][split]}})[split]


def mismatches(reference_report: Path, tune_data: dict) -> list[str]:
    """What differs between the reference run and the tune recipe (empty: they measure the same thing)."""
    folder = reference_report.parent if reference_report.is_file() else reference_report
    resolved = folder / RESOLVED_RECIPE
    try:
        theirs = yaml.safe_load(resolved.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return [f"{resolved} cannot be read, so its task cannot be checked (give a run folder of recipe apply)"]
    found = []
    for key in TASK_KEYS:
        mine, other = tune_data["task"].get(key), theirs["task"].get(key)
        if mine != other:
            found.append(f"task.{key}: {other!r} there, {mine!r} here")
    if _split_source(theirs) != _split_source(tune_data):
        found.append(
            f"the evaluation split ('{theirs['evaluate']['split']}' there, '{tune_data['evaluate']['split']}' here) "
            "does not hold the same rows (its file's bytes, limit, order or holdout differ)"
        )
    return found
