"""The report: ratios against the baseline, the table's columns, old report.json files."""

import io
import json

import pytest
from rich.console import Console

from compose.cli.main import main
from compose.evaluation.report import Report, StageRow, render_table, report_from_json


def speed(throughput: float, p50: float = 2.0, p95: float = 3.0) -> dict:
    return {
        "threads": 2,
        "device": "cpu",
        "batch1_p50_ms": p50,
        "batch1_p95_ms": p95,
        "batch1_samples": 50,
        "throughput_per_s": throughput,
        "batch_size": 64,
        "throughput_batches": 5,
    }


def row(name, value, size, latency, plugin=None) -> StageRow:
    return StageRow(
        name=name,
        plugin=plugin,
        metric="accuracy",
        value=value,
        params=1_000_000,
        size_bytes=size,
        weights_bytes=size,
        latency_ms=None,
        seconds=1.0,
        artifact=None,
        latency=latency,
    )


@pytest.fixture
def report() -> Report:
    made = Report(
        recipe="r.yaml",
        run_dir="runs/r",
        metric="accuracy",
        higher_is_better=True,
        baseline_stage="ft",
        status="passed",
    )
    made.rows = [
        row("input", 0.5, 90_000_000, speed(100.0)),
        row("ft", 0.9, 80_000_000, speed(125.0), "train"),
        row("small", 0.88, 10_000_000, speed(500.0, 0.5, 0.9), "distill"),
        row("unmeasured", 0.87, None, None, "gptq"),
    ]
    made.refresh_retained()
    return made


def test_speedup_and_size_ratio_are_against_the_baseline(report):
    speedups = [r.speedup for r in report.rows]
    ratios = [r.size_ratio for r in report.rows]
    assert speedups == [pytest.approx(0.8), 1.0, pytest.approx(4.0), None]
    assert ratios == [pytest.approx(80 / 90), 1.0, pytest.approx(8.0), None]
    data = report.to_json()
    assert data["stages"][2]["speedup"] == pytest.approx(4.0) and data["stages"][2]["size_ratio"] == pytest.approx(8.0)
    assert data["stages"][2]["latency"]["batch1_p95_ms"] == 0.9
    assert report_from_json(json.loads(json.dumps(data))).rows[2] == report.rows[2]


def test_no_baseline_speed_no_speedup(report):
    report.rows[1].latency = None
    report.refresh_retained()
    assert [r.speedup for r in report.rows] == [None] * 4
    assert report.rows[2].size_ratio == pytest.approx(8.0)


def table_text(report: Report) -> str:
    buffer = io.StringIO()
    render_table(report, Console(file=buffer, width=160, color_system=None))
    return buffer.getvalue()


def test_table_shows_latency_throughput_and_both_ratios(report):
    text = table_text(report)
    for header in ("b1 p50", "b64 ex/s", "x faster", "x smaller"):
        assert header in text
    assert "latency/batch" not in text
    small = next(line for line in text.splitlines() if "small" in line and "distill" in line)
    assert "0.5 ms" in small and "500" in small and "4.00x" in small and "8.00x" in small
    assert "speed at 2 thread(s) on cpu" in text and "median latency of 50 single examples" in text


def test_an_old_report_without_speed_fields_still_loads_and_renders(report):
    data = report.to_json()
    for stage in data["stages"]:  # as written before latency, speedup and size_ratio existed
        for key in ("latency", "speedup", "size_ratio"):
            del stage[key]
    old = report_from_json(data)
    assert [r.latency for r in old.rows] == [None] * 4 and old.rows[2].speedup is None
    text = table_text(old)
    assert "x faster" in text and "speed at" not in text


def test_compare_shows_speed_and_ratios_of_each_run(report, tmp_path, capsys):
    paths = []
    for label in ("a", "b"):
        folder = tmp_path / label
        folder.mkdir()
        (folder / "report.json").write_text(json.dumps(report.to_json()), encoding="utf-8")
        paths.append(str(folder))
    report.rows.pop()  # the last row is the final model: give run c a measured one
    report.refresh_retained()
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "report.json").write_text(json.dumps(report.to_json()), encoding="utf-8")
    assert main(["compare", *paths, str(tmp_path / "c"), "--no-plot"]) == 0
    out = capsys.readouterr().out
    for label in (
        "b1 p50 / p95",
        "throughput (ex/s)",
        "x faster (own baseline)",
        "x smaller (own baseline)",
        "measured at",
        "2 threads, cpu, batch 64",
        "4.00x",
        "8.00x",
        "0.5 ms / 0.9 ms",
    ):
        assert label in out, label
    assert main(["compare", *paths, str(tmp_path / "c"), "--no-plot", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    final = data["runs"][2]["final"]
    assert final["speedup"] == pytest.approx(4.0) and final["size_ratio"] == pytest.approx(8.0)
    assert final["latency"]["throughput_per_s"] == 500.0 and data["runs"][0]["final"]["latency"] is None
