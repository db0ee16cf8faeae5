"""A trial: its recipe, built once as the study's recipe with the trial's settings, and its run.

A trial's settings (``search_space``) become overrides of the recipe, the same ``key=value``
overrides the command line takes (they are what the report and best.yaml show); the trial
runs in its own run folder under ``TUNE_DIR/trials/`` (named by its settings, so a trial
that was cut short resumes where it stopped), seeded from the study's stage store so that
stages an earlier trial already ran are reused, not recomputed. Its final row gives the
objectives; its retained metric, judged as the search says, decides whether it is feasible.
Each finished trial is one line of ``trials.jsonl``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from contextlib import ExitStack
from pathlib import Path

from compose import atomic
from compose.recipe.composition import apply_overrides
from compose.recipe.load import validate_document
from compose.recipe.search_space import trial_overrides
from compose.tune import store

#: One line per finished trial, in the tune folder.
TRIALS_FILE = "trials.jsonl"
#: The split carved from train when search.selection_share is set.
SELECTION = "selection"


def objective_values(row, objectives: list[str]) -> list[float] | None:
    """The final row's objectives, or None where the row lacks one (speed was not measured)."""
    latency = row.latency or {}
    found = {
        "size": row.size_bytes,
        "throughput": latency.get("throughput_per_s"),
        "latency": latency.get("batch1_p50_ms"),
    }
    values = [found[name] for name in objectives]
    return None if any(v is None for v in values) else [float(v) for v in values]


def judged_retained(row, judged_on: str) -> float | None:
    if judged_on == "interval_low" and row.retained_ci:
        return row.retained_ci[0]
    return row.retained


def _source(spec: dict) -> dict:
    """Where a split's rows come from (file or dataset), without how many are read or in what order."""
    return {k: v for k, v in spec.items() if k not in ("limit", "shuffle", "holdout")}


class TrialRecipes:
    """The recipes of a study's trials, each built and validated once (the winner's is reused by its final
    evaluation and best.yaml)."""

    def __init__(self, doc, path: Path, host, recipe):
        self.doc, self.path, self.host = doc, path, host
        self.data = recipe.data
        self.search = recipe.data["search"]
        self.evaluation_split = recipe.data["evaluate"]["split"]
        self.carved = self.search["selection_share"] is not None and not self.search["selection_split"]
        self.selection_split = (
            self.search["selection_split"] or (SELECTION if self.carved else None) or self.evaluation_split
        )
        self._built: dict[tuple, tuple] = {}

    def build(self, space, params: dict, *, final: bool = False):
        """(overrides, the validated recipe) of the trial with ``params``: evaluated on the selection split,
        or (``final``) as the winner is reported, on the evaluation split. Built once per settings."""
        key = (json.dumps(params, sort_keys=True, default=str), final)
        if key not in self._built:
            overrides = trial_overrides(space, params)
            doc = apply_overrides(self.doc, overrides + self._carving(), Path.cwd())
            doc.pop("search", None)
            doc.setdefault("evaluate", {})
            doc["evaluate"]["split"] = self.evaluation_split if final else self.selection_split
            self._built[key] = (overrides, validate_document(doc, self.path, self.host))
        return self._built[key]

    def with_floor_gates(self, recipe):
        """``recipe`` (a copy, where it changes) with gates that stop the trial after the first compressing stage
        below the floor (the executor judges them): a built recipe is reused, so it is not changed in place."""
        if not self.search["stop_below_floor"]:
            return recipe
        recipe = copy.copy(recipe)
        recipe.data = {**recipe.data, "gates": list(recipe.data["gates"])}
        compressing = False
        for stage, stage_type in zip(recipe.stages, recipe.stage_types):
            compressing = compressing or stage_type.compresses
            if compressing:
                recipe.data["gates"].append(
                    {"stage": stage["name"], "min_retained": self.search["min_retained"], "min_metric": None}
                )
        return recipe

    def _carving(self) -> list[str]:
        """Overrides that hold the selection split out of the training split (selection_share)."""
        if not self.carved:
            return []
        splits = self.data["task"]["data"]
        holdout = {
            "share": self.search["selection_share"],
            "seed": self.search["selection_seed"],
            "whole_texts": self.search["selection_whole_texts"],
        }
        selection = _source(splits["train"])
        # every split that reads train's rows (a distillation or vocabulary split over the whole file,
        # say) loses the selection rows too, so that no trial has seen what it is compared on
        same_rows = ["train"] + [
            name
            for name, spec in splits.items()
            if name not in ("train", SELECTION) and not spec.get("holdout") and _source(spec) == selection
        ]
        rest = json.dumps({**holdout, "part": "rest"})
        return [f"task.data.{name}.holdout={rest}" for name in same_rows] + [
            f"task.data.{SELECTION}={json.dumps({**selection, 'holdout': {**holdout, 'part': 'held'}})}",
        ]


def trial_dir(tune_dir: Path, params: dict) -> Path:
    text = json.dumps(params, sort_keys=True, default=str)
    return tune_dir / "trials" / hashlib.sha256(text.encode()).hexdigest()[:12]


def append_record(tune_dir: Path, record: dict) -> None:
    """Add a trial's line to trials.jsonl (workers append to one file: one write of one whole line)."""
    atomic.append_line(tune_dir / TRIALS_FILE, json.dumps(record, default=str))


def read_records(tune_dir: Path) -> list[dict]:
    path = tune_dir / TRIALS_FILE
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    complete = text if text.endswith("\n") else text[: text.rfind("\n") + 1]  # a line cut by a crash: skipped
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


def run_trial(
    recipes: TrialRecipes,
    space,
    objectives: list[str],
    number: int,
    params: dict,
    tune_dir: Path,
    store_dir: Path,
    host,
    progress=None,
) -> dict:
    """Run one trial's recipe in its run folder, its leading stages taken from the store and its new ones
    published there; its record (what trials.jsonl keeps)."""
    from compose.evaluation.latency import resolve_threads
    from compose.run.executor import INPUT_ROW, Executor, RunOptions
    from compose.run.fingerprint import evaluation_fingerprint, stage_fingerprints
    from compose.run.run_folder import RunFolderError, owned

    started = time.perf_counter()
    search = recipes.search
    overrides, recipe = recipes.build(space, params)
    recipe = recipes.with_floor_gates(recipe)
    run_dir = trial_dir(tune_dir, params)
    names = [INPUT_ROW] + [s["name"] for s in recipe.stages]
    fingerprints = stage_fingerprints(recipe, host)
    evaluation = evaluation_fingerprint(recipe, resolve_threads(recipe.data["evaluate"]["latency"]))
    with ExitStack() as stack:
        try:
            stack.enter_context(owned(run_dir))
        except RunFolderError:  # another worker runs the same settings now: this one runs them apart
            run_dir = run_dir.with_name(f"{run_dir.name}-{number}")
            stack.enter_context(owned(run_dir))
        store.fill(store_dir, run_dir, names, fingerprints, evaluation)
        report = Executor(recipe, host, RunOptions(output_dir=run_dir, progress=progress)).run()
        store.publish(store_dir, run_dir, names, fingerprints, evaluation)
    reused = [row for row in report.rows if row.reused]
    record = {
        "number": number,
        "params": params,
        "overrides": overrides,
        "run_dir": str(run_dir),
        "status": report.status,
        "stages": [row.name for row in report.rows],
        "reused_stages": [row.name for row in reused],
        "stage_runs": [row.name for row in report.rows if not row.reused],
        "seconds": round(time.perf_counter() - started, 3),
        "seconds_saved": round(sum(row.seconds or 0.0 for row in reused), 3),
        "selection_split": recipes.selection_split,
        "error": report.error,
    }
    if report.rows:
        final = report.rows[-1]
        record.update(
            final_stage=final.name,
            metric=final.value,
            retained=final.retained,
            retained_ci=final.retained_ci,
            size_bytes=final.size_bytes,
            throughput_per_s=(final.latency or {}).get("throughput_per_s"),
            batch1_p50_ms=(final.latency or {}).get("batch1_p50_ms"),
        )
        record["objectives"] = objective_values(final, objectives)
        judged = judged_retained(final, search["judged_on"])
        record["judged_retained"] = judged
        record["feasible"] = report.status == "passed" and judged is not None and judged >= search["min_retained"]
    return record
