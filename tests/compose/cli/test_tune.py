"""`recipe tune` as users run it: two workers share one SQLite study, and an interrupted study continues."""

import json
import signal
import subprocess
import time

import pytest

from compose.testing import HANG_S, PausedRun, recipe_command
from compose.tune.study import TRIALS_FILE

STAGES = """\
- {name: ft, uses: train, with: {max_steps: 4, batch_size: 16, eval_every_epoch: false}}
- {name: prune, uses: prune-ffn, with: {ratio: 0.25, importance: magnitude}}
- {name: heads, uses: prune-heads, with: {heads_per_layer: 1, importance: magnitude}}
"""
SEARCH = """\
search:
  space:
    - {path: stages.prune.with.ratio, choices: [0.25, 0.375, 0.5]}
    - {path: stages.heads, optional: true}
  min_retained: 0.05
  judged_on: point
"""


def lines(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / TRIALS_FILE).read_text().splitlines()]


def study_trials(folder, storage: str | None = None) -> list:
    import optuna

    from compose.tune.driver import storage_for

    return optuna.load_study(study_name="recipe", storage=storage_for(storage, folder)).get_trials(deepcopy=False)


def test_two_workers_add_trials_to_one_sqlite_study_without_repeating_one(write_recipe, tmp_path):
    recipe = write_recipe(STAGES, SEARCH)
    command = [*recipe_command(), "tune", str(recipe), "--output", str(tmp_path / "tune"), "--trials", "4", "-q"]
    workers = [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(2)]
    for worker in workers:
        _, err = worker.communicate(timeout=HANG_S)
        assert worker.returncode == 0, err.decode()[-3000:]
    found = lines(tmp_path / "tune")
    numbers = [record["number"] for record in found]
    assert len(numbers) == len(set(numbers)) >= 4  # no trial run twice, none lost (a worker may finish one more)
    trials = study_trials(tmp_path / "tune")
    assert sorted(t.number for t in trials) == sorted(numbers)
    runs = [name for record in found for name in record["stage_runs"]]
    assert runs.count("ft") <= 2  # the fine-tune ran at most once per worker, then came from the store


def test_an_interrupted_study_continues_with_the_trial_it_stopped_in(write_recipe, tmp_path):
    recipe = write_recipe(STAGES, SEARCH)
    args = [str(recipe), "--output", str(tmp_path / "tune"), "--trials", "2", "-q"]
    run = PausedRun(args, at=["heads/start"], folder=tmp_path / "pause", command="tune")
    assert run.wait_paused() == "heads/start"
    run.send(signal.SIGINT)
    assert run.wait() == 130, run.stderr()[-3000:]
    assert "run the same command again to continue" in run.stderr()
    (stopped,) = [t for t in study_trials(tmp_path / "tune") if t.user_attrs.get("interrupted")]

    done = subprocess.run([*recipe_command(), "tune", *args], capture_output=True, text=True, timeout=HANG_S)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = min((r for r in lines(tmp_path / "tune") if r["number"] > stopped.number), key=lambda r: r["number"])
    assert resumed["params"] == stopped.params  # the interrupted trial ran first, in the same folder
    assert resumed["reused_stages"] == ["input", "ft", "prune"] and resumed["stage_runs"] == ["heads"]
    finished = [t for t in study_trials(tmp_path / "tune") if not t.user_attrs.get("interrupted")]
    assert len(finished) == 2  # the interruption did not use up the budget


@pytest.mark.parametrize("storage", [None, "journal"], ids=["sqlite", "journal"])
def test_a_trial_whose_worker_was_killed_is_retried_with_its_stages_kept(write_recipe, tmp_path, storage):
    from optuna.trial import TrialState

    recipe = write_recipe(STAGES, SEARCH)
    args = [str(recipe), "--output", str(tmp_path / "tune"), "--trials", "2", "-q"]
    if storage == "journal":  # Optuna's journal file (shared file systems) keeps its heartbeats in files
        storage = f"journal:{tmp_path / 'study.log'}"
        args += ["--storage", storage]
    run = PausedRun(args, at=["heads/start"], folder=tmp_path / "pause", command="tune")
    assert run.wait_paused() == "heads/start"
    run.send(signal.SIGKILL)  # no handler runs: the trial stays 'running' in the study
    assert run.wait() == -signal.SIGKILL
    (killed,) = [t for t in study_trials(tmp_path / "tune", storage) if t.state == TrialState.RUNNING]
    time.sleep(2.5)  # its last heartbeat is now older than the --stale-after below, whatever the machine's speed

    # a later worker finds it silent for longer than --stale-after, fails it and retries its settings
    done = subprocess.run(
        [*recipe_command(), "tune", *args, "--stale-after", "2"], capture_output=True, text=True, timeout=HANG_S
    )
    assert done.returncode == 0, done.stderr[-3000:]
    trials = study_trials(tmp_path / "tune", storage)
    assert [t.state for t in trials if t.number == killed.number] == [TrialState.FAIL]
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert retry.params == killed.params and retry.state == TrialState.COMPLETE
    (record,) = [r for r in lines(tmp_path / "tune") if r["number"] == retry.number]
    assert record["reused_stages"] == ["input", "ft", "prune"] and record["stage_runs"] == ["heads"]
    counted = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(counted) == 2  # the lost trial did not use up the budget
