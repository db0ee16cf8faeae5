"""The run report: one row per stage, the baseline, gates; as report.json and as a table."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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
    metrics: dict = field(default_factory=dict)  # every metric the task computes (perplexity, next_token_accuracy...)
    details: dict = field(default_factory=dict)
    reused: bool = False  # taken from an earlier run in the same folder (same fingerprint)

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
    rows: list[StageRow] = field(default_factory=list)
    gates: list[GateResult] = field(default_factory=list)
    status: str = "running"  # running | passed | gate_failed | stage_failed | interrupted
    error: dict | None = None
    seconds: float = 0.0

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

    def refresh_retained(self) -> None:
        for row in self.rows:
            row.retained = self.retained(row.value)

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
            "stages": [row.to_json() for row in self.rows],
            "reused_stages": [row.name for row in self.rows if row.reused],
            "gates": [asdict(g) for g in self.gates],
            "error": self.error,
            "seconds": round(self.seconds, 3),
        }


def row_from_json(stage: dict) -> StageRow:
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
        rows=rows,
        gates=[GateResult(**g) for g in data.get("gates", [])],
        status=data["status"],
        error=data.get("error"),
        seconds=data.get("seconds", 0.0),
    )


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, default=str)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


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


def render_table(report: Report, console: Console) -> None:
    if not console.is_terminal:
        console.width = max(console.width, 120)
    table = Table(title=f"recipe-compose: {report.recipe}", title_justify="left")
    table.add_column("stage")
    table.add_column("plugin")
    table.add_column(report.metric, justify="right")
    table.add_column("retained", justify="right")
    others = [m for m in dict.fromkeys(k for r in report.rows for k in r.metrics) if m != report.metric]
    for name in others:
        table.add_column(name, justify="right")
    table.add_column("params", justify="right")
    table.add_column("size on disk", justify="right")
    table.add_column("latency/batch", justify="right")
    table.add_column("time", justify="right")
    for row in report.rows:
        marker = " (baseline)" if row.name == report.baseline_stage else ""
        marker += " (reused)" if row.reused else ""
        table.add_row(
            row.name + marker,
            row.plugin or "-",
            format_number(row.value),
            format_percent(row.retained),
            *(format_number(row.metrics.get(name)) for name in others),
            f"{row.params / 1e6:.2f}M",
            format_bytes(row.size_bytes),
            f"{row.latency_ms:.1f} ms" if row.latency_ms is not None else "-",
            f"{row.seconds:.1f} s",
        )
    console.print(table)
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
    console.print(f"report: {Path(report.run_dir) / REPORT_FILE}")
