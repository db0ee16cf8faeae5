"""Tasks: what the model is trained and evaluated to do, over the recipe's data.

A ``Task`` turns data splits into tokenized batches and computes the task's metric.
Stages receive it as ``ctx.task``; its public methods are part of the plugin API.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from functools import partial
from typing import Any, Mapping

import torch
from torch.utils.data import DataLoader, Sampler

from compose.data import read_split
from compose.errors import DataError


@dataclass(frozen=True)
class MetricInfo:
    name: str
    higher_is_better: bool = True


METRICS = {
    "accuracy": MetricInfo("accuracy"),
    "f1": MetricInfo("f1"),
    "matthews": MetricInfo("matthews"),
}


class Task(abc.ABC):
    """Base class: a task over named data splits. See ``SequenceClassificationTask``."""

    kind: str = ""

    def __init__(self, spec: Mapping[str, Any], seed: int):
        self.spec = spec
        self.seed = seed
        self._rows: dict[str, list[dict]] = {}

    # -- data --------------------------------------------------------------

    @property
    def splits(self) -> list[str]:
        return list(self.spec["data"])

    @abc.abstractmethod
    def columns(self) -> list[str]:
        """Implemented by each task."""

    def rows(self, split: str) -> list[dict]:
        """The raw rows of a split (read once, then cached)."""
        if split not in self.spec["data"]:
            raise DataError(f"no split '{split}' in task.data (it has: {', '.join(self.splits)})")
        if split not in self._rows:
            rows = read_split(split, self.spec["data"][split], self.columns(), self.seed)
            self._check_rows(split, rows)
            self._rows[split] = rows
        return self._rows[split]

    def _check_rows(self, split: str, rows: list[dict]) -> None:
        """Raise DataError for rows the task cannot use."""

    def batches(
        self,
        split: str,
        tokenizer,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int | None = None,
        limit: int | None = None,
        with_labels: bool = True,
        shard: tuple[int, int] | None = None,
    ) -> DataLoader:
        """A DataLoader of tokenized, padded batches of a split: dicts of tensors for ``model(**batch)``.

        With ``shuffle`` the order is drawn from ``seed`` (default: the recipe's),
        anew each epoch. ``shard=(rank, world_size)`` keeps every world_size-th
        row from ``rank`` on (evaluation across processes).
        """
        rows = self.rows(split)
        if limit is not None:
            rows = rows[:limit]
        if shard is not None:
            rows = rows[shard[0] :: shard[1]]
        sampler = EpochShuffle(len(rows), self.seed if seed is None else seed) if shuffle else None
        return DataLoader(
            rows,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=partial(self.collate, tokenizer=tokenizer, with_labels=with_labels),
        )

    @abc.abstractmethod
    def collate(self, rows: list[dict], tokenizer, with_labels: bool = True) -> dict:
        """Implemented by each task."""

    # -- metric ------------------------------------------------------------

    @property
    def metric(self) -> MetricInfo:
        return METRICS[self.spec.get("metric", "accuracy")]

    @abc.abstractmethod
    def new_metric_state(self) -> dict:
        """Implemented by each task."""

    def merge_metric_states(self, states: list[dict]) -> dict:
        """One state from several processes' states (default: concatenate lists, add numbers)."""
        merged = self.new_metric_state()
        for state in states:
            for key, value in state.items():
                merged[key] = merged[key] + value
        return merged

    @abc.abstractmethod
    def update_metric(self, state: dict, outputs, batch: dict) -> None:
        """Implemented by each task."""

    @abc.abstractmethod
    def compute_metric(self, state: dict, name: str | None = None) -> float:
        """Implemented by each task."""


class EpochShuffle(Sampler):
    """A new order on every pass, drawn from (seed, pass number) alone.

    So a training run resumed at pass ``epoch`` (set the attribute before
    iterating) sees exactly the order an uninterrupted run saw.
    """

    def __init__(self, size: int, seed: int):
        self.size = size
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        self.epoch += 1
        return iter(torch.randperm(self.size, generator=generator).tolist())


class SequenceClassificationTask(Task):
    """Single-text or text-pair classification; labels are the values in ``task.labels``."""

    kind = "sequence-classification"

    @property
    def labels(self) -> list:
        return list(self.spec["labels"])

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def columns(self) -> list[str]:
        cols = [self.spec["text_column"], self.spec["label_column"]]
        if self.spec.get("text_pair_column"):
            cols.insert(1, self.spec["text_pair_column"])
        return cols

    def _label_index(self) -> dict:
        # Files give labels as text ("1"); recipes may write them as integers (1).
        return {str(label): i for i, label in enumerate(self.labels)}

    def _check_rows(self, split: str, rows: list[dict]) -> None:
        index = self._label_index()
        column = self.spec["label_column"]
        for number, row in enumerate(rows, start=1):
            if str(row[column]).strip() not in index:
                raise DataError(
                    f"split '{split}': row {number} has label {row[column]!r}, which is not in "
                    f"task.labels {self.labels}; fix the data or add the label to task.labels"
                )

    def collate(self, rows: list[dict], tokenizer, with_labels: bool = True) -> dict:
        texts = [str(r[self.spec["text_column"]]) for r in rows]
        pair_column = self.spec.get("text_pair_column")
        pairs = [str(r[pair_column]) for r in rows] if pair_column else None
        batch = dict(
            tokenizer(
                texts,
                pairs,
                truncation=True,
                max_length=self.spec["max_length"],
                padding=True,
                return_tensors="pt",
            )
        )
        if with_labels:
            index = self._label_index()
            batch["labels"] = torch.tensor([index[str(r[self.spec["label_column"]]).strip()] for r in rows])
        return batch

    def new_metric_state(self) -> dict:
        return {"predictions": [], "labels": []}

    def update_metric(self, state: dict, outputs, batch: dict) -> None:
        logits = outputs.logits if hasattr(outputs, "logits") else outputs
        state["predictions"].append(logits.argmax(dim=-1).cpu())
        state["labels"].append(batch["labels"].cpu())

    def compute_metric(self, state: dict, name: str | None = None) -> float:
        name = name or self.spec.get("metric", "accuracy")
        if not state["predictions"]:
            return float("nan")
        predictions = torch.cat(state["predictions"])
        labels = torch.cat(state["labels"])
        if name == "accuracy":
            return (predictions == labels).float().mean().item()
        if name == "f1":
            return _macro_f1(predictions, labels, self.num_labels)
        if name == "matthews":
            return _matthews(predictions, labels, self.num_labels)
        raise ValueError(f"unknown metric {name!r} for {self.kind}")


def _confusion(predictions, labels, n):
    return torch.bincount(labels * n + predictions, minlength=n * n).reshape(n, n).double()


def _macro_f1(predictions, labels, n) -> float:
    c = _confusion(predictions, labels, n)
    tp = c.diag()
    precision = tp / c.sum(0).clamp(min=1)
    recall = tp / c.sum(1).clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    return f1.mean().item()


def _matthews(predictions, labels, n) -> float:
    c = _confusion(predictions, labels, n)
    t = c.sum(1)
    p = c.sum(0)
    total = c.sum()
    correct = c.diag().sum()
    numerator = correct * total - (t * p).sum()
    denominator = ((total**2 - (p * p).sum()) * (total**2 - (t * t).sum())).sqrt()
    return (numerator / denominator).item() if denominator > 0 else 0.0


TASKS = {SequenceClassificationTask.kind: SequenceClassificationTask}


def build_task(spec: Mapping[str, Any], seed: int) -> Task:
    return TASKS[spec["kind"]](spec, seed)
