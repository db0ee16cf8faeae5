"""compose.evaluation.run_comparison: finished runs read back from their reports, ranked and counted."""

import json
import math

import pytest

from compose.evaluation.report import Report, StageRow
from compose.evaluation.run_comparison import (
    CompareError,
    best_final,
    compare_runs,
    load_run,
    load_runs,
    training_steps,
)


def write_report(folder, recipe, values, higher_is_better=True, metric="accuracy"):
    rows = [
        StageRow(
            name=f"s{i}",
            plugin="train",
            metric=metric,
            value=v,
            params=10,
            size_bytes=100,
            weights_bytes=90,
            latency_ms=1.0,
            seconds=1.0,
            artifact=None,
            details={"training": {"steps": 5}, "recovery": {"training": {"steps": 2}}},
        )
        for i, v in enumerate(values)
    ]
    report = Report(
        recipe=recipe,
        run_dir=str(folder),
        metric=metric,
        higher_is_better=higher_is_better,
        baseline_stage="s0",
        rows=rows,
        status="passed",
    )
    folder.mkdir(parents=True)
    (folder / "report.json").write_text(json.dumps(report.to_json()))
    return folder


def test_training_steps_count_nested_summaries():
    assert training_steps({"training": {"steps": 5}, "recovery": {"training": {"steps": 2}}}) == 7
    assert training_steps([{"training": {"steps": 1}}, "x"]) == 1 and training_steps(None) == 0


def test_runs_read_back_rank_by_the_final_value_and_same_names_are_numbered(tmp_path):
    a = write_report(tmp_path / "a", "recipes/minilm.yaml", [0.9, 0.85])
    b = write_report(tmp_path / "b", "recipes/minilm.yaml", [0.9, 0.88])
    runs = load_runs([a, b])
    assert [r.label for r in runs] == ["minilm", "minilm (2)"]
    assert best_final(runs) is runs[1]
    found = compare_runs(runs)
    assert found["metric"] == {"name": "accuracy", "higher_is_better": True}
    assert [r["training_steps"] for r in found["runs"]] == [14, 14]
    assert found["runs"][1]["final"]["metric"] == 0.88 and len(found["runs"][0]["stages"]) == 2


def test_lower_is_better_picks_the_smallest_and_nan_never_wins(tmp_path):
    a = write_report(tmp_path / "a", "a.yaml", [20.0, 30.0], higher_is_better=False, metric="perplexity")
    b = write_report(tmp_path / "b", "b.yaml", [20.0, math.nan], higher_is_better=False, metric="perplexity")
    runs = load_runs([a, b])
    assert best_final(runs).label == "a"


def test_what_cannot_be_compared_is_refused_with_the_reason(tmp_path):
    with pytest.raises(CompareError, match="no report.json there"):
        load_run(tmp_path)
    (tmp_path / "report.json").write_text("{}")
    with pytest.raises(CompareError, match="not a recipe-compose report"):
        load_run(tmp_path)
    a = write_report(tmp_path / "a", "a.yaml", [0.9])
    b = write_report(tmp_path / "b", "b.yaml", [20.0], higher_is_better=False, metric="perplexity")
    with pytest.raises(CompareError, match="different metrics"):
        load_runs([a, b])
    with pytest.raises(CompareError, match="one --label per report"):
        load_runs([a], labels=["x", "y"])


def test_the_plot_starts_at_each_runs_baseline_and_draws_a_png(tmp_path):
    import json as _json

    from compose.evaluation.run_comparison import _from_baseline, plot

    folder = write_report(tmp_path / "a", "a.yaml", [0.5, 0.9, 0.88])
    data = _json.loads((folder / "report.json").read_text())
    data["baseline"] = {"stage": "s1"}
    data["baseline_stage"] = "s1"
    for stage, ci, retained in zip(data["stages"], (None, [1.0, 1.0], [0.95, 0.99]), (0.55, 1.0, 0.977)):
        stage["retained_ci"], stage["retained"] = ci, retained
        stage["latency"] = {"throughput_per_s": 100.0 * (1 + len(stage["name"]))}
    (folder / "report.json").write_text(_json.dumps(data))
    (run,) = load_runs([folder])
    assert [row.name for row in _from_baseline(run)] == ["s1", "s2"]  # not the untrained input row
    target = plot([run], tmp_path / "compare.png")
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and target.stat().st_size > 10_000
