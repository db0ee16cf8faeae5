"""The recipe's gates: the minimum retained or absolute metric a stage (or the final model) must reach.

A gate is judged as soon as its stage has a row and the baseline is known; a failed gate
stops the run after that stage (exit 1). ``final`` gates are judged once every stage ran.
"""

from __future__ import annotations

from compose.evaluation.report import GateResult, Report


def gates_of(recipe_data: dict) -> list[GateResult]:
    """The recipe's ``gates:``, not judged yet."""
    return [
        GateResult(g.get("stage", "final"), g.get("min_retained"), g.get("min_metric"), None, None, None)
        for g in recipe_data["gates"]
    ]


def check_gates(report: Report, final: bool) -> bool:
    """Judge the gates that can be judged now (``final``: the final model's too); False if one failed."""
    rows = {r.name: r for r in report.rows}
    ok = True
    for gate in report.gates:
        if gate.passed is not None:
            continue
        target = report.rows[-1].name if gate.stage == "final" else gate.stage
        if gate.stage == "final" and not final:
            continue
        row = rows.get(target)
        if row is None or report.baseline is None:
            continue
        gate.retained = report.retained(row.value)
        gate.value = row.value
        passed = True
        if gate.min_retained is not None:
            passed &= gate.retained is not None and gate.retained >= gate.min_retained
        if gate.min_metric is not None and row.value is not None:
            passed &= row.value >= gate.min_metric if report.higher_is_better else row.value <= gate.min_metric
        gate.passed = passed
        ok &= passed
    return ok
