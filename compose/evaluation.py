"""Evaluate a model on the recipe's evaluation split: the metric and the mean time per batch.

Serving speed (batch-1 latency, throughput) is compose.latency's."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping

import torch

from compose.distributed import current_ranks, gather_objects
from compose.progress import Progress
from compose.tasks import METRICS


@dataclass(frozen=True)
class Evaluation:
    metric: str
    value: float
    higher_is_better: bool
    latency_ms: float | None  # mean forward time per batch (first batch excluded as warm-up)
    examples: int
    metrics: dict = field(default_factory=dict)  # every metric the task computes, by name


def _sync(device) -> None:
    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize()


def _to(batch: dict, device) -> dict:
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}


@torch.no_grad()
def evaluate(model, tokenizer, task, settings: Mapping, device, progress=None, description="evaluating") -> Evaluation:
    """Run the model over ``settings['split']`` (``evaluate:`` section of the recipe)."""
    ranks = current_ranks()
    shard = (ranks.rank, ranks.world_size) if ranks.distributed else None
    loader = task.batches(settings["split"], tokenizer, settings["batch_size"], limit=settings.get("limit"), shard=shard)
    was_training = getattr(model, "training", False)  # any object task.predict can call: a torch module or not
    if hasattr(model, "eval"):
        model.eval()
    state = task.new_metric_state()
    timings = []
    examples = 0
    timed = settings.get("latency_batches", 20)
    progress = progress or Progress(enabled=False)
    try:
        with progress.track(description, total=len(loader)) as bar:
            for index, batch in enumerate(loader):
                batch = _to(batch, device)
                inputs = {k: v for k, v in batch.items() if k != "labels"}
                _sync(device)
                start = time.perf_counter()
                outputs = task.predict(model, inputs, tokenizer)
                _sync(device)
                if index <= timed:
                    timings.append(time.perf_counter() - start)
                task.update_metric(state, outputs, batch)
                examples += len(next(iter(inputs.values())))
                bar.advance()
    finally:
        if was_training:
            model.train(True)
    metric_name = settings.get("metric") or task.metric_name
    timed_batches = timings[1:] or timings  # the first batch warms up (unless it is the only one)
    latency = 1000 * sum(timed_batches) / len(timed_batches) if timed_batches else None
    if ranks.distributed:  # every example was evaluated by exactly one rank
        gathered = gather_objects((state, latency, examples))
        state = task.merge_metric_states([g[0] for g in gathered])
        latencies = [g[1] for g in gathered if g[1] is not None]
        latency = sum(latencies) / len(latencies) if latencies else None
        examples = sum(g[2] for g in gathered)
    metrics = {name: task.compute_metric(state, name) for name in task.metric_names}
    higher = METRICS[metric_name].higher_is_better
    return Evaluation(metric_name, metrics[metric_name], higher, latency, examples, metrics)
