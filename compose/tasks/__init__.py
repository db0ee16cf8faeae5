"""Tasks: what the model is trained and evaluated to do, over the recipe's data.

A ``Task`` turns data splits into tokenized batches and keeps per-example records of an
evaluation, from which its metrics, and their confidence intervals against the baseline
(compose.evaluation.paired), are computed. One module per task kind.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from compose.recipe.task_kinds import METRICS, MetricInfo
from compose.tasks.base import EpochShuffle, Records, Task
from compose.tasks.causal_lm import CausalLMTask
from compose.tasks.classification import SequenceClassificationTask
from compose.tasks.seq2seq import Generated, Seq2SeqTask

TASKS = {task.kind: task for task in (SequenceClassificationTask, CausalLMTask, Seq2SeqTask)}


def build_task(spec: Mapping[str, Any], seed: int) -> Task:
    return TASKS[spec["kind"]](spec, seed)


__all__ = [
    "METRICS",
    "TASKS",
    "CausalLMTask",
    "EpochShuffle",
    "Generated",
    "MetricInfo",
    "Records",
    "SequenceClassificationTask",
    "Seq2SeqTask",
    "Task",
    "build_task",
]
