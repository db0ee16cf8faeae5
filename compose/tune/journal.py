"""Optuna's journal storage with the heartbeat its database storages have.

Optuna's ``JournalStorage`` (a log file on a shared file system, for workers on several
machines) records no heartbeat, so a trial whose worker was killed stays "running" for ever
and is never retried. This subclass gives it the database storages' protocol
(``optuna.storages.RDBStorage``'s ``heartbeat_interval``, ``grace_period`` and
``heartbeat_stale_trial_callback``), with each running trial's heartbeat kept as the modification time of
one small file beside the journal (``JOURNAL.heartbeats/TRIAL_ID``): touching a file writes
nothing to the journal, and its age is measured against the file system's own clock (a probe
file touched just before), so the workers' machines need not agree on the time.

It stands on Optuna's heartbeat protocol, which is not public API: ``BaseHeartbeat`` (from
``optuna.storages._heartbeat``), its ``_get_stale_trial_ids`` and a frozen trial's ``_trial_id``.
``SUPPORTED_OPTUNA`` is the range in which they were checked (tests/compose/tune/test_journal.py
pins it, so an Optuna outside it fails the suite instead of a worker at run time), and is
pyproject.toml's bound. A database storage (``RDBStorage``: SQLite, PostgreSQL) needs none of
this: its heartbeat is Optuna's own.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from optuna.storages import JournalStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

#: The Optuna versions whose private heartbeat protocol this module was checked against: [low, high).
SUPPORTED_OPTUNA = ((5, 0), (6, 0))
#: The folder beside a journal file that holds its running trials' heartbeats.
HEARTBEATS_SUFFIX = ".heartbeats"


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """``JournalStorage`` over a file, whose running trials send a heartbeat every
    ``heartbeat_interval`` seconds; one silent for ``grace_period`` seconds is failed by the next
    worker that starts a trial, and ``heartbeat_stale_trial_callback`` (e.g.
    ``RetryHeartbeatStaleTrialCallback``) decides what follows."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        heartbeat_interval: int,
        grace_period: int,
        heartbeat_stale_trial_callback: Callable | None = None,
    ) -> None:
        super().__init__(JournalFileBackend(str(path)))
        self.heartbeats = Path(str(path) + HEARTBEATS_SUFFIX)
        self.heartbeats.mkdir(parents=True, exist_ok=True)
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.heartbeat_stale_trial_callback = heartbeat_stale_trial_callback

    def record_heartbeat(self, trial_id: int) -> None:
        (self.heartbeats / str(trial_id)).touch()

    def _now(self) -> float:
        """The file system's time: what a heartbeat file touched now would carry."""
        probe = self.heartbeats / f".now-{os.getpid()}"
        probe.touch()
        now = probe.stat().st_mtime
        probe.unlink(missing_ok=True)
        return now

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = self._now()
        stale = []
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            beat = self.heartbeats / str(trial._trial_id)
            try:
                last = beat.stat().st_mtime
            except FileNotFoundError:  # started, no heartbeat yet: its start (worker's clock) stands in
                started = trial.datetime_start or datetime.now()
                silent = (datetime.now() - started).total_seconds()
            else:
                silent = now - last
            if silent > self.grace_period:
                stale.append(trial._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Callable | None:
        return self.heartbeat_stale_trial_callback

    def set_trial_state_values(self, trial_id: int, state: TrialState, values=None) -> bool:
        updated = super().set_trial_state_values(trial_id, state, values)
        if state.is_finished():  # a finished trial's heartbeat is no longer needed
            (self.heartbeats / str(trial_id)).unlink(missing_ok=True)
        return updated
