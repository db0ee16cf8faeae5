"""The journal storage's heartbeat stands on Optuna's private protocol: pinned to the versions it was checked on."""

from __future__ import annotations

import re
from pathlib import Path

import optuna

from compose.tune.journal import SUPPORTED_OPTUNA, HeartbeatJournalStorage

ROOT = Path(__file__).resolve().parents[3]


def version_tuple(text: str) -> tuple[int, int]:
    major, minor = re.match(r"(\d+)\.(\d+)", text).groups()
    return int(major), int(minor)


def test_the_installed_optuna_is_one_the_journal_heartbeat_was_checked_on():
    low, high = SUPPORTED_OPTUNA
    assert low <= version_tuple(optuna.__version__) < high, (
        f"optuna {optuna.__version__} is outside {low}-{high}: recheck compose/tune/journal.py's private APIs"
    )


def test_pyprojects_bound_is_the_supported_range():
    low, high = SUPPORTED_OPTUNA
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert f'"optuna>={low[0]}.{low[1]},<{high[0]}"' in pyproject


def test_the_private_protocol_it_overrides_is_still_there():
    from optuna.storages._heartbeat import BaseHeartbeat

    for name in (
        "_get_stale_trial_ids",
        "record_heartbeat",
        "get_heartbeat_interval",
        "get_heartbeat_stale_trial_callback",
    ):
        assert hasattr(BaseHeartbeat, name), name
        assert name in HeartbeatJournalStorage.__dict__, name
    assert not getattr(HeartbeatJournalStorage, "__abstractmethods__", frozenset())
    assert hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback")
