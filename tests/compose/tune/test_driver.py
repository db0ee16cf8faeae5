"""compose.tune.driver on a real SQLite study: workers that join or continue a study draw new settings, and
a worker that draws what another is running skips it without spending the budget."""

import optuna
import pytest

from compose.tune.driver import TWIN_OF, finished, open_study, running_twin
from compose.tune.study import Study, TuneOptions

# the tests ask trials by hand, as Optuna's ask-and-tell does, where `recipe tune` runs Study.optimize
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")


def first_draw(study) -> tuple:
    trial = study.ask()
    return trial, (trial.suggest_float("lr", 1e-5, 1e-2, log=True), trial.suggest_int("steps", 1, 1000))


def test_a_worker_that_joins_a_study_does_not_draw_the_first_workers_settings_again(tmp_path):
    first = open_study("s", None, tmp_path, ["size"], seed=0, stale_after=300)
    trial, drawn = first_draw(first)
    first.tell(trial, 1.0)
    joined = open_study("s", None, tmp_path, ["size"], seed=0, stale_after=300)
    _, again = first_draw(joined)
    assert again != drawn  # seeded 0 + 1 trial held, not 0 again
    fresh = open_study("other", None, tmp_path, ["size"], seed=0, stale_after=300)
    assert first_draw(fresh)[1] == drawn  # a new study seeded alike draws alike: the seed still decides


def test_a_trial_drawing_what_another_worker_runs_is_its_twin_and_does_not_count(tmp_path):
    worker_a = open_study("s", None, tmp_path, ["size"], seed=0, stale_after=300)
    worker_b = open_study("s", None, tmp_path, ["size"], seed=0, stale_after=300)  # started together: same seed
    running, drawn = first_draw(worker_a)
    twin, again = first_draw(worker_b)
    assert again == drawn and running_twin(twin) == running.number
    twin.set_user_attr(TWIN_OF, running.number)
    worker_b.tell(twin, state=optuna.trial.TrialState.PRUNED)
    worker_a.tell(running, 1.0)
    assert finished(worker_a) == 1  # the skipped twin did not use up the budget
    later, _ = first_draw(worker_b)
    assert running_twin(later) is None  # nothing runs now: a draw equal to a finished trial is no twin


def test_the_study_skips_a_twin_before_running_it_and_reseeds_its_sampler(write_recipe, host, tmp_path):
    recipe = write_recipe(
        "- {name: ft, uses: train, with: {max_steps: 2, batch_size: 16}}\n",
        "search:\n  space:\n    - {path: stages.ft.with.learning_rate, low: 1.0e-5, high: 1.0e-2, log: true}\n",
    )
    options = TuneOptions(recipe=recipe, output=tmp_path / "tune", trials=2)
    worker_a, worker_b = Study(options, host), Study(options, host)
    study_a, study_b = worker_a.optuna_study(), worker_b.optuna_study()
    running = study_a.ask()
    for dimension in worker_a.space:
        dimension.suggest(running)
    twin = study_b.ask()
    with pytest.raises(optuna.TrialPruned, match=f"trial {running.number} runs these settings now"):
        worker_b.objective(twin)
    assert not (tmp_path / "tune" / "trials.jsonl").exists()  # nothing ran
    stored = study_b.get_trials(deepcopy=False)[twin.number]
    assert stored.user_attrs[TWIN_OF] == running.number
    # reseeded: the two workers, seeded alike and seeing the same trials, now draw apart
    draws = []
    for worker, study in ((worker_a, study_a), (worker_b, study_b)):
        trial = study.ask()
        draws.append([dimension.suggest(trial) for dimension in worker.space])
    assert draws[0] != draws[1]
