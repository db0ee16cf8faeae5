"""The run report: one row per stage, the baseline, gates; as report.json and as a table."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from compose.exit_codes import EXIT_GATE_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_STAGE_FAILED

REPORT_FILE = "report.json"
RESOLVED_RECIPE = "recipe.resolved.yaml"


@dataclass
class StageRow:
    name: str
    plugin: str | None
    metric: str
    value: float | None
    params: int
    size_bytes: int | None
    weights_bytes: int | None
    latency_ms: float | None
    seconds: float
    artifact: str | None
    retained: float | None = None
    #: Against the baseline's predictions on the same examples (compose.evaluation.paired):
    #: [low, high] of retained (paired bootstrap), the share of equal predictions, and the
    #: mean KL(baseline || this model); None where a task does not define one.
    retained_ci: list[float] | None = None
    agreement: float | None = None
    kl: float | None = None
    #: Serving speed (compose.evaluation.latency.Latency as JSON: threads, batch1_p50_ms, batch1_p95_ms,
    #: throughput_per_s, batch_size...); None when not measured (evaluate.latency.enabled: false).
    latency: dict | None = None
    speedup: float | None = None  # throughput / the baseline's ("x faster")
    size_ratio: float | None = None  # the baseline's size_bytes / this row's ("x smaller", whole artifact)
    metrics: dict = field(default_factory=dict)  # every metric the task computes (perplexity, next_token_accuracy...)
    details: dict = field(default_factory=dict)
    reused: bool = False  # taken from an earlier run in the same folder (same fingerprint)
    #: Reused, but measured again from its saved artifact (the evaluation settings changed).
    remeasured: bool = False

    def to_json(self) -> dict:
        out = asdict(self)
        out["metric"] = {"name": self.metric, "value": out.pop("value")}
        return out


@dataclass
class GateResult:
    stage: str
    min_retained: float | None
    min_metric: float | None
    retained: float | None
    value: float | None
    passed: bool | None  # None: not evaluated (the run stopped before)


@dataclass
class Report:
    recipe: str
    run_dir: str
    metric: str
    higher_is_better: bool
    baseline_stage: str | None = None
    #: How rows are compared with the baseline: bootstrap_samples, confidence, unit.
    comparison: dict | None = None
    rows: list[StageRow] = field(default_factory=list)
    gates: list[GateResult] = field(default_factory=list)
    status: str = "running"  # running | passed | gate_failed | stage_failed | interrupted
    error: dict | None = None
    seconds: float = 0.0
    #: Finished stages of an earlier run in this folder that were not reused: [{stage, reason}].
    reuse_refused: list = field(default_factory=list)
    #: The data as the run tokenized it: max_length in force (and whether ``auto`` chose it), and per split the
    #: token lengths and the share of rows max_length truncated (``compose.tasks.lengths``).
    data: dict | None = None
    #: What the run found questionable without failing (e.g. a baseline close to a constant prediction).
    warnings: list = field(default_factory=list)

    @property
    def baseline(self) -> StageRow | None:
        return next((r for r in self.rows if r.name == self.baseline_stage), None)

    def retained(self, value: float | None) -> float | None:
        base = self.baseline
        if base is None or value is None or base.value is None:
            return None
        if any(map(math.isnan, (value, base.value))):
            return None
        if self.higher_is_better:
            return value / base.value if base.value else None
        return base.value / value if value else None

    def speedup(self, row: StageRow) -> float | None:
        """The row's throughput over the baseline's (both measured in this run)."""
        base = self.baseline
        ours, theirs = _throughput(row), _throughput(base)
        return ours / theirs if ours and theirs else None

    def size_ratio(self, row: StageRow) -> float | None:
        """The baseline's whole artifact size over the row's: how many times smaller."""
        base = self.baseline
        if base is None or not base.size_bytes or not row.size_bytes:
            return None
        return base.size_bytes / row.size_bytes

    def refresh_retained(self) -> None:
        """Recompute what is relative to the baseline: retained, speed-up, size ratio."""
        for row in self.rows:
            row.retained = self.retained(row.value)
            row.speedup = self.speedup(row)
            row.size_ratio = self.size_ratio(row)

    @property
    def latency_settings(self) -> dict | None:
        """How the rows' speed was measured (threads, device, batch size), from the last measured row."""
        measured = [r.latency for r in self.rows if r.latency]
        return measured[-1] if measured else None

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def exit_code(self) -> int:
        return {
            "passed": EXIT_OK,
            "gate_failed": EXIT_GATE_FAILED,
            "stage_failed": EXIT_STAGE_FAILED,
            "interrupted": EXIT_INTERRUPTED,
        }.get(self.status, EXIT_STAGE_FAILED)

    def to_json(self) -> dict[str, Any]:
        base = self.baseline
        return {
            "recipe": self.recipe,
            "run_dir": self.run_dir,
            "status": self.status,
            "passed": self.passed,
            "exit_code": self.exit_code if self.status != "running" else None,
            "metric": {"name": self.metric, "higher_is_better": self.higher_is_better},
            "baseline": (
                {"stage": base.name, "metric": base.metric, "value": base.value} if base is not None else None
            ),
            "comparison": self.comparison,
            "stages": [row.to_json() for row in self.rows],
            "reused_stages": [row.name for row in self.rows if row.reused],
            "remeasured_stages": [row.name for row in self.rows if row.remeasured],
            "reuse_refused": self.reuse_refused,
            "data": self.data,
            "warnings": self.warnings,
            "gates": [asdict(g) for g in self.gates],
            "error": self.error,
            "seconds": round(self.seconds, 3),
        }


def _throughput(row: StageRow | None) -> float | None:
    value = (row.latency or {}).get("throughput_per_s") if row is not None else None
    return value if isinstance(value, (int, float)) and math.isfinite(value) and value > 0 else None


def row_from_json(stage: dict) -> StageRow:
    """A row read back from report.json (older reports lack some fields: they get their defaults)."""
    fields = {k: v for k, v in stage.items() if k in StageRow.__dataclass_fields__}
    fields["metric"], fields["value"] = stage["metric"]["name"], stage["metric"]["value"]
    return StageRow(**fields)


def report_from_json(data: dict) -> Report:
    """A Report read back from report.json."""
    rows = [row_from_json(stage) for stage in data.get("stages", [])]
    return Report(
        recipe=data["recipe"],
        run_dir=data["run_dir"],
        metric=data["metric"]["name"],
        higher_is_better=data["metric"]["higher_is_better"],
        baseline_stage=(data.get("baseline") or {}).get("stage"),
        comparison=data.get("comparison"),
        rows=rows,
        gates=[GateResult(**g) for g in data.get("gates", [])],
        status=data["status"],
        error=data.get("error"),
        seconds=data.get("seconds", 0.0),
        data=data.get("data"),
        warnings=data.get("warnings", []),
    )


def format_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1000
    return str(n)


def format_number(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"


def format_percent(fraction: float | None) -> str:
    return f"{100 * fraction:.1f}%" if fraction is not None else "-"


def format_retained(row: StageRow) -> str:
    """ "98.5% (97.1-99.8)": retained and its interval when there is one."""
    if row.retained is None:
        return "-"
    if not row.retained_ci or row.retained_ci[0] == row.retained_ci[1]:
        return format_percent(row.retained)
    low, high = row.retained_ci
    return f"{format_percent(row.retained)} ({100 * low:.1f}-{100 * high:.1f})"


def format_ratio(ratio: float | None) -> str:
    """2.5 -> "2.50x" (a speed-up or size ratio); "-" when unknown."""
    if ratio is None or math.isnan(ratio):
        return "-"
    return f"{ratio:.2f}x" if ratio < 10 else f"{ratio:.1f}x"


def format_latency(latency: dict | None, key: str) -> str:
    """A field of a row's latency: milliseconds ("3.2 ms") or examples per second ("412")."""
    value = (latency or {}).get(key)
    if value is None:
        return "-"
    if key.endswith("_ms"):
        return f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def latency_note(report: Report) -> str | None:
    """One line saying how the speed columns were measured (threads, device, counts), or None."""
    settings = report.latency_settings
    if not settings:
        return None
    return (
        f"speed at {settings['threads']} thread(s) on {settings['device']}: b1 p50 = median latency of "
        f"{settings['batch1_samples']} single examples; b{settings['batch_size']} ex/s over "
        f"{settings['throughput_batches']} batches; x faster, x smaller (whole artifact): vs the baseline"
    )


def comparison_note(report: Report) -> str | None:
    """One line saying how the rows were compared with the baseline, or None."""
    settings = report.comparison
    if not settings or not any(r.retained_ci or r.agreement is not None for r in report.rows):
        return None
    unit = settings.get("unit", "example")
    return (
        f"against the baseline on the same {unit}s: retained CI = paired bootstrap over {unit}s "
        f"({settings['bootstrap_samples']} resamples); agree = share of equal predictions; "
        f"KL = mean KL(baseline || stage)"
    )


def render_table(report: Report, console: Console) -> None:
    if not console.is_terminal:
        console.width = max(console.width, 190)
    # Light borders: up to 17 columns fit a 190-character line without wrapping the numbers.
    table = Table(title=f"recipe-compose: {report.recipe}", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("stage")
    table.add_column("plugin")
    table.add_column(report.metric, justify="right")
    confidence = (report.comparison or {}).get("confidence")
    shows_ci = any(r.retained_ci for r in report.rows)
    table.add_column(
        f"retained ({100 * confidence:.0f}% CI)" if shows_ci and confidence else "retained", justify="right"
    )
    shows_agreement = any(r.agreement is not None for r in report.rows)
    shows_kl = any(r.kl is not None for r in report.rows)
    if shows_agreement:
        table.add_column("agree", justify="right")
    if shows_kl:
        table.add_column("KL", justify="right")
    others = [m for m in dict.fromkeys(k for r in report.rows for k in r.metrics) if m != report.metric]
    for name in others:
        table.add_column(name, justify="right")
    table.add_column("params", justify="right")
    table.add_column("size", justify="right")
    settings = report.latency_settings or {}
    table.add_column("b1 p50", justify="right")
    table.add_column(f"b{settings.get('batch_size', 64)} ex/s", justify="right")
    table.add_column("x faster", justify="right")
    table.add_column("x smaller", justify="right")
    table.add_column("time", justify="right")
    for row in report.rows:
        marker = " (baseline)" if row.name == report.baseline_stage else ""
        marker += " (reused)" if row.reused else ""
        table.add_row(
            row.name + marker,
            row.plugin or "-",
            format_number(row.value),
            format_retained(row),
            *([format_percent(row.agreement)] if shows_agreement else []),
            *([format_number(row.kl)] if shows_kl else []),
            *(format_number(row.metrics.get(name)) for name in others),
            f"{row.params / 1e6:.2f}M",
            format_bytes(row.size_bytes),
            format_latency(row.latency, "batch1_p50_ms"),
            format_latency(row.latency, "throughput_per_s"),
            format_ratio(row.speedup),
            format_ratio(row.size_ratio),
            f"{row.seconds:.1f} s",
        )
    console.print(table)
    note = latency_note(report)
    if note:
        console.print(note)
    note = comparison_note(report)
    if note:
        console.print(note)
    for gate in report.gates:
        verdict = {True: "[green]passed[/]", False: "[red]FAILED[/]", None: "[yellow]not reached[/]"}[gate.passed]
        wants = []
        if gate.min_retained is not None:
            wants.append(f"retained {format_percent(gate.retained)} >= {format_percent(gate.min_retained)}")
        if gate.min_metric is not None:
            op = ">=" if report.higher_is_better else "<="
            got = f"{gate.value:.4f}" if gate.value is not None else "-"
            wants.append(f"{report.metric} {got} {op} {gate.min_metric}")
        console.print(f"gate on {gate.stage}: {', '.join(wants)}: {verdict}")
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/] {warning['message']}")
    console.print(f"report: {Path(report.run_dir) / REPORT_FILE}")
