"""Whether a search's floor can be met on its selection split at all.

Trials are compared on the selection split; with ``judged_on: interval_low`` a trial must
have the lower end of retained's paired 95% interval above the floor. That interval's
half-width shrinks with the split's size, so on a small split no model can qualify,
however good: the study then spends its whole budget and ends with exit 1. Before the
data exists in a run the half-width is estimated from the split's size, for a compressed
model that disagrees with its baseline on ``DISAGREEMENT`` of the rows at ``BASELINE``
accuracy (calibrated on the SST-2 study of docs/tune.md, whose 1,388 selection rows gave
intervals of about ±2 points): a paired
difference of discordant rows has variance ``d / n``, so the half-width of retained is
``1.96 sqrt(d / n) / baseline``.
"""

from __future__ import annotations

import math

#: The share of rows a compressed model's predictions differ from its baseline's (assumed before a run).
DISAGREEMENT = 0.10
#: The baseline's accuracy assumed with it.
BASELINE = 0.85
Z95 = 1.96
#: Metrics whose retained the estimate describes (per-row right or wrong).
ROW_METRICS = ("accuracy", "f1", "matthews")


def half_width(rows: int, disagreement: float = DISAGREEMENT, baseline: float = BASELINE) -> float:
    """The estimated half-width of retained's paired 95% interval on ``rows`` rows."""
    return Z95 * math.sqrt(disagreement / max(rows, 1)) / baseline


def rows_for(width: float, disagreement: float = DISAGREEMENT, baseline: float = BASELINE) -> int:
    """The rows a selection split needs for a half-width of ``width``."""
    return math.ceil(disagreement * (Z95 / (baseline * width)) ** 2)


def floor_check(search, rows: int, metric: str, train_rows: int | None = None) -> dict:
    """The estimate for a search's floor on a selection split of ``rows`` rows, with a warning (and the fixes,
    with numbers) where ``interval_low >= min_retained`` is out of reach for a model as good as its baseline."""
    width = half_width(rows)
    floor = search["min_retained"]
    best_low = 1.0 - width
    found = {
        "rows": rows,
        "half_width": round(width, 4),
        "best_interval_low": round(best_low, 4),
        "point_needed": round(floor + width, 4) if search["judged_on"] == "interval_low" else floor,
        "warning": None,
    }
    if search["judged_on"] != "interval_low" or metric not in ROW_METRICS or best_low >= floor:
        return found
    needed = rows_for((1.0 - floor) / 2)  # then a trial keeping halfway between the floor and 100% qualifies
    share = (
        f"selection_share: {min(0.5, needed / train_rows):.2f} (~{needed:,} rows would let a trial keeping "
        f"{(1 + floor) / 2:.1%} qualify), "
        if train_rows
        else ""
    )
    found["warning"] = (
        f"search: on {rows:,} selection rows retained's paired interval is about ±{width:.1%} (for a model that "
        f"disagrees with its baseline on {DISAGREEMENT:.0%} of rows), so interval_low >= {floor:.1%} is out of reach "
        f"even for a model as good as its baseline (its lower end would be ~{best_low:.1%}): use {share}"
        f"judged_on: point with a margin (e.g. min_retained: {min(1.0, floor + 0.005):.3f}), "
        f"or min_retained: {math.floor((best_low - 0.005) * 1000) / 1000:.3f}"
    )
    return found
