"""What each task kind reads from its data and which metrics it has, without importing torch.

One place for this knowledge: the tasks (``compose.tasks``) read their columns and
label rules from here, and so does validation, which checks the data files before
anything heavy is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

#: The metrics of each task kind; the first is the kind's default (``task.metric: null``).
TASK_METRICS = {
    "sequence-classification": ("accuracy", "f1", "matthews"),
    "causal-lm": ("perplexity", "next_token_accuracy"),
    "seq2seq": ("exact_match",),
}


def column_settings(task: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(setting, column) for every column the task reads, in the order the task reads them."""
    kind = task["kind"]
    if kind == "causal-lm":
        return [("text_column", task["text_column"])]
    if kind == "seq2seq":
        target = "target_column" if task.get("target_column") else "label_column"
        return [("text_column", task["text_column"]), (target, task[target])]
    settings = [("text_column", task["text_column"])]
    if task.get("text_pair_column"):
        settings.append(("text_pair_column", task["text_pair_column"]))
    settings.append(("label_column", task["label_column"]))
    return settings


def columns(task: Mapping[str, Any]) -> list[str]:
    return [column for _, column in column_settings(task)]


@dataclass(frozen=True)
class LabelRule:
    """The values a label column may hold (compared as stripped text), and the fix to name."""

    setting: str  # the task setting that lists the allowed values: "labels" or "targets"
    column: str
    known: tuple[str, ...]
    fix: str


def label_rule(task: Mapping[str, Any]) -> LabelRule | None:
    """What the task's label column must hold, or None when any value will do."""
    kind = task["kind"]
    if kind == "sequence-classification":
        labels = task["labels"]
        known = [str(v).strip() for v in labels]
        if isinstance(labels, Mapping):  # {value: name}: a row may hold the value or the name
            known += [str(name).strip() for name in labels.values()]
        return LabelRule("labels", task["label_column"], tuple(known),
                         "fix the data or add the label to task.labels")  # fmt: skip
    if kind == "seq2seq" and task.get("targets") is not None:
        return LabelRule("targets", task["label_column"], tuple(str(v).strip() for v in task["targets"]),
                         "fix the data or add the value to task.targets")  # fmt: skip
    return None


def first_unknown_label(rows, rule: LabelRule) -> tuple[int, Any] | None:
    """(row number, value) of the first row whose label ``rule`` does not allow, or None."""
    known = set(rule.known)
    for number, row in enumerate(rows, start=1):
        if str(row[rule.column]).strip() not in known:
            return number, row[rule.column]
    return None


def describe_unknown_label(rule: LabelRule, value) -> str:
    """"has label 'x', which is not in task.labels (0, 1); fix ..." (after "row N")."""
    allowed = ", ".join(rule.known)
    return f"has label {value!r}, which is not in task.{rule.setting} ({allowed}); {rule.fix}"
