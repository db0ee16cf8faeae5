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
    """The study's trials, less the twins a worker skipped (drawn while another worker ran the same
    settings: they never ran, and trials.jsonl does not list them)."""
    import optuna

    from compose.tune.driver import TWIN_OF, storage_for

    study = optuna.load_study(study_name="recipe", storage=storage_for(storage, folder))
    return [trial for trial in study.get_trials(deepcopy=False) if TWIN_OF not in trial.user_attrs]


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


@pytest.mark.parametrize("storage", [None, "journal", "postgresql"], ids=["sqlite", "journal", "postgresql"])
def test_a_trial_whose_worker_was_killed_is_retried_with_its_stages_kept(write_recipe, tmp_path, storage, request):
    from optuna.trial import TrialState

    recipe = write_recipe(STAGES, SEARCH)
    args = [str(recipe), "--output", str(tmp_path / "tune"), "--trials", "2", "-q"]
    if storage == "journal":  # Optuna's journal file (shared file systems) keeps its heartbeats in files
        storage = f"journal:{tmp_path / 'study.log'}"
        args += ["--storage", storage]
    elif storage == "postgresql":  # a real database server: Optuna's own RDB heartbeat
        storage = request.getfixturevalue("postgres_url")
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


def test_two_workers_on_a_postgresql_study_count_the_budget_once(write_recipe, tmp_path, postgres_url):
    recipe = write_recipe(STAGES, SEARCH)
    command = [*recipe_command(), "tune", str(recipe), "--output", str(tmp_path / "tune"), "--trials", "4"]
    command += ["--storage", postgres_url, "-q"]
    workers = [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(2)]
    for worker in workers:
        _, err = worker.communicate(timeout=HANG_S)
        assert worker.returncode == 0, err.decode()[-3000:]
    numbers = [record["number"] for record in lines(tmp_path / "tune")]
    assert len(numbers) == len(set(numbers))  # no trial run twice
    trials = study_trials(tmp_path / "tune", postgres_url)
    assert sorted(t.number for t in trials) == sorted(numbers)  # none lost
    assert 4 <= len(numbers) <= 5  # the budget counted once across workers (one may be mid-trial when it is met)


def test_workers_with_their_own_stage_stores_share_one_database(write_recipe, tmp_path, postgres_url):
    """Layout (b) of docs/tune.md: one store per machine, the study in a shared database."""
    recipe = write_recipe(STAGES, SEARCH)
    folders = [tmp_path / "machine-a", tmp_path / "machine-b"]
    workers = [
        subprocess.Popen(
            [*recipe_command(), "tune", str(recipe), "--output", str(folder), "--trials", "4"]
            + ["--storage", postgres_url, "--study", "shared", "-q"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for folder in folders
    ]
    for worker in workers:
        _, err = worker.communicate(timeout=HANG_S)
        assert worker.returncode == 0, err.decode()[-3000:]
    records = [record for folder in folders for record in lines(folder)]
    numbers = [record["number"] for record in records]
    assert len(numbers) == len(set(numbers)) >= 4  # one study: no trial twice, whichever machine ran it
    for folder in folders:  # each machine ran the fine-tune once at most and reused it from its own store
        runs = [name for record in lines(folder) for name in record["stage_runs"]]
        assert runs.count("ft") <= 1 and (folder / "stages").is_dir()


@pytest.mark.parametrize("broken", ["password", "port"])
def test_a_database_that_cannot_be_opened_is_said_with_its_password_hidden(
    write_recipe, tmp_path, postgres_server, broken
):
    recipe = write_recipe(STAGES, SEARCH)
    if broken == "password":
        url = postgres_server.url("postgres", password="not-the-s3cret")
    else:  # nothing listens there: refused at once (loopback only: no other address is ever contacted)
        url = f"postgresql+psycopg://postgres:not-the-s3cret@127.0.0.1:{_closed_port()}/postgres"
    started = time.perf_counter()
    done = subprocess.run(
        [*recipe_command(), "tune", str(recipe), "--output", str(tmp_path / "tune"), "--storage", url, "-q"],
        capture_output=True,
        text=True,
        timeout=HANG_S,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert time.perf_counter() - started < 30
    assert "cannot open the study's storage postgresql+psycopg://postgres:***@127.0.0.1:" in done.stderr
    assert "not-the-s3cret" not in done.stderr + done.stdout
    assert not (tmp_path / "tune").exists()  # nothing written


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
