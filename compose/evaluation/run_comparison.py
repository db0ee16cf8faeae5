"""Compare finished runs: their final models side by side, and a plot of every stage.

``recipe compare`` reads each run's report.json. The plot (matplotlib, the
optional ``plot`` extra) draws each run from its baseline to its final stage: the
retained metric, with its paired interval, against the whole artifact's size and
against throughput; only each run's final stage is labelled, so labels do not pile up,
and the axis spans the compared stages, not an untrained input. The absolute metric is
in the table (retained is relative to each run's own baseline).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from compose import atomic
from compose.errors import ComposeError
from compose.evaluation.report import REPORT_FILE, Report, report_from_json


class CompareError(ComposeError):
    """A report cannot be read or the reports cannot be compared."""


@dataclass
class Run:
    label: str
    report: Report
    path: Path

    @property
    def final(self):
        return self.report.rows[-1] if self.report.rows else None

    @property
    def training_steps(self) -> int:
        return sum(training_steps(row.details) for row in self.report.rows)


def training_steps(details) -> int:
    """Optimizer steps recorded in a row's details (every ``training`` summary, nested ones too)."""
    if isinstance(details, dict):
        own = details.get("training")
        steps = own.get("steps", 0) if isinstance(own, dict) and isinstance(own.get("steps"), int) else 0
        return steps + sum(training_steps(v) for k, v in details.items() if k != "training")
    if isinstance(details, list):
        return sum(training_steps(v) for v in details)
    return 0


def load_run(path: str | Path, label: str | None = None) -> Run:
    """A run from its report.json or its run folder."""
    path = Path(path)
    file = path / REPORT_FILE if path.is_dir() else path
    if not file.is_file():
        raise CompareError(f"{path}: no {REPORT_FILE} there; give a run folder or its {REPORT_FILE}")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        report = report_from_json(data)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CompareError(f"{file}: not a recipe-compose report ({type(exc).__name__}: {exc})") from None
    if not report.rows:
        raise CompareError(f"{file}: the run has no finished stage to compare")
    return Run(label or Path(report.recipe).stem, report, file)


def load_runs(paths, labels=None) -> list[Run]:
    labels = list(labels or [])
    if labels and len(labels) != len(paths):
        raise CompareError(f"{len(labels)} labels for {len(paths)} reports; give one --label per report")
    runs = [load_run(p, labels[i] if labels else None) for i, p in enumerate(paths)]
    seen: dict[str, int] = {}
    for run in runs:  # same recipe name twice: number them
        seen[run.label] = seen.get(run.label, 0) + 1
        if seen[run.label] > 1:
            run.label = f"{run.label} ({seen[run.label]})"
    metrics = {r.report.metric for r in runs}
    if len(metrics) > 1:
        raise CompareError(
            f"the reports measure different metrics ({', '.join(sorted(metrics))}); compare runs of one task"
        )
    return runs


def compare_runs(runs: list[Run]) -> dict:
    """What ``--json`` prints: every run's final model and stages."""

    def row_json(row):
        return {
            "stage": row.name,
            "plugin": row.plugin,
            "metric": row.value,
            "retained": row.retained,
            "retained_ci": row.retained_ci,
            "agreement": row.agreement,
            "kl": row.kl,
            "metrics": row.metrics,
            "params": row.params,
            "size_bytes": row.size_bytes,
            "latency_ms": row.latency_ms,
            "latency": row.latency,
            "speedup": row.speedup,
            "size_ratio": row.size_ratio,
            "seconds": row.seconds,
        }

    return {
        "metric": {"name": runs[0].report.metric, "higher_is_better": runs[0].report.higher_is_better},
        "runs": [
            {
                "label": run.label,
                "report": str(run.path),
                "status": run.report.status,
                "baseline_stage": run.report.baseline_stage,
                "training_steps": run.training_steps,
                "seconds": run.report.seconds,
                "final": row_json(run.final),
                "stages": [row_json(row) for row in run.report.rows],
            }
            for run in runs
        ],
    }


def _finite(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


def best_final(runs: list[Run]) -> Run | None:
    scored = [r for r in runs if _finite(r.final.value)]
    if not scored:
        return None
    pick = max if runs[0].report.higher_is_better else min
    return pick(scored, key=lambda r: r.final.value)


def _from_baseline(run: Run) -> list:
    """The run's rows from its baseline on: the rows before it (an untrained input) are not what is compared."""
    names = [row.name for row in run.report.rows]
    start = names.index(run.report.baseline_stage) if run.report.baseline_stage in names else 0
    return run.report.rows[start:]


def _x(row, field: str) -> float | None:
    if field == "size":
        return row.size_bytes / 1e6 if row.size_bytes else None
    return (row.latency or {}).get("throughput_per_s")


def plot(runs: list[Run], target: Path) -> Path:
    """Draw the comparison into ``target`` (PNG): retained against size and against throughput, with the
    paired interval as error bars, each run from its baseline on; needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CompareError(
            "drawing the plot needs matplotlib: pip install 'recipe-compose[plot]' (or matplotlib), or pass --no-plot"
        ) from None
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    panels = (("size", "whole artifact (MB)"), ("throughput", "throughput (examples/s)"))
    spans = {field: [] for field, _ in panels}
    retained = []
    for run in runs:
        rows = _from_baseline(run)
        for axis, (field, _) in zip(axes, panels):
            points = [(x, row) for row in rows if (x := _x(row, field)) is not None and _finite(row.retained)]
            if not points:
                continue
            xs, ys = [x for x, _ in points], [row.retained for _, row in points]
            below = [max(0.0, row.retained - row.retained_ci[0]) if row.retained_ci else 0.0 for _, row in points]
            above = [max(0.0, row.retained_ci[1] - row.retained) if row.retained_ci else 0.0 for _, row in points]
            drawn = axis.errorbar(xs, ys, yerr=[below, above], marker="o", capsize=3, label=run.label)
            last_x, last = points[-1]
            axis.annotate(
                last.name,
                (last_x, last.retained),
                textcoords="offset points",
                xytext=(6, -10),
                fontsize=8,
                color=drawn[0].get_color(),
            )
            spans[field] += xs
            retained += ys + [end for _, row in points for end in (row.retained_ci or [])]
    for axis, (field, label) in zip(axes, panels):
        values = spans[field]
        wide = values and min(values) > 0 and max(values) / min(values) > 10
        axis.set(xlabel=label, xscale="log" if wide else "linear")
        axis.grid(True, which="both", alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8, loc="best")
    axes[0].set_ylabel(f"retained {runs[0].report.metric} (vs each run's baseline, 95% interval)")
    if retained:
        low, high = min(retained), max(retained)
        pad = max(0.005, (high - low) * 0.1)
        axes[0].set_ylim(low - pad, high + pad)
    figure.suptitle("recipe compare: each run from its baseline to its final stage (labelled)")
    figure.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic.writing_file(target) as handle:
        figure.savefig(handle, dpi=120, format="png")
    plt.close(figure)
    return target
