"""Each stage's model against the baseline's on the same evaluation examples: retained with a
confidence interval (paired bootstrap), agreement, and KL(baseline || stage).

The bootstrap resamples the evaluation's units (examples; blocks of text for language
models) with replacement, the same resamples for the baseline and the stage (paired), and
takes the percentile interval of retained = stage metric / baseline metric (baseline /
stage for lower-is-better metrics such as perplexity). The resamples are drawn from the
recipe's seed: the same run gives the same interval.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from compose.tasks.base import Records, Task

#: Resamples drawn at once (memory: this many x the number of units, int64).
_CHUNK = 200


@dataclass(frozen=True)
class Comparison:
    retained_ci: tuple[float, float] | None
    agreement: float | None
    kl: float | None


def concat_records(parts: list[Records]) -> Records:
    """One set of records from batches' (or processes') records, in the order given."""
    if not parts:
        return {}
    out = {}
    for key in parts[0]:
        values = [part[key] for part in parts]
        if isinstance(values[0], torch.Tensor):
            out[key] = _cat_padded(values)
        else:
            out[key] = [item for value in values for item in value]
    return out


def _cat_padded(values: list[torch.Tensor]) -> torch.Tensor:
    """torch.cat along the first dimension; trailing dimensions that differ are padded with -1."""
    shape = [max(v.shape[d] for v in values) for d in range(1, values[0].dim())]
    padded = []
    for value in values:
        if list(value.shape[1:]) != shape:
            pad = []
            for d in reversed(range(1, value.dim())):
                pad += [0, shape[d - 1] - value.shape[d]]
            value = torch.nn.functional.pad(value, pad, value=-1)
        padded.append(value)
    return torch.cat(padded)


def select_records(records: Records, positions: torch.Tensor) -> Records:
    """The records at ``positions`` (a 1-D index), in that order."""
    out = {}
    for key, value in records.items():
        if isinstance(value, torch.Tensor):
            out[key] = value[positions]
        else:
            out[key] = [value[i] for i in positions.tolist()]
    return out


def sort_by_id(records: Records) -> Records:
    return select_records(records, torch.argsort(records["ids"])) if records else records


def aligned(reference: Records, records: Records) -> tuple[Records, Records] | None:
    """Both sets of records restricted to the examples both evaluated, in the same order."""
    if not reference or not records:
        return None
    if torch.equal(reference["ids"], records["ids"]):
        return reference, records
    common = sorted(set(reference["ids"].tolist()) & set(records["ids"].tolist()))
    if not common:
        return None
    where_ref = {int(i): n for n, i in enumerate(reference["ids"].tolist())}
    where_own = {int(i): n for n, i in enumerate(records["ids"].tolist())}
    return (
        select_records(reference, torch.tensor([where_ref[i] for i in common])),
        select_records(records, torch.tensor([where_own[i] for i in common])),
    )


def retained_interval(
    task: Task,
    metric: str,
    higher_is_better: bool,
    reference: Records,
    records: Records,
    samples: int,
    confidence: float,
    seed: int,
) -> tuple[float, float] | None:
    """The percentile interval of retained over ``samples`` paired resamples (None: undefined)."""
    units = len(records["ids"])
    if samples < 1 or units < 2:
        return None
    generator = torch.Generator().manual_seed(seed)
    ratios = []
    for start in range(0, samples, _CHUNK):
        index = torch.randint(0, units, (min(_CHUNK, samples - start), units), generator=generator)
        base = task.metric_from_records(reference, metric, index).double()
        own = task.metric_from_records(records, metric, index).double()
        ratio = own / base if higher_is_better else base / own
        ratios.append(torch.where(torch.isfinite(ratio), ratio, torch.full_like(ratio, float("nan"))))
    ratios = torch.cat(ratios)
    ratios = ratios[~torch.isnan(ratios)]
    if len(ratios) < samples / 2:  # the baseline's metric is 0 in most resamples: no interval
        return None
    tail = (1 - confidence) / 2
    low, high = torch.quantile(ratios, torch.tensor([tail, 1 - tail], dtype=ratios.dtype)).tolist()
    return round(low, 6), round(high, 6)


def compare_with_baseline(
    task: Task,
    metric: str,
    higher_is_better: bool,
    reference: Records | None,
    records: Records | None,
    settings: dict,
    seed: int,
) -> Comparison | None:
    """The stage's records against the baseline's (``evaluate.against_baseline`` settings)."""
    pair = aligned(reference or {}, records or {})
    if pair is None:
        return None
    reference, records = pair
    interval = retained_interval(
        task, metric, higher_is_better, reference, records, settings["bootstrap_samples"], settings["confidence"], seed
    )
    agreement = task.agreement(reference, records)
    kl = 0.0 if records is reference else task.kl(reference, records)  # the baseline against itself
    return Comparison(
        interval, None if agreement is None else round(agreement, 6), None if kl is None else round(max(kl, 0.0), 6)
    )
