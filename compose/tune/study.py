"""Run a recipe's search on Optuna: each trial an ordinary recipe through the same executor.

``Study`` is one ``recipe tune`` process's work on a study, composed of rooms of one concern:
``trials`` (a trial's recipe, built once, and its run in its own folder, stages shared
through the ``store``), ``driver`` (Optuna: storage, sampler, budget, lost trials), ``front``
(the front, re-measured side by side and ranked) and ``report`` (the report, the winner on
the evaluation split, best.yaml). A trial's retained metric, judged as the search says,
decides whether it is feasible (Optuna's constraints, so the samplers learn where the floor
is). With ``stop_below_floor`` a trial stops at the first compressing stage below the floor
and is recorded as pruned. A trial that fails is recorded with its error and the study goes on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from compose import atomic
from compose.recipe.load import load_document, validate_document
from compose.recipe.search_space import dimensions
from compose.run import interrupts
from compose.tune import store
from compose.tune.driver import (
    FLOOR_CONSTRAINT,
    MAX_TWINS_IN_A_ROW,
    TWIN_OF,
    Budget,
    finished,
    open_study,
    params_of,
    running_twin,
)
from compose.tune.front import SideBySide, pareto_front, ranked
from compose.tune.plot import PLOT_FILE, plot_study
from compose.tune.report import BEST_RECIPE, REPORT_FILE, against_reference, study_report, write_best
from compose.tune.trials import TRIALS_FILE, TrialRecipes, append_record, read_records, run_trial, trial_dir

__all__ = ["BEST_RECIPE", "REPORT_FILE", "TRIALS_FILE", "Study", "TrialFailed", "TuneOptions"]


class TrialFailed(Exception):
    """A trial's recipe failed to run; its record says why (the study goes on)."""


@dataclass
class TuneOptions:
    recipe: Path
    overrides: list = field(default_factory=list)
    output: Path | None = None  # the tune folder (default: the recipe's output.dir + "-tune")
    storage: str | None = None
    study_name: str | None = None
    trials: int | None = None  # overrides search.trials
    minutes: float | None = None  # overrides search.minutes
    progress: object | None = None
    reference: Path | None = None  # a hand-written recipe's run (folder or report.json): --compare-with
    stale_after: float = 300.0  # seconds without a worker's heartbeat before its running trial counts as lost
    report_only: bool = False  # write the report of the study as it stands, running no trial
    store: Path | None = None  # the finished stages trials share (default: TUNE_DIR/stages); may be another study's


class Study:
    """One ``recipe tune`` process working on a study. ``recipe``/``doc``: the validated recipe and its
    document where the caller already loaded them (the CLI does), else loaded from ``options.recipe``."""

    def __init__(self, options: TuneOptions, host, recipe=None, doc=None):
        self.options, self.host = options, host
        self.path = Path(options.recipe)
        doc = doc if doc is not None else load_document(self.path, options.overrides)
        recipe = recipe if recipe is not None else validate_document(doc, self.path, host)
        if "search" not in recipe.data:
            raise ValueError(f"{self.path}: the recipe has no search section; `recipe tune` needs one")
        self.recipes = TrialRecipes(doc, self.path, host, recipe)
        self.search = recipe.data["search"]
        self.space = dimensions(self.search)
        self.objectives = list(self.search["objectives"])
        self.dir = Path(options.output or Path(str(recipe.data["output"]["dir"]) + "-tune"))
        self.progress = options.progress
        self.speed = SideBySide(host, lambda: self.trial_recipe({})[1])
        self.store_check: dict | None = None  # what the store's file system allows (``run`` probes it)
        self.twins_in_a_row = 0  # trials skipped in a row because another worker ran their settings

    @property
    def name(self) -> str:
        return self.options.study_name or self.path.stem

    def trial_recipe(self, params: dict, *, final: bool = False):
        """(overrides, the validated recipe) of the trial with ``params`` (built once per settings)."""
        return self.recipes.build(self.space, params, final=final)

    def run_trial(self, number: int, params: dict) -> dict:
        shared = Path(self.options.store or self.dir / store.STORE)
        return run_trial(
            self.recipes, self.space, self.objectives, number, params, self.dir, shared, self.host, self.progress
        )

    # -- the study on Optuna -----------------------------------------------------------

    def objective(self, trial):
        import optuna

        params = {d.path: d.suggest(trial) for d in self.space}
        twin = running_twin(trial)
        if twin is not None and self.twins_in_a_row < MAX_TWINS_IN_A_ROW:
            self.twins_in_a_row += 1
            trial.study.sampler.reseed_rng()
            trial.set_user_attr(TWIN_OF, twin)
            raise optuna.TrialPruned(f"trial {twin} runs these settings now (another worker drew them first)")
        self.twins_in_a_row = 0
        try:
            record = self.run_trial(trial.number, params)
        except KeyboardInterrupt:
            self._interrupted(trial)
            raise
        append_record(self.dir, record)
        if record["status"] == "interrupted":
            self._interrupted(trial)
            raise KeyboardInterrupt
        for key in ("status", "run_dir", "judged_retained", "retained_ci", "size_bytes", "throughput_per_s"):
            trial.set_user_attr(key, record.get(key))
        if record["status"] == "stage_failed" or (record["status"] == "passed" and record.get("objectives") is None):
            trial.set_user_attr("error", record["error"])
            raise TrialFailed(json.dumps(record["error"]))
        if record["status"] == "gate_failed":  # stopped below the floor (or a gate of the recipe failed)
            trial.set_constraint(FLOOR_CONSTRAINT, 1.0)
            raise optuna.TrialPruned(f"stopped after stage '{record['final_stage']}': below the floor")
        judged = record["judged_retained"]
        floor = self.search["min_retained"]
        trial.set_constraint(FLOOR_CONSTRAINT, floor - judged if judged is not None else 1.0)
        return record["objectives"]

    def _interrupted(self, trial) -> None:
        """An interrupted trial runs again first when the study continues (its run folder keeps the stages
        it finished) and does not count against the budget."""
        trial.set_user_attr("interrupted", True)
        # Optuna's own form of the settings (list choices as JSON text): what suggest_categorical offers
        trial.study.enqueue_trial(dict(trial.params), user_attrs={"resumes": trial.number})

    def optuna_study(self):
        return open_study(
            self.name, self.options.storage, self.dir, self.objectives, self.search["seed"], self.options.stale_after
        )

    def run(self) -> dict:
        """Run trials until the study has ``trials`` finished ones or ``minutes`` pass; the tune report."""
        study = self.optuna_study()
        self.store_check = store.probe(Path(self.options.store or self.dir / store.STORE), self.dir / "trials")
        if self.store_check["note"] and self.progress is not None:
            self.progress.log(f"note: {self.store_check['note']}")
        trials = self.options.trials or self.search["trials"]
        minutes = self.options.minutes or self.search["minutes"]
        if not self.options.report_only and (not trials or finished(study) < trials):
            with interrupts.handling_signals():
                study.optimize(
                    self.objective,
                    timeout=minutes * 60 if minutes else None,
                    callbacks=[Budget(trials)] if trials else [],
                    catch=(TrialFailed,),
                    gc_after_trial=True,
                )
        return self.write_report(study)

    # -- what the study found -------------------------------------------------------------

    def records(self) -> list[dict]:
        return read_records(self.dir)

    def write_report(self, study) -> dict:
        records = self.records()
        front = pareto_front(study, self.objectives)
        reference_run = self._reference_run()
        reference = reference_run.final if reference_run else None
        side_by_side = self.speed.front(front, records, self.objectives, self.recipes.selection_split, reference)
        if side_by_side:  # speed on a shared machine moves between runs: rank the front on one measurement
            front = ranked(front, self.objectives, side_by_side, reference)
        report = study_report(study, self.recipes, records, front, side_by_side, reference_run, self.path)
        report["store"] = self.store_check
        report["best_recipe"] = None
        drawn = plot_study(
            records, [t.number for t in front], self.search["min_retained"], self.dir / PLOT_FILE, report["reference"]
        )
        report["plot"] = str(drawn) if drawn else None
        if front:
            winner = front[0]
            final = self.evaluate_winner(winner)
            report["winner"]["final"] = final
            report["against_reference"] = against_reference(
                final, reference_run, self.speed, self.recipes.evaluation_split
            )
            params = params_of(winner)
            overrides, recipe = self.trial_recipe(params, final=final is not None)
            folder = final["run_dir"] if final else winner.user_attrs.get("run_dir") or str(trial_dir(self.dir, params))
            write_best(self.dir / BEST_RECIPE, winner, overrides, recipe, folder, self.name, self.path)
            report["best_recipe"] = str(self.dir / BEST_RECIPE)
        atomic.write_json(self.dir / REPORT_FILE, report)
        return report

    def final_dir(self, trial) -> Path:
        return self.dir / "final" / f"trial-{trial.number}"

    def evaluate_winner(self, trial) -> dict | None:
        """The winner on the recipe's evaluation split, which no trial was compared on: its stages are reused
        from its trial folder and measured again (nothing retrains). None where trials were compared on it."""
        from compose.run.executor import Executor, RunOptions
        from compose.run.run_folder import RunFolderError, owned

        if self.recipes.selection_split == self.recipes.evaluation_split:
            return None
        source = Path(trial.user_attrs.get("run_dir") or "")
        if not (source / "stages").is_dir():  # run by a worker on another machine (one store per machine)
            return {"status": "its trial folder is on another machine", "run_dir": str(source)}
        _, recipe = self.trial_recipe(params_of(trial), final=True)
        target = self.final_dir(trial)
        try:
            with owned(target):
                if not (target / "stages").exists():
                    store.link_stages(Path(trial.user_attrs["run_dir"]), target)
                report = Executor(recipe, self.host, RunOptions(output_dir=target, progress=self.progress)).run()
        except RunFolderError:  # another worker evaluates it now
            return {"status": "being evaluated by another worker", "run_dir": str(target)}
        final = report.rows[-1] if report.rows else None
        latency = (final.latency or {}) if final else {}
        return {
            "status": report.status,
            "split": self.recipes.evaluation_split,
            "run_dir": str(target),
            "metric": final.value if final else None,
            "retained": final.retained if final else None,
            "retained_ci": final.retained_ci if final else None,
            "size_bytes": final.size_bytes if final else None,
            "throughput_per_s": latency.get("throughput_per_s"),
            "batch1_p50_ms": latency.get("batch1_p50_ms"),
            "remeasured_stages": [row.name for row in report.rows if row.remeasured],
            "error": report.error,
        }

    def _reference_run(self):
        """The hand-written recipe's run (``--compare-with``), or None."""
        if self.options.reference is None:
            return None
        from compose.evaluation.run_comparison import load_run

        return load_run(self.options.reference)
