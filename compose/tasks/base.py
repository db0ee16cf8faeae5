"""The base of every task: data splits into tokenized batches, and per-example records
from which the task's metrics (and their bootstrap resamples) are computed.

Stages receive a task as ``ctx.task``; its public methods are part of the plugin API.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from compose.errors import DataError
from compose.recipe.data import read_split
from compose.recipe.task_kinds import (
    METRICS,
    MetricInfo,
    column_settings,
    columns,
    describe_unknown_label,
    first_unknown_label,
    label_rule,
)
from compose.recipe.task_kinds import metric_names as metric_names_of

#: A batch of examples' records: equal-length tensors (first dimension: the example) or
#: lists, by name. ``evaluate`` adds ``ids`` (the example's position in the split).
Records = dict


class Task(abc.ABC):
    """Base class: a task over named data splits. See ``SequenceClassificationTask``."""

    kind: str = ""
    #: What one record is, the unit a bootstrap resamples: "example" or "block" (causal-lm).
    unit: str = "example"

    def __init__(self, spec: Mapping[str, Any], seed: int):
        self.spec = spec
        self.seed = seed
        self._rows: dict[str, list[dict]] = {}
        self._lengths: dict[str, tuple[object, list[int]]] = {}  # split -> (tokenizer, lengths)

    # -- data --------------------------------------------------------------

    @property
    def splits(self) -> list[str]:
        return list(self.spec["data"])

    def columns(self) -> list[str]:
        """The columns the task reads from every row (``compose.recipe.task_kinds.column_settings``)."""
        return columns(self.spec)

    def text_columns(self) -> list[str]:
        """The columns that hold text (a pair task's two): what a holdout by whole texts compares."""
        return [
            column for setting, column in column_settings(self.spec) if setting in ("text_column", "text_pair_column")
        ]

    def carve(self, split: str, share: float, seed: int, purpose: str) -> tuple[str, str]:
        """Split ``split``'s rows in two, drawn by ``seed``: (the rest, the ``share`` held out), as two splits of
        this task named ``SPLIT:fit`` and ``SPLIT:PURPOSE`` (e.g. a training split's early-stopping rows)."""
        import random

        rows = self.rows(split)
        rng = random.Random(f"carve:{purpose}:{seed}")
        held = [rng.random() < share for _ in rows]
        if not any(held) or all(held):  # a tiny split: at least one row on each side
            held = [index == 0 for index in range(len(rows))]
        names = (f"{split}:fit", f"{split}:{purpose}")
        self._rows[names[0]] = [row for row, is_held in zip(rows, held) if not is_held]
        self._rows[names[1]] = [row for row, is_held in zip(rows, held) if is_held]
        return names

    def rows(self, split: str) -> list[dict]:
        """The raw rows of a split (read once, then cached)."""
        if split in self._rows:
            return self._rows[split]
        if split not in self.spec["data"]:
            raise DataError(f"no split '{split}' in task.data (it has: {', '.join(self.splits)})")
        if split not in self._rows:
            rows = read_split(
                split, self.spec["data"][split], self.columns(), self.seed, text_columns=self.text_columns()
            )
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
        group_by_length: bool = False,
    ) -> DataLoader:
        """A DataLoader of tokenized, padded batches of a split: dicts of tensors for ``model(**batch)``.

        With ``shuffle`` the order is drawn from ``seed`` (default: the recipe's),
        anew each epoch. ``shard=(rank, world_size)`` keeps every world_size-th
        row from ``rank`` on (evaluation across processes). ``group_by_length`` (with
        ``shuffle``): batches of examples of similar token length, so that little of a
        batch is padding (``LengthGroupedBatches``); the loader's ``batch_sampler`` then
        holds the pass number (``epoch``) that ``EpochShuffle`` holds otherwise.
        """
        rows = self.examples(split, tokenizer)
        if limit is not None:
            rows = rows[:limit]
        positions = list(range(len(rows)))
        if shard is not None:
            rows, positions = rows[shard[0] :: shard[1]], positions[shard[0] :: shard[1]]
        collate = partial(self.collate, tokenizer=tokenizer, with_labels=with_labels)
        seed = self.seed if seed is None else seed
        lengths = self.example_lengths(split, tokenizer) if shuffle and group_by_length else None
        if lengths is not None:
            grouped = LengthGroupedBatches([lengths[i] for i in positions], batch_size, seed)
            return DataLoader(rows, batch_sampler=grouped, collate_fn=collate)
        sampler = EpochShuffle(len(rows), seed) if shuffle else None
        return DataLoader(rows, batch_size=batch_size, sampler=sampler, collate_fn=collate)

    def example_lengths(self, split: str, tokenizer) -> list[int] | None:
        """Each item's length in tokens as ``collate`` pads it (None: all items are equally
        long, nothing to group). Computed once per split and tokenizer."""
        return None

    def untruncated_lengths(self, split: str, tokenizer) -> list[int] | None:
        """Each row's length in tokens before ``max_length`` cuts it (None: the task does not truncate rows)."""
        return None

    def length_report(self, tokenizer, splits=None) -> dict:
        """{split: ``compose.tasks.lengths.length_stats``} for the splits whose rows ``max_length`` may cut."""
        from compose.tasks.lengths import length_stats

        found = {}
        for split in splits or self.splits:
            try:
                lengths = self.untruncated_lengths(split, tokenizer)
            except DataError:  # a split with a bad row: the stage that reads it fails, naming it
                continue
            if lengths is not None:
                found[split] = length_stats(lengths, self.spec.get("max_length"))
        return found

    def resolve_max_length(self, tokenizer) -> int | None:
        """With ``max_length: auto``: the length chosen from the training split (``lengths.auto_max_length``),
        kept in this task's own copy of its spec; the length in force otherwise."""
        from compose.tasks.lengths import auto_max_length, tokenizer_limit

        if self.spec.get("max_length") != "auto":
            return self.spec.get("max_length")
        split = "train" if "train" in self.splits else self.splits[0]
        lengths = self.untruncated_lengths(split, tokenizer) or []
        self.spec = {**self.spec, "max_length": auto_max_length(lengths, tokenizer_limit(tokenizer))}
        self._lengths.clear()  # lengths measured under another max_length
        return self.spec["max_length"]

    def tokens_per_pass(self, split: str, tokenizer) -> int:
        """The tokens one pass over ``split`` trains on: its items as ``collate`` tokenizes them, padding not
        counted (a ``tokens`` budget's unit)."""
        lengths = self.example_lengths(split, tokenizer)
        if lengths is not None:
            return int(sum(lengths))
        return int(sum(len(item) for item in self.examples(split, tokenizer)))  # equally long items (token blocks)

    def _cached_lengths(self, split: str, tokenizer, measure) -> list[int]:
        """``measure(rows) -> lengths`` once per split and tokenizer."""
        cached = self._lengths.get(split)
        if cached is None or cached[0] is not tokenizer:
            cached = self._lengths[split] = (tokenizer, list(measure(self.rows(split))))
        return cached[1]

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
        """What evaluation runs on a batch's inputs (no labels); ``example_records`` gets it.
        Default: the model's forward pass. seq2seq generates."""
        return model(**inputs)

    # -- metric ------------------------------------------------------------

    @property
    def metric_names(self) -> tuple[str, ...]:
        """The metrics this task computes; the first is its default (``task.metric: null``)."""
        return metric_names_of(self.spec)

    @property
    def metric_name(self) -> str:
        """``task.metric``, or the task's own metric when that is null."""
        return self.spec.get("metric") or self.metric_names[0]

    @property
    def metric(self) -> MetricInfo:
        return METRICS[self.metric_name]

    @abc.abstractmethod
    def example_records(
        self, outputs, batch: dict, reference: Records | None = None, keep_reference: int = 0
    ) -> Records:
        """What evaluation keeps of one batch: one record per example (tensors on the CPU).

        ``reference``: the baseline's records of the same examples, for what can only be
        compared while this model's full outputs exist (a language model's KL).
        ``keep_reference`` > 0: this is the baseline; keep what later models are compared
        against (a language model keeps its ``keep_reference`` most likely next tokens).
        """

    @abc.abstractmethod
    def metric_from_records(
        self, records: Records, name: str | None = None, index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The metric over all records (a scalar tensor), or over each row of ``index``
        (``[replicates, n]`` record positions, a bootstrap's resamples): shape ``[replicates]``."""

    def agreement(self, reference: Records, records: Records) -> float | None:
        """How often this model predicts what the baseline predicted (None: not defined)."""
        return None

    def kl(self, reference: Records, records: Records) -> float | None:
        """Mean KL(baseline || this model) over predictions (None: not defined)."""
        return None


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
        generator = pass_generator(self.seed, self.epoch)
        self.epoch += 1
        return iter(torch.randperm(self.size, generator=generator).tolist())


def pass_generator(seed: int, epoch: int) -> torch.Generator:
    """The random generator of one pass over the data: drawn from (seed, pass number) alone."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


class LengthGroupedBatches(Sampler):
    """Batches of similar length in a new order on every pass, drawn from (seed, pass number) alone.

    Each pass shuffles the examples (as ``EpochShuffle``), cuts the order into windows of
    ``WINDOW_BATCHES`` batches, sorts each window by length (longest first; ties keep
    the shuffled order), cuts it into batches, and shuffles the batches of the whole
    pass. Every example is in exactly one batch per pass; only the last window's last
    batch can be short, so a pass has as many batches as plain shuffling gives. This is
    what ``group_by_length`` does in transformers' Trainer (windows of 50 batches there
    too). Like ``EpochShuffle``, set ``epoch`` before iterating to replay a pass.
    """

    WINDOW_BATCHES = 50

    def __init__(self, lengths: list[int], batch_size: int, seed: int):
        self.lengths = torch.as_tensor(lengths, dtype=torch.long)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def batches_of_pass(self, epoch: int) -> list[list[int]]:
        generator = pass_generator(self.seed, epoch)
        order = torch.randperm(len(self.lengths), generator=generator)
        window = self.WINDOW_BATCHES * self.batch_size
        batches = []
        for start in range(0, len(order), window):
            part = order[start : start + window]
            ranked = part[torch.sort(self.lengths[part], descending=True, stable=True).indices].tolist()
            batches += [ranked[i : i + self.batch_size] for i in range(0, len(ranked), self.batch_size)]
        shuffled = torch.randperm(len(batches), generator=generator).tolist()
        return [batches[i] for i in shuffled]

    def __iter__(self):
        batches = self.batches_of_pass(self.epoch)
        self.epoch += 1
        return iter(batches)
