"""Latency and throughput as a model is served: batch-1 percentiles, batch-N examples per second.

What is timed is ``task.predict(model, inputs, tokenizer)`` on batches the task builds
from the evaluation split, so any model object the task can predict with (a PyTorch
model, an ONNX Runtime session wrapped for the task, ...) is measured the same way.
Tokenizing and moving batches to the device are not timed. Every row of a run is
measured at one thread count (``evaluate.latency.threads``; null: torch's default when
the run starts), set with ``torch.set_num_threads`` for the measurement and recorded.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch

from compose.errors import DataError
from compose.evaluation.devices import synchronize, to_device
from compose.run import interrupts


@dataclass(frozen=True)
class Latency:
    threads: int  # torch.set_num_threads during the measurement
    device: str
    batch1_p50_ms: float  # median time of task.predict on one example
    batch1_p95_ms: float
    batch1_samples: int  # timed single examples (after warm-up)
    throughput_per_s: float  # examples per second over the timed full batches
    batch_size: int  # examples per timed batch (fewer than asked when the split is smaller)
    throughput_batches: int

    def to_json(self) -> dict:
        return asdict(self)


def resolve_threads(settings: Mapping) -> int:
    """The thread count to measure at: ``threads``, or torch's current default."""
    return settings.get("threads") or torch.get_num_threads()


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between order statistics."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@contextmanager
def num_threads(threads: int):
    """torch.set_num_threads(threads) inside the block; the previous count after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _inputs(batch: dict, device) -> dict:
    return {k: v for k, v in to_device(batch, device).items() if k != "labels"}


def _size(inputs: dict) -> int:
    return len(next(iter(inputs.values())))


def _take(loader, count: int, split: str, device, full_only: bool = False) -> list[dict]:
    """``count`` input dicts from the loader, going round it again when it holds fewer."""
    batches = [_inputs(batch, device) for batch in loader]
    if full_only and batches:
        largest = max(map(_size, batches))
        batches = [b for b in batches if _size(b) == largest]  # drop the last, partial batch
    if not batches:
        raise DataError(f"split '{split}' has no example to measure latency on; evaluate on a split with data")
    return [batches[i % len(batches)] for i in range(count)]


@torch.no_grad()
def measure_latency(
    model, tokenizer, task, split: str, settings: Mapping, device, threads: int | None = None, point: str | None = None
) -> Latency:
    """Time ``task.predict`` on single examples and on full batches of ``split``.

    ``settings`` is the recipe's ``evaluate.latency`` section. ``threads`` (default:
    ``resolve_threads(settings)``) is set for the measurement and restored after.
    ``point``: this measurement's name as a point of the run's progress
    (``compose.run.interrupts.point``, reached between timed calls, never inside one).
    """
    threads = threads or resolve_threads(settings)
    samples, warmup = settings["batch1_samples"], settings["warmup"]
    batch_size, rounds = settings["throughput_batch_size"], settings["throughput_batches"]
    singles = _take(task.batches(split, tokenizer, 1, limit=samples, with_labels=False), samples, split, device)
    fulls = _take(
        task.batches(split, tokenizer, batch_size, limit=batch_size * rounds, with_labels=False),
        rounds,
        split,
        device,
        full_only=True,
    )
    was_training = getattr(model, "training", None)
    if hasattr(model, "eval"):
        model.eval()
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection inside a timed call is noise, not the model's latency
    try:
        with num_threads(threads):
            for inputs in singles[:warmup]:
                task.predict(model, inputs, tokenizer)
            timings = []
            for inputs in singles:
                synchronize(device)
                start = time.perf_counter()
                task.predict(model, inputs, tokenizer)
                synchronize(device)
                timings.append(time.perf_counter() - start)
                if point is not None:
                    interrupts.point(point)
            for inputs in fulls[:warmup]:
                task.predict(model, inputs, tokenizer)
            synchronize(device)
            start = time.perf_counter()
            for inputs in fulls:
                task.predict(model, inputs, tokenizer)
            synchronize(device)
            elapsed = time.perf_counter() - start
    finally:
        if gc_was_enabled:
            gc.enable()
        if was_training and hasattr(model, "train"):
            model.train(True)
    timings_ms = [1000 * t for t in timings]
    examples = sum(map(_size, fulls))
    return Latency(
        threads=threads,
        device=str(device),
        batch1_p50_ms=percentile(timings_ms, 50),
        batch1_p95_ms=percentile(timings_ms, 95),
        batch1_samples=len(timings_ms),
        throughput_per_s=examples / elapsed if elapsed > 0 else float("inf"),
        batch_size=max(map(_size, fulls)),
        throughput_batches=len(fulls),
    )
