"""Tasks: what the model is trained and evaluated to do, over the recipe's data.

A ``Task`` turns data splits into tokenized batches and computes the task's metric.
Stages receive it as ``ctx.task``; its public methods are part of the plugin API.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Mapping

import torch
from torch.utils.data import DataLoader, Sampler

from compose.data import read_split
from compose.errors import DataError
from compose.task_kinds import TASK_METRICS, columns, describe_unknown_label, first_unknown_label, label_rule


@dataclass(frozen=True)
class MetricInfo:
    name: str
    higher_is_better: bool = True


METRICS = {
    "accuracy": MetricInfo("accuracy"),
    "f1": MetricInfo("f1"),
    "matthews": MetricInfo("matthews"),
    "perplexity": MetricInfo("perplexity", higher_is_better=False),
    "next_token_accuracy": MetricInfo("next_token_accuracy"),
    "exact_match": MetricInfo("exact_match"),
}


class Task(abc.ABC):
    """Base class: a task over named data splits. See ``SequenceClassificationTask``."""

    kind: str = ""
    #: The metrics this task computes; the first is its default (``task.metric: null``).
    metric_names: tuple[str, ...] = ()

    def __init__(self, spec: Mapping[str, Any], seed: int):
        self.spec = spec
        self.seed = seed
        self._rows: dict[str, list[dict]] = {}

    # -- data --------------------------------------------------------------

    @property
    def splits(self) -> list[str]:
        return list(self.spec["data"])

    def columns(self) -> list[str]:
        """The columns the task reads from every row (``compose.task_kinds.column_settings``)."""
        return columns(self.spec)

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
        """Raise DataError for rows the task cannot use (a label the task does not know)."""
        rule = label_rule(self.spec)
        found = first_unknown_label(rows, rule) if rule is not None else None
        if found is not None:
            number, value = found
            raise DataError(f"split '{split}': row {number} {describe_unknown_label(rule, value)}")

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
        rows = self.examples(split, tokenizer)
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

    def examples(self, split: str, tokenizer) -> list:
        """The items ``batches`` draws from (default: the split's rows; causal-lm: token blocks)."""
        return self.rows(split)

    def texts(self, split: str) -> list[str]:
        """All text of a split a tokenizer should learn from (sources, and targets where there are)."""
        return [str(r[self.spec["text_column"]]) for r in self.rows(split)]

    @abc.abstractmethod
    def collate(self, rows: list[dict], tokenizer, with_labels: bool = True) -> dict:
        """Implemented by each task."""

    def predict(self, model, inputs: dict, tokenizer):
        """What evaluation runs on a batch's inputs (no labels); ``update_metric`` gets it.
        Default: the model's forward pass. seq2seq generates."""
        return model(**inputs)

    # -- metric ------------------------------------------------------------

    @property
    def metric_name(self) -> str:
        """``task.metric``, or the task's own metric when that is null."""
        return self.spec.get("metric") or self.metric_names[0]

    @property
    def metric(self) -> MetricInfo:
        return METRICS[self.metric_name]

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
    """Single-text or text-pair classification over the classes in ``task.labels``.

    ``task.labels`` is a list of the label values as the data holds them (``[0, 1]``) or
    a mapping from each value to its class name (``{0: negative, 1: positive}``); class
    i is the i-th entry. A data row may hold a class's value or its name.
    """

    kind = "sequence-classification"
    metric_names = TASK_METRICS[kind]

    @property
    def labels(self) -> list:
        """The label values as the data holds them, in class order."""
        return list(self.spec["labels"])

    @property
    def label_names(self) -> list[str]:
        """The class names a served model reports (config.id2label): task.labels' names, else its values as text."""
        labels = self.spec["labels"]
        if isinstance(labels, Mapping):
            return [str(name) for name in labels.values()]
        return [str(label) for label in labels]

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def _label_index(self) -> dict:
        # Files give labels as text ("1"); recipes may write them as integers (1). A row may
        # also hold the class name (recipe validation keeps names and values from colliding).
        index = {str(label): i for i, label in enumerate(self.labels)}
        for i, name in enumerate(self.label_names):
            index.setdefault(name, i)
        return index

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
        name = name or self.metric_name
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


class CausalLMTask(Task):
    """Next-token prediction over running text, in blocks of ``block_size`` tokens.

    Each non-blank row is tokenized and followed by the tokenizer's end-of-text
    token; the stream is cut into blocks (the last, partial block is dropped, so
    every example has the same length). Metrics: perplexity (exp of the mean
    next-token loss over every predicted token) and next_token_accuracy.
    """

    kind = "causal-lm"
    metric_names = TASK_METRICS[kind]

    def __init__(self, spec, seed):
        super().__init__(spec, seed)
        self._blocks: dict[tuple, list] = {}

    def examples(self, split: str, tokenizer) -> list:
        key = (split, getattr(tokenizer, "name_or_path", ""), len(tokenizer))
        if key not in self._blocks:
            size = self.spec["block_size"]
            eos = tokenizer.eos_token_id
            stream: list[int] = []
            lines = [t for t in self.texts(split) if t.strip()]
            for ids in tokenizer(lines, add_special_tokens=False)["input_ids"] if lines else []:
                stream.extend(ids)
                if eos is not None:
                    stream.append(eos)
            blocks = [stream[i : i + size] for i in range(0, len(stream) - size + 1, size)]
            if not blocks:
                raise DataError(
                    f"split '{split}' has {len(stream)} tokens, fewer than one block of task.block_size="
                    f"{size}; lower task.block_size or give more text"
                )
            self._blocks[key] = blocks
        return self._blocks[key]

    def collate(self, rows: list, tokenizer, with_labels: bool = True) -> dict:
        input_ids = torch.tensor(rows, dtype=torch.long)
        batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
        if with_labels:
            batch["labels"] = input_ids.clone()
        return batch

    def new_metric_state(self) -> dict:
        return {"nll": 0.0, "tokens": 0, "correct": 0}

    def update_metric(self, state: dict, outputs, batch: dict) -> None:
        logits = (outputs.logits if hasattr(outputs, "logits") else outputs)[:, :-1].float()
        targets = batch["labels"][:, 1:]
        keep = targets != -100
        losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets.clamp(min=0), reduction="none")
        state["nll"] += losses[keep].sum().item()
        state["tokens"] += int(keep.sum())
        state["correct"] += int(((logits.argmax(-1) == targets) & keep).sum())

    def compute_metric(self, state: dict, name: str | None = None) -> float:
        name = name or self.metric_name
        if not state["tokens"]:
            return float("nan")
        if name == "perplexity":
            return math.exp(min(state["nll"] / state["tokens"], 700.0))
        if name == "next_token_accuracy":
            return state["correct"] / state["tokens"]
        raise ValueError(f"unknown metric {name!r} for {self.kind}")


@dataclass(frozen=True)
class Generated:
    """What a seq2seq model generated for a batch (token ids), and the tokenizer to read it."""

    sequences: torch.Tensor
    tokenizer: Any


class Seq2SeqTask(Task):
    """Text in, text out. The target is ``targets[label]`` (a classification dataset as
    text-to-text, e.g. SST-2 -> "positive"/"negative") or the text of ``target_column``.
    Evaluation generates greedily; exact_match compares the stripped text."""

    kind = "seq2seq"
    metric_names = TASK_METRICS[kind]

    def _target_source(self) -> str:
        return self.spec["target_column"] or self.spec["label_column"]

    def target(self, row: dict) -> str:
        value = row[self._target_source()]
        if self.spec["targets"] is None:
            return str(value).strip()
        return self.spec["targets"][str(value).strip()]

    def examples(self, split: str, tokenizer) -> list:
        targets = self.spec["targets"]
        if targets:
            limit = self.spec["max_target_length"]
            lengths = {text: len(tokenizer(text)["input_ids"]) for text in targets.values()}
            long = {text: n for text, n in lengths.items() if n > limit}
            if long:
                raise DataError(
                    f"task.max_target_length is {limit} tokens, but the target "
                    + ", ".join(f"'{t}' takes {n}" for t, n in long.items())
                    + f" (with the end-of-sequence token); set task.max_target_length to {max(long.values())} or more"
                )
        return self.rows(split)

    def texts(self, split: str) -> list[str]:
        rows = self.rows(split)
        return [self.spec["source_prefix"] + str(r[self.spec["text_column"]]) for r in rows] + [
            self.target(r) for r in rows
        ]

    def collate(self, rows: list[dict], tokenizer, with_labels: bool = True) -> dict:
        sources = [self.spec["source_prefix"] + str(r[self.spec["text_column"]]) for r in rows]
        batch = dict(tokenizer(sources, truncation=True, max_length=self.spec["max_length"], padding=True,
                               return_tensors="pt"))  # fmt: skip
        batch.pop("token_type_ids", None)
        if with_labels:
            targets = tokenizer([self.target(r) for r in rows], truncation=True,
                                max_length=self.spec["max_target_length"], padding=True, return_tensors="pt")  # fmt: skip
            labels = targets["input_ids"].masked_fill(targets["attention_mask"] == 0, -100)
            batch["labels"] = labels
        return batch

    def predict(self, model, inputs: dict, tokenizer) -> "Generated":
        sequences = model.generate(
            **inputs,
            max_new_tokens=self.spec["max_target_length"],
            do_sample=False,
            num_beams=1,
            pad_token_id=tokenizer.pad_token_id,
        )
        return Generated(sequences, tokenizer)

    def new_metric_state(self) -> dict:
        return {"correct": 0, "total": 0}

    def update_metric(self, state: dict, outputs: "Generated", batch: dict) -> None:
        tokenizer = outputs.tokenizer
        predicted = tokenizer.batch_decode(outputs.sequences, skip_special_tokens=True)
        labels = batch["labels"].masked_fill(batch["labels"] == -100, tokenizer.pad_token_id)
        expected = tokenizer.batch_decode(labels, skip_special_tokens=True)
        for guess, truth in zip(predicted, expected):
            state["correct"] += int(guess.strip() == truth.strip())
            state["total"] += 1

    def compute_metric(self, state: dict, name: str | None = None) -> float:
        name = name or self.metric_name
        if name != "exact_match":
            raise ValueError(f"unknown metric {name!r} for {self.kind}")
        return state["correct"] / state["total"] if state["total"] else float("nan")


TASKS = {task.kind: task for task in (SequenceClassificationTask, CausalLMTask, Seq2SeqTask)}


def build_task(spec: Mapping[str, Any], seed: int) -> Task:
    return TASKS[spec["kind"]](spec, seed)
