"""Evaluate a model on the recipe's evaluation split: the metric and the mean time per batch.

Serving speed (batch-1 latency, throughput) is compose.evaluation.latency's."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from compose.evaluation.devices import synchronize, to_device
from compose.evaluation.paired import concat_records, select_records, sort_by_id
from compose.progress import Progress
from compose.recipe.task_kinds import METRICS
from compose.run import interrupts
from compose.run.distributed import current_ranks, gather_objects


@dataclass(frozen=True)
class Evaluation:
    metric: str
    value: float
    higher_is_better: bool
    latency_ms: float | None  # mean forward time per batch (first batch excluded as warm-up)
    examples: int
    metrics: dict = field(default_factory=dict)  # every metric the task computes, by name
    #: Per-example records (``Task.example_records``, with ``ids``: positions in the split),
    #: from which the metrics and their comparison with the baseline are computed.
    records: dict = field(default_factory=dict, repr=False)


def _reference_rows(reference: dict | None, where: dict, ids: torch.Tensor) -> dict | None:
    """The baseline's records of the examples ``ids`` (None when it lacks one of them);
    ``where``: the position of each example id in ``reference``."""
    if not reference or any(int(i) not in where for i in ids.tolist()):
        return None
    return select_records(reference, torch.tensor([where[int(i)] for i in ids.tolist()], dtype=torch.long))


@torch.no_grad()
def evaluate(
    model,
    tokenizer,
    task,
    settings: Mapping,
    device,
    progress=None,
    description="evaluating",
    *,
    reference: dict | None = None,
    keep_reference: int = 0,
    point: str | None = None,
) -> Evaluation:
    """Run the model over ``settings['split']`` (``evaluate:`` section of the recipe).

    ``reference``: the baseline's records (its ``Evaluation.records``), for comparisons
    that need this model's full outputs (a language model's KL). ``keep_reference`` > 0:
    this is the baseline (see ``Task.example_records``). ``point``: this evaluation's name
    as a point of the run's progress (``compose.run.interrupts.point``, reached after every batch).
    """
    ranks = current_ranks()
    shard = (ranks.rank, ranks.world_size) if ranks.distributed else None
    loader = task.batches(
        settings["split"], tokenizer, settings["batch_size"], limit=settings.get("limit"), shard=shard
    )
    was_training = getattr(model, "training", False)  # any object task.predict can call: a torch module or not
    if hasattr(model, "eval"):
        model.eval()
    parts = []
    timings = []
    examples = 0
    step, offset = (shard[1], shard[0]) if shard else (1, 0)
    where = {int(i): n for n, i in enumerate(reference["ids"].tolist())} if reference else {}
    timed = settings.get("latency_batches", 20)
    progress = progress or Progress(enabled=False)
    try:
        with progress.track(description, total=len(loader)) as bar:
            for index, batch in enumerate(loader):
                count = len(next(iter(batch.values())))
                ids = offset + step * torch.arange(examples, examples + count)  # positions in the split
                batch = to_device(batch, device)
                inputs = {k: v for k, v in batch.items() if k != "labels"}
                synchronize(device)
                start = time.perf_counter()
                outputs = task.predict(model, inputs, tokenizer)
                synchronize(device)
                if index <= timed:
                    timings.append(time.perf_counter() - start)
                records = task.example_records(
                    outputs, batch, reference=_reference_rows(reference, where, ids), keep_reference=keep_reference
                )
                records["ids"] = ids
                parts.append(records)
                examples += count
                bar.advance()
                if point is not None:
                    interrupts.point(point)
    finally:
        if was_training:
            model.train(True)
    metric_name = settings.get("metric") or task.metric_name
    timed_batches = timings[1:] or timings  # the first batch warms up (unless it is the only one)
    latency = 1000 * sum(timed_batches) / len(timed_batches) if timed_batches else None
    records = concat_records(parts)
    if ranks.distributed:  # every example was evaluated by exactly one rank
        gathered = gather_objects((records, latency, examples))
        records = concat_records([g[0] for g in gathered if g[0]])
        latencies = [g[1] for g in gathered if g[1] is not None]
        latency = sum(latencies) / len(latencies) if latencies else None
        examples = sum(g[2] for g in gathered)
    records = sort_by_id(records)
    metrics = {name: _value(task, records, name) for name in task.metric_names}
    higher = METRICS[metric_name].higher_is_better
    return Evaluation(metric_name, metrics[metric_name], higher, latency, examples, metrics, records)


def _value(task, records: dict, name: str) -> float:
    if not records:
        return float("nan")
    return float(task.metric_from_records(records, name))
