"""Compare finished runs: their final models side by side, and a plot of every stage.

``recipe compare`` reads each run's report.json. The plot (matplotlib, the
optional ``plot`` extra) has one point per stage per run: the retained metric
against size on disk, and the metric itself against size on disk (retained is
relative to each run's own baseline, so runs with different baselines are
compared on the absolute metric).
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


def plot(runs: list[Run], target: Path) -> Path:
    """Draw the comparison into ``target`` (PNG); needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CompareError(
            "drawing the plot needs matplotlib: pip install 'recipe-compose[plot]' (or matplotlib), or pass --no-plot"
        ) from None
    metric = runs[0].report.metric
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for run in runs:
        for axis, field in ((left, "retained"), (right, "value")):
            points = [
                (row.size_bytes / 1e6, getattr(row, field), row.name)
                for row in run.report.rows
                if row.size_bytes and _finite(getattr(row, field))
            ]
            if not points:
                continue
            sizes, values, names = zip(*points)
            (line,) = axis.plot(sizes, values, marker="o", label=run.label)
            for size, value, name in points:
                axis.annotate(
                    name, (size, value), textcoords="offset points", xytext=(4, 4), fontsize=8, color=line.get_color()
                )
    lower = "" if runs[0].report.higher_is_better else " (lower is better)"
    left.set(
        xscale="log",
        xlabel="size on disk (MB)",
        ylabel=f"retained {metric} (vs each run's baseline)",
        title="retained metric vs size",
    )
    right.set(xscale="log", xlabel="size on disk (MB)", ylabel=f"{metric}{lower}", title=f"{metric} vs size")
    values = [r.value for run in runs for r in run.report.rows if _finite(r.value)]
    if values and min(values) > 0 and max(values) / min(values) > 10:
        right.set_yscale("log")  # perplexities of untrained and trained models differ by orders of magnitude
    for axis in (left, right):
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle("recipe compare: one point per stage per run")
    figure.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic.writing_file(target) as handle:
        figure.savefig(handle, dpi=120, format="png")
    plt.close(figure)
    return target
