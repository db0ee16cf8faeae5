"""compose.run.gates: a gate passes or fails on its stage's row against the baseline; final gates wait for the end."""

import pytest

from compose.evaluation.report import Report, StageRow
from compose.run.gates import check_gates, gates_of


def report(values: dict, gates, higher_is_better=True) -> Report:
    rows = [
        StageRow(
            name=n,
            plugin=None,
            metric="m",
            value=v,
            params=1,
            size_bytes=None,
            weights_bytes=None,
            latency_ms=None,
            seconds=0.0,
            artifact=None,
        )
        for n, v in values.items()
    ]
    return Report(
        recipe="r.yaml",
        run_dir="run",
        metric="m",
        higher_is_better=higher_is_better,
        baseline_stage="ft",
        rows=rows,
        gates=gates_of({"gates": gates}),
    )


def test_a_stage_gate_is_judged_as_soon_as_its_row_exists():
    found = report({"ft": 0.90, "prune": 0.84}, [{"stage": "prune", "min_retained": 0.95}])
    assert check_gates(found, final=False) is False
    gate = found.gates[0]
    assert gate.passed is False and gate.retained == pytest.approx(0.84 / 0.90) and gate.value == 0.84


def test_a_final_gate_waits_for_the_end_and_reads_the_last_row():
    found = report({"ft": 0.90, "prune": 0.89}, [{"min_retained": 0.97, "min_metric": 0.85}])
    assert check_gates(found, final=False) is True and found.gates[0].passed is None
    assert check_gates(found, final=True) is True and found.gates[0].passed is True


def test_lower_is_better_metrics_gate_on_a_maximum():
    found = report({"ft": 20.0, "q": 25.0}, [{"min_metric": 22.0}], higher_is_better=False)
    assert check_gates(found, final=True) is False
    assert found.gates[0].retained == pytest.approx(0.8)


def test_a_judged_gate_is_not_judged_again():
    found = report({"ft": 0.9, "a": 0.5}, [{"stage": "a", "min_metric": 0.6}])
    assert check_gates(found, final=False) is False
    found.rows[-1].value = 0.95
    assert check_gates(found, final=True) is True  # already failed: not re-judged, nothing new fails
    assert found.gates[0].passed is False
