"""SIGINT, SIGTERM and SIGKILL at exact points of a run: it stops, says so, and resumes to the same result.

The runs pause at named points of their progress (compose.run.interrupts.point) and are
signalled there, so no test depends on how fast this machine runs a stage.
"""

import json
import os
import signal
import subprocess

import pytest
from safetensors.torch import load_file

from compose.testing import HANG_S, PausedRun, recipe_command

STAGES = """\
- {name: a, uses: train, with: {max_steps: 20, batch_size: 16, learning_rate: 3.0e-3, eval_every_epoch: false}}
- {name: b, uses: train, with: {max_steps: 20, batch_size: 16, learning_rate: 1.0e-3, eval_every_epoch: false}}
- {name: c, uses: train, with: {max_steps: 20, batch_size: 16, learning_rate: 5.0e-4, eval_every_epoch: false}}
"""


def report_of(run):
    return json.loads((run / "report.json").read_text())


def comparable(report):
    return [(s["name"], s["metric"]["value"], s["params"], s["weights_bytes"]) for s in report["stages"]]


def weights(run, stage):
    return load_file(next((run / "stages").glob(f"*-{stage}")) / "model" / "model.safetensors")


def apply(recipe, run, *extra):
    return subprocess.run(
        [*recipe_command(), "apply", str(recipe), "--output", str(run), "-q", *extra],
        capture_output=True,
        text=True,
        timeout=HANG_S,
    )


@pytest.fixture(scope="module")
def reference(write_shared_recipe):
    """(recipe, the run folder of its uninterrupted run)."""
    recipe = write_shared_recipe(STAGES)
    run = recipe.parent / "reference"
    done = apply(recipe, run)
    assert done.returncode == 0, done.stderr[-3000:]
    return recipe, run


def _assert_resumes_to(recipe, run, reference_run, finished_before):
    done = apply(recipe, run)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = report_of(run)
    assert set(finished_before) <= set(resumed["reused_stages"])  # finished stages were not recomputed
    assert comparable(resumed) == comparable(report_of(reference_run))
    for stage in ("a", "b", "c"):
        got, want = weights(run, stage), weights(reference_run, stage)
        assert got.keys() == want.keys() and all((got[k] == want[k]).all() for k in want), stage


CASES = [
    (signal.SIGINT, "b/step 10"),  # training
    (signal.SIGTERM, "b/evaluating"),  # mid-evaluation
    (signal.SIGINT, "c/latency"),  # between timed calls
    (signal.SIGTERM, "b/saving"),  # the artifact written, not yet in place
    (signal.SIGINT, "a/report"),  # the report after a finished stage
    (signal.SIGKILL, "b/step 10"),  # no cleanup at all
]


@pytest.mark.parametrize(("how", "where"), CASES, ids=[f"{s.name}@{p}" for s, p in CASES])
def test_a_signal_at_a_point_stops_the_run_and_it_resumes_to_the_uninterrupted_result(reference, tmp_path, how, where):
    recipe, reference_run = reference
    run = tmp_path / "run"
    paused = PausedRun([str(recipe), "--output", str(run), "-q"], at=[where], folder=tmp_path)
    assert paused.wait_paused() == where
    paused.send(how)
    code = paused.wait()
    report = report_of(run)
    stopped_in = where.split("/")[0]
    if how == signal.SIGKILL:
        assert code == -signal.SIGKILL and report["status"] == "running"
    else:
        assert code == 130, paused.stderr()[-3000:]
        assert report["status"] == "interrupted" and report["exit_code"] == 130
        assert report["error"]["type"] == "Interrupted" and how.name in report["error"]["message"]
        assert not list(run.rglob("*.partial"))  # nothing half-written is left
        assert "was interrupted" in paused.stderr() and "Traceback" not in paused.stderr()
    finished = [s["name"] for s in report["stages"]]
    if where.endswith("/report"):
        assert stopped_in in finished  # the stage had finished; only its report line was pending
    else:
        assert stopped_in not in finished
    _assert_resumes_to(recipe, run, reference_run, finished)


def test_sigint_stops_a_run_that_was_started_with_sigint_ignored(reference, tmp_path):
    """The lost Ctrl-C: a job started in the background of a non-interactive shell (CI) inherits SIGINT as
    ignored, Python keeps an inherited SIG_IGN, and the run used to go on and exit 0. It stops now."""
    recipe, reference_run = reference
    run = tmp_path / "run"
    paused = PausedRun([str(recipe), "--output", str(run), "-q"], at=["b/step 5"], folder=tmp_path, sigint_ignored=True)
    assert paused.wait_paused() == "b/step 5"
    paused.send(signal.SIGINT)
    assert paused.wait() == 130 and report_of(run)["status"] == "interrupted"
    _assert_resumes_to(recipe, run, reference_run, ["input", "a"])


def test_a_second_signal_while_stopping_ends_the_run_at_once(reference, tmp_path):
    recipe, reference_run = reference
    run = tmp_path / "run"
    paused = PausedRun([str(recipe), "--output", str(run), "-q"], at=["b/step 3", "run/stopping"], folder=tmp_path)
    assert paused.wait_paused() == "b/step 3"
    paused.send(signal.SIGINT)
    assert paused.wait_paused() == "run/stopping"  # writing the interrupted run's report
    paused.send(signal.SIGTERM)
    assert paused.wait() == 130
    assert "SIGTERM again: stopping now" in paused.stderr()
    assert report_of(run)["status"] == "running"  # the last report written before the first signal
    _assert_resumes_to(recipe, run, reference_run, ["input", "a"])


def test_a_keyboard_interrupt_that_a_library_swallows_still_stops_the_run(write_recipe, tmp_path):
    """What lost a Ctrl-C: code that catches KeyboardInterrupt and goes on. The signal's flag still stops the run."""
    from compose import hookimpl
    from compose.api import StageType
    from compose.plugin_host import create_host
    from compose.recipe.load import load_recipe
    from compose.run import interrupts
    from compose.run.executor import Executor, RunOptions

    class Swallowing:
        @hookimpl
        def compose_register_stages(self, register):
            def run(ctx):
                try:
                    os.kill(os.getpid(), signal.SIGINT)  # a Ctrl-C arrives inside a library ...
                    for _ in range(1000):
                        sum(range(1000))
                except KeyboardInterrupt:  # ... that drops it (a bare `except:` does the same)
                    pass
                return None

            register(StageType("swallow", run, {"type": "object"}, "drops a KeyboardInterrupt"))

    host = create_host()
    host.register(Swallowing())
    stages = "- {name: eat, uses: swallow}\n- {name: ft, uses: train, with: {max_steps: 2}}\n"
    recipe = load_recipe(write_recipe(stages), host=host)
    with interrupts.handling_signals():
        report = Executor(recipe, host, RunOptions(output_dir=tmp_path / "run")).run()
    assert report.status == "interrupted" and report.exit_code == 130
    assert [row.name for row in report.rows] == ["input"]  # stopped at the next point: before saving 'eat'
    assert "SIGINT" in report.error["message"]


def test_sigterm_to_a_multi_process_run_stops_every_rank(write_recipe, tmp_path):
    recipe = write_recipe("- {name: ft, uses: train, with: {max_steps: 40, batch_size: 16, eval_every_epoch: false}}\n")
    run = tmp_path / "run"
    paused = PausedRun(
        ["--nproc", "2", str(recipe), "--output", str(run), "-q"], at=["ft/step 5"], folder=tmp_path, ranks=2
    )
    assert paused.wait_paused() == "ft/step 5"
    ranks = paused.paused_pids()
    paused.send(signal.SIGTERM)
    assert paused.wait() == 130, paused.stderr()[-3000:]
    report = report_of(run)
    assert report["status"] == "interrupted" and [s["name"] for s in report["stages"]] == ["input"]
    for pid in ranks:  # no rank is left running
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not list(run.rglob("*.partial"))
