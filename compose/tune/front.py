"""The front of a study and the order its winner is chosen in.

The front is Optuna's own (``study.best_trials``: the complete trials that no other beats
on every objective, among the feasible ones, where the samplers' constraints mark
feasibility). Speed measured in separate trial processes moves with the machine's state,
so before a winner is named the front's final models (and, with ``--compare-with``, the
hand-written run's) are measured again side by side in this process, in interleaved
rounds (``SideBySide``), and the front is ranked on those numbers: by the first objective,
with the members that beat the hand-written run on every objective first.
"""

from __future__ import annotations

import json
import statistics
from functools import cached_property
from pathlib import Path

from compose.tune.driver import DIRECTIONS, params_of

#: Rounds of the side-by-side speed measurement (the median counts).
REMEASURE_ROUNDS = 3
#: Where a side-by-side measurement keeps each speed objective.
SPEED_KEYS = {"throughput": "throughput_per_s", "latency": "batch1_p50_ms"}
#: The side-by-side key of the hand-written run's model (--compare-with).
REFERENCE = "reference"


def pareto_front(study, objectives: list[str]) -> list:
    """The feasible finished trials no other feasible one beats on every objective, best first by the
    objectives in order; one entry per settings (a sampler may draw the same settings twice)."""
    signs = [1 if DIRECTIONS[name] == "minimize" else -1 for name in objectives]
    front, seen = [], []
    for trial in sorted(study.best_trials, key=lambda t: ([s * v for s, v in zip(signs, t.values)], t.number)):
        if params_of(trial) not in seen:
            seen.append(params_of(trial))
            front.append(trial)
    return front


def measured(trial, objectives: list[str], name: str, side_by_side: dict) -> float:
    """A front member's objective ``name``: speed as re-measured side by side, size as its trial found it."""
    value = trial.values[objectives.index(name)]
    again = side_by_side.get(trial.number) or {}
    return again.get(SPEED_KEYS.get(name), value)


def beats_reference(trial, objectives: list[str], side_by_side: dict, reference) -> bool | None:
    """Whether ``trial`` is better than the hand-written run (``reference``, its final row) on every
    objective, speed side by side; None without a reference measured beside it."""
    theirs_measured = side_by_side.get(REFERENCE)
    if reference is None or not theirs_measured:
        return None
    theirs = {"size": reference.size_bytes, **{n: theirs_measured[k] for n, k in SPEED_KEYS.items()}}
    for name in objectives:
        mine, other = measured(trial, objectives, name, side_by_side), theirs[name]
        if other is None or (mine >= other if DIRECTIONS[name] == "minimize" else mine <= other):
            return False
    return True


def ranked(front: list, objectives: list[str], side_by_side: dict, reference=None) -> list:
    """The front in the order the winner is chosen: by the first objective, speed as re-measured; with a
    hand-written run to compare with, the members that beat it on every objective first."""
    sign = 1 if DIRECTIONS[objectives[0]] == "minimize" else -1

    def order(trial):
        beats = beats_reference(trial, objectives, side_by_side, reference)
        return (beats is False, sign * measured(trial, objectives, objectives[0], side_by_side))

    return sorted(front, key=order)


class SideBySide:
    """Speed of several final models measured in one process, in interleaved rounds (a, b, c, a, b, c...),
    so that they share the machine's state. ``task_recipe``: a validated recipe whose task and
    ``evaluate.latency`` the measurements use (built once, on first use)."""

    def __init__(self, host, task_recipe):
        self.host = host
        self._task_recipe = task_recipe

    @cached_property
    def _setup(self) -> tuple:
        from compose.tasks import build_task

        data = self._task_recipe().data
        return build_task(data["task"], data["seed"]), data["evaluate"]["latency"]

    def measure(self, finals: dict, split: str) -> dict:
        """{key: median speed} of each final stage row's (``artifact``, ``plugin``) model on ``split``;
        empty where one cannot be loaded."""
        from compose.evaluation.latency import measure_latency
        from compose.run.artifacts import load_stage_artifact

        task, settings = self._setup
        models = {}
        for key, final in finals.items():
            loaded = load_stage_artifact(final["artifact"], self.host, final["plugin"])
            if loaded is None:
                return {}
            models[key] = loaded
        found = {key: [] for key in models}
        for _ in range(REMEASURE_ROUNDS):
            for key, (model, tokenizer) in models.items():
                found[key].append(measure_latency(model.eval(), tokenizer, task, split, settings, "cpu"))
        return {
            key: {
                "throughput_per_s": statistics.median(m.throughput_per_s for m in runs),
                "batch1_p50_ms": statistics.median(m.batch1_p50_ms for m in runs),
                "threads": runs[0].threads,
            }
            for key, runs in found.items()
        }

    def front(self, front: list, records: list[dict], objectives: list[str], split: str, reference=None) -> dict:
        """{trial number: median speed} of every front member's final model, and with a ``reference`` (the
        hand-written run's final row) its model's under ``REFERENCE``; empty where there is nothing to
        compare, or speed is not an objective."""
        compared = len(front) + (reference is not None and bool(front))
        if compared < 2 or not {"throughput", "latency"} & set(objectives):
            return {}
        latest = {r["number"]: r["run_dir"] for r in records}
        finals = {}
        for trial in front:  # a trial another worker ran: its folder as the study records it
            folder = Path(latest.get(trial.number) or trial.user_attrs.get("run_dir") or "")
            if not (folder / "report.json").is_file():
                return {}  # on another machine (one store per machine): its model cannot be measured here
            finals[trial.number] = json.loads((folder / "report.json").read_text(encoding="utf-8"))["stages"][-1]
        if reference is not None:
            finals[REFERENCE] = {"artifact": reference.artifact, "plugin": reference.plugin}
        return self.measure(finals, split)
