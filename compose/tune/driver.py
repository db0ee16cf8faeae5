"""The study on Optuna: its storage, its sampler, the budget shared by every worker, lost trials.

Optuna keeps the study (``TUNE_DIR/study.db``, SQLite, by default; any database URL, or
``journal:PATH`` for Optuna's journal file on a shared file system), so several ``recipe
tune`` processes, on one machine or several, add trials to one study, and a killed one
continues it when started again. Each worker records its running trial's heartbeat; a
trial whose worker fell silent is failed by the next worker and retried with its settings
(``RetryHeartbeatStaleTrialCallback``), and does not count against the budget.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from compose.recipe.search_space import choice_value
from compose.run.run_folder import waiting_lock

#: Optuna's direction of each objective.
DIRECTIONS = {"size": "minimize", "throughput": "maximize", "latency": "minimize"}
#: The name of a trial's feasibility constraint: the floor minus its judged retained (feasible at <= 0).
FLOOR_CONSTRAINT = "retained_floor"
#: The study's default database, in the tune folder.
STUDY_DB = "study.db"


def storage_for(url: str | None, tune_dir: Path, stale_after: float = 300.0):
    """Optuna's storage: SQLite in the tune folder by default, a database URL, or ``journal:PATH``.

    Each worker records its running trial's heartbeat (a database in a table, a journal in a file
    beside it); a trial whose worker fell silent for ``stale_after`` seconds (killed, its machine
    lost) is marked failed by the next worker that starts a trial, and retried with the same
    settings (in the same run folder, so the stages it finished are kept).
    """
    import optuna

    heartbeat = {
        "heartbeat_interval": max(1, int(min(60, stale_after / 3))),
        "grace_period": max(2, int(stale_after)),
        "heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2),
    }
    if url and url.startswith("journal:"):
        from compose.tune.journal import HeartbeatJournalStorage

        return HeartbeatJournalStorage(url.removeprefix("journal:"), **heartbeat)
    url = url or f"sqlite:///{(tune_dir / STUDY_DB).resolve()}"
    if url.startswith("sqlite"):  # SQLite serialises writers: wait for another worker's write, not fail
        engine = {"connect_args": {"timeout": 120}}
    elif url.startswith("postgresql"):  # a server that does not answer is said within seconds
        engine = {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}, "pool_pre_ping": True}
    else:
        engine = None
    return _database(url, engine, heartbeat)


#: Seconds to wait for a database server before saying it cannot be reached.
CONNECT_TIMEOUT_S = 10


class StorageError(Exception):
    """The study's storage cannot be opened: the message names it with its password hidden."""


def masked(url: str) -> str:
    """``url`` with its password hidden (what messages and the report may show)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy reads: hide anything between ':' and '@'
        import re

        return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", url)


def _database(url: str, engine, heartbeat):
    """Optuna's RDB storage on ``url``, connected now. Workers that start together on a new database race to
    create its tables: the loser tries again once they exist."""
    import time

    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    for attempt in range(3):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine, **heartbeat)
        except (SQLAlchemyError, ImportError) as exc:
            cause = exc
            text = (
                str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
                if str(exc).strip()
                else type(exc).__name__
            )
            racing = "already exists" in str(exc) or "duplicate key" in str(exc)
            if not racing or attempt == 2:
                raise StorageError(
                    f"cannot open the study's storage {masked(url)}: {masked(text)}; nothing ran. Check the host, "
                    "port, database, user and password (and that the server accepts connections from here)"
                ) from None
            time.sleep(0.5 + attempt)
    raise StorageError(f"cannot open the study's storage {masked(url)}: {cause}")  # pragma: no cover


def params_of(trial) -> dict:
    """A trial's settings as it ran them: stepped floats as written (0.6, not Optuna's 0.6000000000000001),
    list and map choices as the values they stand for (Optuna stores them as JSON text)."""
    return {
        path: round(value, 10) if isinstance(value, float) else choice_value(value)
        for path, value in trial.params.items()
    }


def lost(trial) -> bool:
    """A trial whose worker died under it (failed by the heartbeat check, not by its recipe): retried."""
    from optuna.trial import TrialState

    return trial.state == TrialState.FAIL and "error" not in trial.user_attrs and "interrupted" not in trial.user_attrs


def finished(study) -> int:
    """The study's trials that count against its budget: complete, pruned or failed, not interrupted, lost
    or skipped as another running trial's twin."""
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    return sum(
        1
        for trial in done
        if not trial.user_attrs.get("interrupted") and TWIN_OF not in trial.user_attrs and not lost(trial)
    )


#: The user attribute of a trial skipped because another worker was running the same settings.
TWIN_OF = "twin_of"
#: Twins a worker skips in a row before it runs one anyway (a search space smaller than the workers).
MAX_TWINS_IN_A_ROW = 3


def running_twin(trial) -> int | None:
    """The number of another trial running now with ``trial``'s settings, or None.

    Workers that start together drew alike before their samplers were seeded apart; a twin would
    run the same stages again in a second folder, so the caller skips it and reseeds its sampler.
    """
    from optuna.trial import TrialState

    params = trial.params
    for other in trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if other.number != trial.number and other.params == params:
            return other.number
    return None


class Budget:
    """Stop this worker once the study (every worker together) has ``trials`` finished trials."""

    def __init__(self, trials: int):
        self.trials = trials

    def __call__(self, study, trial) -> None:
        if finished(study) >= self.trials:
            study.stop()


def open_study(
    name: str, storage_url: str | None, tune_dir: Path, objectives: list[str], seed: int, stale_after: float
):
    """The study (created, or loaded when another worker or an earlier run made it): TPE for one objective,
    NSGA-II for several, both told which trials are feasible (each trial's ``FLOOR_CONSTRAINT``).

    The sampler is seeded with ``seed`` plus the number of trials the study already holds: a worker that
    joins a study, or continues it after a stop, does not draw again what the first draws were (a
    sampler's random state is not stored). Workers that start together on a new study see the same
    count; the first trial each draws that another worker is running is skipped (``running_twin``).
    """
    import optuna

    from compose.quiet import verbose

    # trials are recorded (and failures explained) by trials.jsonl and the report, not by Optuna's log
    optuna.logging.set_verbosity(optuna.logging.INFO if verbose() else optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # feasibility: each trial's own constraint (``Trial.set_constraint``, FLOOR_CONSTRAINT), read by both samplers
    sampler = optuna.samplers.TPESampler if len(objectives) == 1 else optuna.samplers.NSGAIISampler

    # a database or journal given by URL is opened first: one that cannot be reached leaves nothing behind
    storage = storage_for(storage_url, tune_dir, stale_after) if storage_url else None
    tune_dir.mkdir(parents=True, exist_ok=True)
    # two workers starting together must not both create the default database's tables
    with waiting_lock(tune_dir / ".study.lock"):
        study = optuna.create_study(
            study_name=name,
            storage=storage or storage_for(storage_url, tune_dir, stale_after),
            sampler=sampler(seed=seed),
            directions=[DIRECTIONS[objective] for objective in objectives],
            load_if_exists=True,
        )
    held = len(study.get_trials(deepcopy=False))
    if held:
        study.sampler = sampler(seed=seed + held)
    return study
