"""Progress on stderr: plain lines at a bounded interval when stderr is not a terminal."""

import io

import pytest
from rich.console import Console

from compose.cli.main import main
from compose.progress import INTERVAL_ENV, Progress, interval_from_env


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def plain_progress(interval: float = 30):
    stream, clock = io.StringIO(), FakeClock()
    progress = Progress(Console(file=stream, width=200), interval=interval, clock=clock)  # a file: not a terminal
    return progress, stream, clock


def test_a_line_at_most_once_per_interval_with_step_total_rate_and_eta():
    progress, stream, clock = plain_progress(interval=30)
    assert progress.plain
    with progress.track("finetune: training", total=375) as bar:
        for _ in range(100):  # 100 steps in 20 s: no line yet
            clock.now += 0.2
            bar.advance()
        assert stream.getvalue() == ""
        for _ in range(100):  # 100 more in the next 20 s: one line, when 30 s have passed
            clock.now += 0.2
            bar.advance()
    lines = stream.getvalue().splitlines()
    assert lines == ["[progress] finetune: training: 150/375 (40%), 5/s, elapsed 30s, ETA 45s"]


def test_the_rate_is_the_recent_one_and_the_description_follows_updates():
    progress, stream, clock = plain_progress(interval=10)
    with progress.track("distill: training", total=100) as bar:
        clock.now += 10
        bar.advance(10)  # 1/s
        bar.update(description="distill: training (loss 0.5000)")
        clock.now += 10
        bar.advance(40)  # then 4/s
    lines = stream.getvalue().splitlines()
    assert lines[0] == "[progress] distill: training: 10/100 (10%), 1/s, elapsed 10s, ETA 1m30s"
    assert lines[1] == "[progress] distill: training (loss 0.5000): 50/100 (50%), 4/s, elapsed 20s, ETA 12s"


def test_work_resumed_part_way_counts_its_rate_from_where_it_started():
    progress, stream, clock = plain_progress(interval=30)
    with progress.track("long: training", total=200, completed=150) as bar:
        clock.now += 30
        bar.advance(30)
    assert stream.getvalue().splitlines() == ["[progress] long: training: 180/200 (90%), 1/s, elapsed 30s, ETA 20s"]


def test_work_without_a_total_says_how_long_it_has_run():
    progress, stream, clock = plain_progress(interval=30)
    with progress.track("q: GPTQModel's own path (gptq)") as bar:
        clock.now += 95
        bar.update()
    assert stream.getvalue().splitlines() == ["[progress] q: GPTQModel's own path (gptq): 0, elapsed 1m35s"]


def test_the_heartbeat_prints_while_a_single_step_takes_long():
    progress, stream, clock = plain_progress(interval=30)
    with progress.track("ft: training", total=10):
        clock.now += 31
        progress._lines.tick()  # what the background thread does every interval
    assert stream.getvalue().splitlines() == ["[progress] ft: training: 0/10 (0%), elapsed 31s"]


def test_interval_zero_prints_no_progress_lines_and_logs_still_print():
    progress, stream, clock = plain_progress(interval=0)
    with progress, progress.track("ft: training", total=10) as bar:
        clock.now += 1000
        bar.advance(5)
        progress.log("[ft] a log line")
    assert stream.getvalue() == "[ft] a log line\n"


def test_a_terminal_gets_the_live_bars_not_lines():
    progress = Progress(Console(file=io.StringIO(), force_terminal=True), interval=30)
    assert not progress.plain


@pytest.mark.parametrize("value, expected", [(None, 30.0), ("5", 5.0), ("0", 0.0), ("2.5", 2.5)])
def test_the_interval_comes_from_the_environment(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv(INTERVAL_ENV, raising=False)
    else:
        monkeypatch.setenv(INTERVAL_ENV, value)
    assert interval_from_env() == expected


@pytest.mark.parametrize("value", ["often", "-3", "nan"])
def test_a_bad_interval_stops_apply_before_anything_runs(monkeypatch, write_recipe, tmp_path, capsys, value):
    monkeypatch.setenv(INTERVAL_ENV, value)
    out = tmp_path / "run"
    assert main(["apply", str(write_recipe("- {name: ft, uses: train, with: {max_steps: 1}}")), "-o", str(out)]) == 2
    assert f"{INTERVAL_ENV}='{value}'" in capsys.readouterr().err and not out.exists()


def test_apply_with_stderr_in_a_file_prints_training_progress_lines(monkeypatch, write_recipe, tmp_path, capsys):
    monkeypatch.setenv(INTERVAL_ENV, "0.001")  # every event, so that a short run prints some
    recipe = write_recipe("- {name: ft, uses: train, with: {max_steps: 5, eval_every_epoch: false}}")
    assert main(["apply", str(recipe), "-o", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err  # capsys: stderr is not a terminal
    assert any(line.startswith("[progress] ft: training") and "/5 (" in line for line in err.splitlines()), err
