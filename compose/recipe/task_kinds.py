"""What each task kind reads from its data and which metrics it has, without importing torch.

One place for this knowledge: the tasks (``compose.tasks``) read their columns and
label rules from here, and so does validation, which checks the data files before
anything heavy is loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MetricInfo:
    name: str
    higher_is_better: bool = True
    description: str = ""


#: Every metric a task can report. ``f1`` is GLUE's: the F1 of the positive class (the
#: second class in task.labels) of a binary task, as MRPC and QQP report it.
METRICS = {
    "accuracy": MetricInfo("accuracy", description="share of examples whose predicted class is the label"),
    "f1": MetricInfo(
        "f1", description="binary tasks: F1 of the positive class (the second in task.labels), as GLUE reports it"
    ),
    "f1_macro": MetricInfo("f1_macro", description="the mean of every class's F1"),
    "matthews": MetricInfo("matthews", description="Matthews correlation (GLUE's CoLA metric)"),
    "perplexity": MetricInfo(
        "perplexity", higher_is_better=False, description="exp of the mean next-token loss over every predicted token"
    ),
    "next_token_accuracy": MetricInfo("next_token_accuracy", description="share of tokens predicted exactly"),
    "exact_match": MetricInfo("exact_match", description="share of generated texts equal to the target (stripped)"),
}

#: The metrics of each task kind; the first is the kind's default (``task.metric: null``).
TASK_METRICS = {
    "sequence-classification": ("accuracy", "f1", "f1_macro", "matthews"),
    "causal-lm": ("perplexity", "next_token_accuracy"),
    "seq2seq": ("exact_match",),
}


#: Metrics that need exactly two classes.
BINARY_ONLY_METRICS = ("f1",)


def metric_names(task: Mapping[str, Any]) -> tuple[str, ...]:
    """The metrics a task computes: its kind's, less the binary-only ones for 3+ classes."""
    names = TASK_METRICS[task["kind"]]
    labels = task.get("labels")
    if task["kind"] == "sequence-classification" and labels is not None and len(labels) != 2:
        names = tuple(n for n in names if n not in BINARY_ONLY_METRICS)
    return names


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
        return LabelRule("labels", task["label_column"], tuple(known), "fix the data or add the label to task.labels")
    if kind == "seq2seq" and task.get("targets") is not None:
        return LabelRule(
            "targets",
            task["label_column"],
            tuple(str(v).strip() for v in task["targets"]),
            "fix the data or add the value to task.targets",
        )
    return None


def first_unknown_label(rows, rule: LabelRule) -> tuple[int, Any] | None:
    """(row number, value) of the first row whose label ``rule`` does not allow, or None."""
    known = set(rule.known)
    for number, row in enumerate(rows, start=1):
        if str(row[rule.column]).strip() not in known:
            return number, row[rule.column]
    return None


def describe_unknown_label(rule: LabelRule, value) -> str:
    """ "has label 'x', which is not in task.labels (0, 1); fix ..." (after "row N")."""
    allowed = ", ".join(rule.known)
    return f"has label {value!r}, which is not in task.{rule.setting} ({allowed}); {rule.fix}"
