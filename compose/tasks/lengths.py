"""How long a split's examples are under the recipe's tokenizer, and what ``max_length`` cuts.

``max_length`` truncates silently: moved to data with longer rows, a recipe loses text
without a word. ``length_stats`` gives a split's token-length distribution (untruncated)
and the share of rows ``max_length`` truncates; ``truncation_warning`` says when that share
is above ``WARN_SHARE``, naming a ``max_length`` that would cut at most that; ``auto``
(``max_length: auto``) picks the 99th percentile of the training split, rounded up to a
multiple of 8.
"""

from __future__ import annotations

import math

#: Above this share of truncated rows a split gets a warning.
WARN_SHARE = 0.01
#: ``max_length: auto`` covers this share of the training split's rows whole.
AUTO_QUANTILE = 0.99
#: What ``max_length: auto`` rounds up to a multiple of (tensor shapes that vectorise well).
ROUND_TO = 8


def quantile(lengths: list[int], q: float) -> int:
    """The smallest length that at least ``q`` of the rows fit in."""
    ordered = sorted(lengths)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)] if ordered else 0


def round_up(length: int) -> int:
    return max(ROUND_TO, -(-length // ROUND_TO) * ROUND_TO)


def length_stats(lengths: list[int], limit: int | None) -> dict:
    """Rows, mean, p95, p99 and max of untruncated token lengths; the share of rows longer than ``limit``."""
    count = len(lengths)
    cut = sum(1 for n in lengths if limit is not None and n > limit)
    return {
        "rows": count,
        "mean": round(sum(lengths) / count, 1) if count else 0.0,
        "p95": quantile(lengths, 0.95),
        "p99": quantile(lengths, 0.99),
        "max": max(lengths, default=0),
        "max_length": limit,
        "truncated_rows": cut,
        "truncated_share": round(cut / count, 4) if count else 0.0,
        "fits_share_with": round_up(quantile(lengths, 1 - WARN_SHARE)),
    }


def auto_max_length(lengths: list[int], cap: int | None = None) -> int:
    """``max_length: auto``: the 99th percentile of ``lengths`` rounded up to a multiple of 8, within ``cap``."""
    chosen = round_up(quantile(lengths, AUTO_QUANTILE))
    return min(chosen, cap) if cap else chosen


def truncation_warning(split: str, stats: dict) -> str | None:
    """A warning where ``max_length`` truncates more than ``WARN_SHARE`` of a split's rows, or None."""
    if stats["truncated_share"] <= WARN_SHARE:
        return None
    return (
        f"split '{split}': max_length {stats['max_length']} truncates {stats['truncated_share']:.1%} of its "
        f"{stats['rows']:,} rows (tokens: mean {stats['mean']}, p95 {stats['p95']}, max {stats['max']}); "
        f"task.max_length: {stats['fits_share_with']} cuts at most {WARN_SHARE:.0%} (or max_length: auto)"
    )


def tokenizer_limit(tokenizer) -> int | None:
    """The tokenizer's own limit (model_max_length), where it states a real one."""
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if isinstance(limit, int) and 0 < limit < 1_000_000 else None
