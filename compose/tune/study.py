"""Run a recipe's search on Optuna: each trial an ordinary recipe through the same executor.

A trial's parameters (``space``) become overrides of the recipe; the trial runs in its own
run folder under ``TUNE_DIR/trials/`` (named by its parameters, so a trial that was cut
short resumes where it stopped), seeded from the study's stage store so that stages an
earlier trial already ran are reused, not recomputed. Its final row gives the objectives;
its retained metric, judged as the search says, decides whether it is feasible (Optuna's
constraints, so the samplers learn where the floor is). With ``stop_below_floor`` a trial
stops at the first compressing stage below the floor (the executor's gates do it) and is
recorded as pruned. A trial that fails is recorded with its error and the study goes on.

The study lives in Optuna's storage (``TUNE_DIR/study.db``, SQLite, by default; any
database URL, or ``journal:PATH`` for Optuna's journal file on a shared file system), so
several ``recipe tune`` processes, on one machine or several, add trials to one study,
and a killed ``recipe tune`` continues it when started again.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import yaml

from compose import atomic
from compose.recipe.composition import apply_overrides
from compose.recipe.load import load_document, validate_document
from compose.recipe.yaml_source import to_plain
from compose.run import interrupts
from compose.tune import store
from compose.tune.plot import PLOT_FILE, plot_study
from compose.tune.space import choice_value, dimensions, trial_overrides

#: Files a study writes into its tune folder.
TRIALS_FILE, REPORT_FILE, BEST_RECIPE, STUDY_DB = "trials.jsonl", "tune-report.json", "best.yaml", "study.db"

#: Rounds of the front's side-by-side speed measurement (the median counts).
REMEASURE_ROUNDS = 3

#: The split carved from train when search.selection_share is set.
SELECTION = "selection"

DIRECTIONS = {"size": "minimize", "throughput": "maximize", "latency": "minimize"}
#: Where a side-by-side measurement keeps each speed objective.
SPEED_KEYS = {"throughput": "throughput_per_s", "latency": "batch1_p50_ms"}
#: The side-by-side key of the hand-written run's model (--compare-with).
REFERENCE = "reference"
UNITS = {"size": "bytes", "throughput": "examples/s", "latency": "ms"}


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
    reference: Path | None = None  # a hand-written recipe's run (folder or report.json) to draw beside the trials
    stale_after: float = 300.0  # seconds without a worker's heartbeat before its running trial counts as lost
    report_only: bool = False  # write the report of the study as it stands, running no trial
    store: Path | None = None  # the finished stages trials share (default: TUNE_DIR/stages); may be another study's


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
    # SQLite serialises writers: wait for another worker's write instead of failing on a locked file
    engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else None
    return optuna.storages.RDBStorage(url, engine_kwargs=engine, **heartbeat)


def params_of(trial) -> dict:
    """A trial's settings as it ran them: stepped floats as written (0.6, not Optuna's 0.6000000000000001),
    list and map choices as the values they stand for (Optuna stores them as JSON text)."""
    return {
        path: round(value, 10) if isinstance(value, float) else choice_value(value)
        for path, value in trial.params.items()
    }


def _constraints(frozen) -> list[float]:
    return list(frozen.user_attrs.get("constraint", [1.0]))


def lost(trial) -> bool:
    """A trial whose worker died under it (failed by the heartbeat check, not by its recipe): retried."""
    from optuna.trial import TrialState

    return trial.state == TrialState.FAIL and "error" not in trial.user_attrs and "interrupted" not in trial.user_attrs


def finished(study) -> int:
    """The study's trials that count against its budget: complete, pruned or failed, not interrupted or lost."""
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    return sum(1 for trial in done if not trial.user_attrs.get("interrupted") and not lost(trial))


class _Budget:
    """Stop this worker once the study (every worker together) has ``trials`` finished trials."""

    def __init__(self, trials: int):
        self.trials = trials

    def __call__(self, study, trial) -> None:
        if finished(study) >= self.trials:
            study.stop()


def _source(spec: dict) -> dict:
    """Where a split's rows come from (file or dataset), without how many are read or in what order."""
    return {k: v for k, v in spec.items() if k not in ("limit", "shuffle", "holdout")}


class Study:
    """One ``recipe tune`` process working on a study."""

    def __init__(self, options: TuneOptions, host):
        self.options, self.host = options, host
        self.path = Path(options.recipe)
        self.doc = load_document(self.path, options.overrides)
        self.recipe = validate_document(self.doc, self.path, host)
        if "search" not in self.recipe.data:
            raise ValueError(f"{self.path}: the recipe has no search section; `recipe tune` needs one")
        self.search = self.recipe.data["search"]
        self.space = dimensions(self.search)
        self.objectives = list(self.search["objectives"])
        default_dir = Path(str(self.recipe.data["output"]["dir"]) + "-tune")
        self.dir = Path(options.output or default_dir)
        self.progress = options.progress
        self.evaluation_split = self.recipe.data["evaluate"]["split"]
        self.carved = self.search["selection_share"] is not None and not self.search["selection_split"]
        self.selection_split = (
            self.search["selection_split"] or (SELECTION if self.carved else None) or self.evaluation_split
        )

    # -- the trial ---------------------------------------------------------

    def trial_recipe(self, params: dict, *, final: bool = False):
        """(overrides, the validated recipe) of the trial with ``params``: evaluated on the selection split,
        or (``final``) as the winner is reported, on the evaluation split."""
        overrides = trial_overrides(self.space, params)
        doc = apply_overrides(self.doc, overrides + self._carving(), Path.cwd())
        doc.pop("search", None)
        doc.setdefault("evaluate", {})
        doc["evaluate"]["split"] = self.evaluation_split if final else self.selection_split
        return overrides, validate_document(doc, self.path, self.host)

    def _stop_below_floor(self, recipe) -> None:
        """Gates that stop a trial after the first compressing stage below the floor (the executor judges them)."""
        if not self.search["stop_below_floor"]:
            return
        compressing = False
        for stage, stage_type in zip(recipe.stages, recipe.stage_types):
            compressing = compressing or stage_type.compresses
            if compressing:
                recipe.data["gates"].append(
                    {"stage": stage["name"], "min_retained": self.search["min_retained"], "min_metric": None}
                )

    def _carving(self) -> list[str]:
        """Overrides that hold the selection split out of the training split (selection_share)."""
        if not self.carved:
            return []
        splits = self.recipe.data["task"]["data"]
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

    def trial_dir(self, params: dict) -> Path:
        text = json.dumps(params, sort_keys=True, default=str)
        return self.dir / "trials" / hashlib.sha256(text.encode()).hexdigest()[:12]

    def run_trial(self, number: int, params: dict) -> dict:
        """Run one trial's recipe; its record (what trials.jsonl keeps)."""
        from compose.evaluation.latency import resolve_threads
        from compose.run.executor import INPUT_ROW, Executor, RunOptions
        from compose.run.fingerprint import evaluation_fingerprint, stage_fingerprints
        from compose.run.run_folder import RunFolderError, claim, locked

        started = time.perf_counter()
        overrides, recipe = self.trial_recipe(params)
        self._stop_below_floor(recipe)
        run_dir = self.trial_dir(params)
        names = [INPUT_ROW] + [s["name"] for s in recipe.stages]
        fingerprints = stage_fingerprints(recipe, self.host)
        evaluation = evaluation_fingerprint(recipe, resolve_threads(recipe.data["evaluate"]["latency"]))
        shared = Path(self.options.store or self.dir / store.STORE)
        with ExitStack() as stack:
            try:
                claim(run_dir)
                stack.enter_context(locked(run_dir))
            except RunFolderError:  # another worker runs the same settings now: this one runs them apart
                run_dir = run_dir.with_name(f"{run_dir.name}-{number}")
                claim(run_dir)
                stack.enter_context(locked(run_dir))
            store.seed(shared, run_dir, names, fingerprints, evaluation)
            report = Executor(recipe, self.host, RunOptions(output_dir=run_dir, progress=self.progress)).run()
            store.publish(shared, run_dir, names, fingerprints, evaluation)
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
            "selection_split": self.selection_split,
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
            record["objectives"] = objective_values(final, self.objectives)
            judged = judged_retained(final, self.search["judged_on"])
            record["judged_retained"] = judged
            record["feasible"] = (
                report.status == "passed" and judged is not None and judged >= self.search["min_retained"]
            )
        return record

    # -- the study ---------------------------------------------------------

    def optuna_study(self):
        import optuna

        from compose.quiet import verbose

        # trials are recorded (and failures explained) by trials.jsonl and the report, not by Optuna's log
        optuna.logging.set_verbosity(optuna.logging.INFO if verbose() else optuna.logging.ERROR)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        seed = self.search["seed"]
        if len(self.objectives) == 1:
            sampler = optuna.samplers.TPESampler(seed=seed, constraints_func=_constraints)
        else:
            sampler = optuna.samplers.NSGAIISampler(seed=seed, constraints_func=_constraints)
        self.dir.mkdir(parents=True, exist_ok=True)
        with store.exclusive(
            self.dir / ".study.lock"
        ):  # two workers starting together must not both create the database's tables
            return optuna.create_study(
                study_name=self.options.study_name or self.path.stem,
                storage=storage_for(self.options.storage, self.dir, self.options.stale_after),
                sampler=sampler,
                directions=[DIRECTIONS[name] for name in self.objectives],
                load_if_exists=True,
            )

    def objective(self, trial):
        import optuna

        params = {d.path: d.suggest(trial) for d in self.space}
        try:
            record = self.run_trial(trial.number, params)
        except KeyboardInterrupt:
            self._interrupted(trial, params)
            raise
        self._append(record)
        if record["status"] == "interrupted":
            self._interrupted(trial, params)
            raise KeyboardInterrupt
        for key in ("status", "run_dir", "judged_retained", "retained_ci", "size_bytes", "throughput_per_s"):
            trial.set_user_attr(key, record.get(key))
        if record["status"] == "stage_failed" or (record["status"] == "passed" and record.get("objectives") is None):
            trial.set_user_attr("error", record["error"])
            raise TrialFailed(json.dumps(record["error"]))
        if record["status"] == "gate_failed":  # stopped below the floor (or a gate of the recipe failed)
            trial.set_user_attr("constraint", [1.0])
            raise optuna.TrialPruned(f"stopped after stage '{record['final_stage']}': below the floor")
        judged = record["judged_retained"]
        floor = self.search["min_retained"]
        trial.set_user_attr("constraint", [floor - judged if judged is not None else 1.0])
        return record["objectives"]

    def _interrupted(self, trial, params: dict) -> None:
        """An interrupted trial runs again first when the study continues (its run folder keeps the stages
        it finished) and does not count against the budget."""
        trial.set_user_attr("interrupted", True)
        # Optuna's own form of the settings (list choices as JSON text): what suggest_categorical offers
        trial.study.enqueue_trial(dict(trial.params), user_attrs={"resumes": trial.number})

    def _append(self, record: dict) -> None:
        path = self.dir / TRIALS_FILE
        with open(path, "a", encoding="utf-8") as handle:  # one line per trial; several workers append
            handle.write(json.dumps(record, default=str) + "\n")

    def run(self) -> dict:
        """Run trials until the study has ``trials`` finished ones or ``minutes`` pass; the tune report."""

        study = self.optuna_study()
        trials = self.options.trials or self.search["trials"]
        minutes = self.options.minutes or self.search["minutes"]
        if not self.options.report_only and (not trials or finished(study) < trials):
            with interrupts.handling_signals():
                study.optimize(
                    self.objective,
                    timeout=minutes * 60 if minutes else None,
                    callbacks=[_Budget(trials)] if trials else [],
                    catch=(TrialFailed,),
                    gc_after_trial=True,
                )
        return self.write_report(study)

    # -- what the study found -------------------------------------------------

    def records(self) -> list[dict]:
        path = self.dir / TRIALS_FILE
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def front(self, study) -> list:
        """The feasible finished trials that no other feasible one beats on every objective, best first."""
        from optuna.trial import TrialState

        feasible = [
            t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if _constraints(t)[0] <= 0
        ]
        signs = [1 if DIRECTIONS[name] == "minimize" else -1 for name in self.objectives]

        def cost(trial):
            return [sign * value for sign, value in zip(signs, trial.values)]

        def dominated(trial):
            mine = cost(trial)
            return any(all(o <= m for o, m in zip(cost(other), mine)) and cost(other) != mine for other in feasible)

        front, seen = [], []
        for trial in sorted((t for t in feasible if not dominated(t)), key=lambda t: (cost(t), t.number)):
            if params_of(trial) not in seen:  # a sampler may draw the same settings twice: one entry for them
                seen.append(params_of(trial))
                front.append(trial)
        return front

    def write_report(self, study) -> dict:
        from optuna.trial import TrialState

        records = self.records()
        front = self.front(study)
        reference_run = self._reference_run()
        reference = reference_run.final if reference_run else None
        side_by_side = self.remeasure_front(front, records, reference)
        if side_by_side:  # speed on a shared machine moves between runs: rank the front on one measurement
            front = self._ranked(front, side_by_side, reference)
        by_state = {state.name.lower(): len(study.get_trials(deepcopy=False, states=(state,))) for state in TrialState}
        winner = front[0] if front else None
        stage_runs = sum(len(r["stage_runs"]) for r in records)
        reused = sum(len(r["reused_stages"]) for r in records)
        report = {
            "recipe": str(self.path),
            "study": study.study_name,
            "objectives": [{"name": n, "direction": DIRECTIONS[n], "unit": UNITS[n]} for n in self.objectives],
            "constraint": {"min_retained": self.search["min_retained"], "judged_on": self.search["judged_on"]},
            "selection_split": self.selection_split,
            "evaluation_split": self.evaluation_split,
            "selected_on_evaluation_split": self.selection_split == self.evaluation_split,
            "trials": by_state,
            "stage_runs": stage_runs,
            "reused_stage_runs": reused,
            "seconds_saved_by_reuse": round(sum(r["seconds_saved"] for r in records), 3),
            "front": [
                {
                    **self._member(t),
                    "side_by_side": side_by_side.get(t.number),
                    "beats_reference": self.beats_reference(t, side_by_side, reference),
                }
                for t in front
            ],
            "side_by_side": {
                "rounds": REMEASURE_ROUNDS,
                "members": len(side_by_side),
                "note": "the front's speed (and --compare-with's model's) measured again in this process, members "
                "interleaved round by round; the winner is named on these numbers: the first by the first objective "
                "among the members that beat the hand-written run on every objective, when one does",
            }
            if side_by_side
            else None,
            "winner": self._member(winner) if winner else None,
            "best_recipe": str(self.dir / BEST_RECIPE) if winner else None,
        }
        report["reference"] = self._reference(reference_run, side_by_side)
        drawn = plot_study(
            records,
            [t.number for t in front],
            self.search["min_retained"],
            self.dir / PLOT_FILE,
            report["reference"],
        )
        report["plot"] = str(drawn) if drawn else None
        if winner:
            report["winner"]["final"] = self.evaluate_winner(winner)
            report["against_reference"] = self.against_reference(report["winner"]["final"], reference_run)
            report["best_recipe"] = str(self.write_best(winner, report["winner"]["final"]))
        atomic.write_json(self.dir / REPORT_FILE, report)
        return report

    def remeasure_front(self, front: list, records: list[dict], reference=None) -> dict:
        """{trial number: median speed}: every front member's final model measured again in this process,
        in interleaved rounds (a, b, c, a, b, c...), so that they share the machine's state; with a
        ``reference`` (the hand-written run's final row), its model too, under the key ``REFERENCE``.
        Empty where there is nothing to compare, or speed is not an objective."""
        compared = len(front) + (reference is not None and bool(front))
        if compared < 2 or not {"throughput", "latency"} & set(self.objectives):
            return {}
        latest = {r["number"]: r for r in records}
        finals = {}
        for trial in front:
            report = json.loads((Path(latest[trial.number]["run_dir"]) / "report.json").read_text(encoding="utf-8"))
            finals[trial.number] = report["stages"][-1]
        if reference is not None:
            finals[REFERENCE] = {"artifact": reference.artifact, "plugin": reference.plugin}
        return self.side_by_side(finals, self.selection_split)

    def side_by_side(self, finals: dict, split: str) -> dict:
        """{key: median speed} of each final stage row's (``artifact``, ``plugin``) model, measured in
        ``REMEASURE_ROUNDS`` interleaved rounds on ``split``; empty where one cannot be loaded."""
        import statistics

        from compose.evaluation.latency import measure_latency
        from compose.run.artifacts import load_stage_artifact

        task, settings = self._speed_setup
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

    @cached_property
    def _speed_setup(self) -> tuple:
        """(the task, evaluate.latency) that side-by-side measurements use: built once per process."""
        from compose.tasks import build_task

        _, recipe = self.trial_recipe({})
        return build_task(recipe.data["task"], recipe.data["seed"]), recipe.data["evaluate"]["latency"]

    def against_reference(self, final: dict | None, reference_run) -> dict | None:
        """The winner, as evaluated on the evaluation split, beside the hand-written recipe's final model
        (``reference_run``, from ``--compare-with``): retained and size from both runs' reports, speed
        measured again here, side by side; whether the winner dominates it (smaller, faster, retained
        no lower)."""
        if reference_run is None or not final or final.get("status") != "passed":
            return None
        from compose.evaluation.run_comparison import load_run

        runs = {"winner": load_run(final["run_dir"]), "hand_written": reference_run}
        rows = {key: run.final for key, run in runs.items()}
        speed = self.side_by_side(
            {key: {"artifact": row.artifact, "plugin": row.plugin} for key, row in rows.items()},
            self.evaluation_split,
        )
        sides = {
            key: {
                "report": str(runs[key].path),
                "stage": row.name,
                "retained": row.retained,
                "retained_ci": row.retained_ci,
                "size_bytes": row.size_bytes,
                "smaller_than_baseline": row.size_ratio,
                "in_its_run": {"throughput_per_s": (row.latency or {}).get("throughput_per_s")},
                "side_by_side": speed.get(key),
            }
            for key, row in rows.items()
        }
        winner, hand = sides["winner"], sides["hand_written"]
        faster = speed["winner"]["throughput_per_s"] / speed["hand_written"]["throughput_per_s"] if speed else None
        smaller = hand["size_bytes"] / winner["size_bytes"] if winner["size_bytes"] else None
        return {
            **sides,
            "split": self.evaluation_split,
            "rounds": REMEASURE_ROUNDS,
            "smaller_by": smaller,
            "faster_by": faster,
            "dominates": bool(
                smaller is not None
                and smaller > 1
                and faster is not None
                and faster > 1
                and winner["retained"] is not None
                and hand["retained"] is not None
                and winner["retained"] >= hand["retained"]
            ),
        }

    def _measured(self, trial, name: str, side_by_side: dict) -> float:
        """A front member's objective ``name``: speed as re-measured side by side, size as its trial found it."""
        value = trial.values[self.objectives.index(name)]
        again = side_by_side.get(trial.number) or {}
        return again.get(SPEED_KEYS.get(name), value)

    def beats_reference(self, trial, side_by_side: dict, reference) -> bool | None:
        """Whether ``trial`` is better than the hand-written run on every objective (speed side by side);
        None without a reference measured beside it."""
        measured = side_by_side.get(REFERENCE)
        if reference is None or not measured:
            return None
        theirs = {"size": reference.size_bytes, **{n: measured[k] for n, k in SPEED_KEYS.items()}}
        for name in self.objectives:
            mine, other = self._measured(trial, name, side_by_side), theirs[name]
            if other is None or (mine >= other if DIRECTIONS[name] == "minimize" else mine <= other):
                return False
        return True

    def _ranked(self, front: list, side_by_side: dict, reference=None) -> list:
        """The front in the order the winner is chosen: by the first objective, speed as re-measured; with
        a hand-written run to compare with, the members that beat it on every objective first."""
        sign = 1 if DIRECTIONS[self.objectives[0]] == "minimize" else -1

        def order(trial):
            beats = self.beats_reference(trial, side_by_side, reference)
            return (beats is False, sign * self._measured(trial, self.objectives[0], side_by_side))

        return sorted(front, key=order)

    def final_dir(self, trial) -> Path:
        return self.dir / "final" / f"trial-{trial.number}"

    def evaluate_winner(self, trial) -> dict | None:
        """The winner on the recipe's evaluation split, which no trial was compared on: its stages are reused
        from its trial folder and measured again (nothing retrains). None where trials were compared on it."""
        from compose.run.executor import Executor, RunOptions
        from compose.run.run_folder import RunFolderError, claim, locked

        if self.selection_split == self.evaluation_split:
            return None
        _, recipe = self.trial_recipe(params_of(trial), final=True)
        target = self.final_dir(trial)
        try:
            claim(target)
            with locked(target):
                if not (target / "stages").exists():
                    store.link_stages(Path(trial.user_attrs["run_dir"]), target)
                report = Executor(recipe, self.host, RunOptions(output_dir=target, progress=self.progress)).run()
        except RunFolderError:  # another worker evaluates it now
            return {"status": "being evaluated by another worker", "run_dir": str(target)}
        final = report.rows[-1] if report.rows else None
        return {
            "status": report.status,
            "split": self.evaluation_split,
            "run_dir": str(target),
            "metric": final.value if final else None,
            "retained": final.retained if final else None,
            "retained_ci": final.retained_ci if final else None,
            "size_bytes": final.size_bytes if final else None,
            "throughput_per_s": ((final.latency or {}).get("throughput_per_s") if final else None),
            "batch1_p50_ms": ((final.latency or {}).get("batch1_p50_ms") if final else None),
            "remeasured_stages": [row.name for row in report.rows if row.remeasured],
            "error": report.error,
        }

    def _reference_run(self):
        """The hand-written recipe's run (``--compare-with``), or None."""
        if self.options.reference is None:
            return None
        from compose.evaluation.run_comparison import load_run

        return load_run(self.options.reference)

    def _reference(self, run, side_by_side: dict) -> dict | None:
        """The hand-written recipe's final row, to compare the trials with, and its side-by-side speed."""
        if run is None:
            return None
        final = run.final
        return {
            "label": f"hand-written: {run.label}",
            "report": str(run.path),
            "retained": final.retained,
            "retained_ci": final.retained_ci,
            "size_bytes": final.size_bytes,
            "throughput_per_s": (final.latency or {}).get("throughput_per_s"),
            "batch1_p50_ms": (final.latency or {}).get("batch1_p50_ms"),
            "side_by_side": side_by_side.get(REFERENCE),
        }

    def _member(self, trial) -> dict:
        return {
            "number": trial.number,
            "params": params_of(trial),
            "values": dict(zip(self.objectives, trial.values)),
            "judged_retained": trial.user_attrs.get("judged_retained"),
            "retained_ci": trial.user_attrs.get("retained_ci"),
            "run_dir": trial.user_attrs.get("run_dir"),
        }

    def write_best(self, trial, final: dict | None) -> Path:
        """A plain recipe (no search section) that reproduces ``trial`` with ``recipe apply``: in its final
        evaluation's folder, on the evaluation split (or, when trials were compared on that split, its own)."""
        overrides, recipe = self.trial_recipe(params_of(trial), final=final is not None)
        data = to_plain(recipe.data)
        data.pop("search", None)
        folder = final["run_dir"] if final else trial.user_attrs.get("run_dir") or str(self.trial_dir(params_of(trial)))
        data["output"]["dir"] = folder
        header = (
            f"# Trial {trial.number} of study '{self.options.study_name or self.path.stem}' "
            f"({self.path}): {', '.join(overrides) or 'the recipe as written'}.\n"
            f"# Reproduce it (every stage is reused from {folder}):\n"
            f"#   recipe apply {self.dir / BEST_RECIPE}\n"
        )
        target = self.dir / BEST_RECIPE
        atomic.write_text(target, header + yaml.safe_dump(data, sort_keys=False))
        return target
