"""Run a validated recipe: load the model, run the stages in order, evaluate, save, report."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from compose import atomic
from compose.errors import ComposeError, StageFailed, explain_failure
from compose.evaluation.evaluator import evaluate
from compose.evaluation.latency import measure_latency, resolve_threads
from compose.evaluation.paired import compare_with_baseline
from compose.evaluation.report import REPORT_FILE, RESOLVED_RECIPE, Report, StageRow
from compose.progress import Progress
from compose.recipe.load import Recipe
from compose.recipe.task_kinds import METRICS
from compose.run import integrity, interrupts
from compose.run.artifacts import load_artifact, load_stage_artifact, save_artifact, size_on_disk
from compose.run.data_notes import check_baseline, data_lengths
from compose.run.distributed import Ranks, init_ranks
from compose.run.fingerprint import evaluation_fingerprint, stage_fingerprints
from compose.run.gates import check_gates, gates_of
from compose.run.modeling import count_parameters, load_model, load_tokenizer, name_labels
from compose.run.resume import record_finished_stage, reusable_rows
from compose.run.run_folder import resolve, stage_folder
from compose.stage import StageContext, StageResult
from compose.tasks import build_task

INPUT_ROW = "input"
EVALUATION_RECORDS = integrity.EVALUATION_RECORDS


@dataclass
class RunOptions:
    output_dir: Path | None = None
    allow_remote_code: bool = False
    progress: Progress | None = None
    fresh: bool = False  # ignore finished stages of an earlier run in the same folder


def pick_device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def baseline_stage(recipe: Recipe) -> str:
    """The row the retained metric is relative to: the model entering the first compressing stage."""
    names = [INPUT_ROW] + [s["name"] for s in recipe.stages]
    for index, stage_type in enumerate(recipe.stage_types):
        if stage_type.compresses:
            return names[index]
    return names[-1]


class Executor:
    def __init__(self, recipe: Recipe, host, options: RunOptions | None = None):
        self.recipe = recipe
        self.host = host
        self.options = options or RunOptions()
        self.run_dir = resolve(recipe.data, self.options.output_dir)
        self.progress = self.options.progress or Progress(enabled=False)
        self.device = pick_device()
        self.ranks = Ranks()
        # One thread count for every row's speed, fixed before any stage can change torch's.
        self.threads = resolve_threads(recipe.data["evaluate"]["latency"])
        self.baseline_name = baseline_stage(recipe)
        self.records: dict[str, dict] = {}  # every evaluated row's per-example records, by row name
        self.reuse_refused: list[dict] = []  # finished stages of an earlier run not reused, and why

    # -- helpers -----------------------------------------------------------

    def _artifact_dir(self, index: int, name: str) -> Path:
        return stage_folder(self.run_dir, index, name)

    def _measure(self, name, plugin, model, tokenizer, task, index, seconds, details=None, written=None) -> StageRow:
        """``written``: a folder the stage wrote as its artifact (measured, not saved again)."""
        artifact = size = weights = None
        name_labels(model, task)  # every saved model names its classes (task.labels)
        if written is not None:
            artifact = Path(written)
        elif self.recipe.data["output"]["save_artifacts"] and self.ranks.is_main:
            artifact = save_artifact(
                model, tokenizer, self._artifact_dir(index, name) / "model", task.kind, point=f"{name}/saving"
            )
        if artifact is not None and self.ranks.is_main:
            size = size_on_disk(artifact)
            weights = size_on_disk(artifact, weights_only=True)
        settings = self.recipe.data["evaluate"]
        is_baseline = name == self.baseline_name
        result = evaluate(
            model,
            tokenizer,
            task,
            settings,
            self.device,
            self.progress,
            f"{name}: evaluating",
            point=f"{name}/evaluating",
            reference=None if is_baseline else self.records.get(self.baseline_name),
            keep_reference=settings["against_baseline"]["top_k"] if is_baseline else 0,
        )
        self.records[name] = result.records
        if artifact is not None and self.ranks.is_main and result.records:
            import torch

            with atomic.writing_file(self._artifact_dir(index, name) / EVALUATION_RECORDS) as handle:
                torch.save(result.records, handle)
        latency = None
        if settings["latency"]["enabled"] and self.ranks.is_main:  # the report is the main process's
            with self.progress.track(f"{name}: measuring latency at {self.threads} thread(s)"):
                latency = measure_latency(
                    model,
                    tokenizer,
                    task,
                    settings["split"],
                    settings["latency"],
                    self.device,
                    self.threads,
                    point=f"{name}/latency",
                ).to_json()
        return StageRow(
            name=name,
            plugin=plugin,
            metric=result.metric,
            value=result.value,
            params=count_parameters(model),
            size_bytes=size,
            weights_bytes=weights,
            latency_ms=result.latency_ms,
            latency=latency,
            metrics=result.metrics,
            seconds=round(seconds, 3),
            artifact=str(artifact) if artifact else None,
            details=details or {},
        )

    def _compare_rows(self, report: Report, task) -> None:
        """Retained's interval, agreement and KL of every row not compared yet (rows evaluated
        before the baseline are compared once it is)."""
        reference = self.records.get(self.baseline_name)
        if not reference:
            return
        if self.ranks.is_main:
            check_baseline(report, task, self.recipe.data["evaluate"]["split"], self.baseline_name, self.progress)
        settings = self.recipe.data["evaluate"]["against_baseline"]
        for row in report.rows:
            if row.retained_ci is not None or row.agreement is not None or row.name not in self.records:
                continue
            found = compare_with_baseline(
                task,
                report.metric,
                report.higher_is_better,
                reference,
                self.records[row.name],
                settings,
                self.recipe.data["seed"],
            )
            if found is not None:
                row.retained_ci = list(found.retained_ci) if found.retained_ci else None
                row.agreement, row.kl = found.agreement, found.kl

    def _load_records(self, index: int, row: StageRow) -> None:
        """A reused row's evaluation records, when the earlier run wrote them."""
        import torch

        path = self._artifact_dir(index, row.name) / EVALUATION_RECORDS
        try:
            self.records[row.name] = torch.load(path, weights_only=True)
        except (OSError, RuntimeError, ValueError, EOFError):  # missing or unreadable: no comparison
            pass

    def _write(self, report: Report, task=None) -> None:
        if report.rows and report.status == "running":
            interrupts.point(f"{report.rows[-1].name}/report")
        if task is not None:
            self._compare_rows(report, task)
        report.refresh_retained()
        if self.ranks.is_main:
            atomic.write_json(self.run_dir / REPORT_FILE, report.to_json())

    # -- the run -----------------------------------------------------------

    def run(self) -> Report:
        """Run every stage not reused from an earlier run, judging the gates after each; the report."""
        self._join_processes()
        task = build_task(self.recipe.data["task"], self.recipe.data["seed"])
        report = self._new_report(task)
        started = time.perf_counter()
        current = INPUT_ROW
        try:
            report.data = data_lengths(self.recipe.data["model"], task, self.progress)
            model, tokenizer, reused = self._start(report, task)
            stopped = not check_gates(report, final=False)
            for index, (stage, stage_type) in enumerate(zip(self.recipe.stages, self.recipe.stage_types), start=1):
                if stopped:
                    break
                if index < reused:
                    continue
                current = stage["name"]
                model, tokenizer = self._run_and_report(index, stage, stage_type, model, tokenizer, task, report)
                stopped = not check_gates(report, final=False)
            interrupts.point("run/result")  # a signal that some library swallowed still stops the run here
            passed = not stopped and check_gates(report, final=True)
            report.status = "passed" if passed else "gate_failed"
        except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - what is not ours to say is raised again
            self._record_failure(report, exc, current)
        finally:
            self._finish(report, task, time.perf_counter() - started, current)
        return report

    def _join_processes(self) -> None:
        """Join the other processes of a distributed run (one device each); the main one writes the recipe."""
        self.ranks = init_ranks(self.device)
        if self.ranks.distributed:
            from accelerate import PartialState

            self.device = PartialState().device  # cuda:LOCAL_RANK on GPUs, cpu otherwise
        if self.ranks.is_main:
            self._write_resolved_recipe()

    def _new_report(self, task) -> Report:
        data = self.recipe.data
        metric = data["evaluate"]["metric"] or task.metric_name
        return Report(
            recipe=str(self.recipe.source),
            run_dir=str(self.run_dir),
            metric=metric,
            higher_is_better=METRICS[metric].higher_is_better,
            baseline_stage=self.baseline_name,
            comparison=dict(data["evaluate"]["against_baseline"], unit=task.unit),
            gates=gates_of(data),
        )

    def _start(self, report: Report, task) -> tuple:
        """Reuse the finished stages of an earlier run, or load and measure the model; (model, tokenizer,
        rows reused). Every stage reused: nothing is loaded."""
        import transformers

        data = self.recipe.data
        self.stages_bar = self.progress.add_bar("stages", total=len(self.recipe.stages) + 1)
        names = [INPUT_ROW] + [s["name"] for s in self.recipe.stages]
        self.fingerprints = stage_fingerprints(self.recipe, self.host)
        self.eval_fingerprint = evaluation_fingerprint(self.recipe, self.threads)
        cached = [] if self.options.fresh else self._cached_rows(names)
        report.reuse_refused = self.reuse_refused
        if cached and cached[0].remeasured:  # the evaluation changed: every reused stage is measured again
            model, tokenizer = self._remeasure(cached, report, task)
            self._write(report, task)
            return model, tokenizer, len(cached)
        for index, row in enumerate(cached):
            self._load_records(index, row)
        report.rows.extend(cached)
        self.stages_bar.advance(len(cached))
        model = tokenizer = None
        if cached and len(cached) < len(names):
            self.stages_bar.update(description=f"reusing {len(cached) - 1} finished stage(s)")
            model, tokenizer = load_artifact(cached[-1].artifact, self.host)
            model.to(self.device)
        elif not cached:
            transformers.set_seed(data["seed"])
            self.stages_bar.update(description="loading the model")
            t0 = time.perf_counter()
            tokenizer = load_tokenizer(data["model"], task)
            model = load_model(
                data["model"], task, allow_remote_code=self.options.allow_remote_code, tokenizer=tokenizer
            )
            model.to(self.device)
            row = self._measure(INPUT_ROW, None, model, tokenizer, task, 0, time.perf_counter() - t0)
            report.rows.append(row)
            self._compare_rows(report, task)
            self._record(0, row)
            self.stages_bar.advance()
        self._write(report, task)
        return model, tokenizer, len(cached)

    def _remeasure(self, cached: list[StageRow], report: Report, task) -> tuple:
        """Measure finished stages again from their artifacts (nothing retrains); the last one's (model, tokenizer)."""
        model = tokenizer = None
        for index, old in enumerate(cached):
            interrupts.point(f"{old.name}/start")
            self.stages_bar.update(description=f"measuring '{old.name}' again (the evaluation changed)")
            self.progress.log(f"stage '{old.name}' is reused and measured again: the evaluation settings changed")
            model, tokenizer = load_stage_artifact(old.artifact, self.host, old.plugin)
            model.to(self.device)
            row = self._measure(
                old.name, old.plugin, model, tokenizer, task, index, old.seconds, old.details, written=old.artifact
            )
            row.reused = row.remeasured = True
            report.rows.append(row)
            self._compare_rows(report, task)
            self._record(index, row)
            self.stages_bar.advance()
        return model, tokenizer

    def _run_and_report(self, index, stage, stage_type, model, tokenizer, task, report: Report) -> tuple:
        """Run one stage, add its row, record it for reuse and rewrite the report; (model, tokenizer)."""
        interrupts.point(f"{stage['name']}/start")
        self.stages_bar.update(description=f"stage {index}/{len(self.recipe.stages)}: {stage['name']}")
        model, tokenizer, row = self._run_stage(index, stage, stage_type, model, tokenizer, task)
        report.rows.append(row)
        self._compare_rows(report, task)
        self._record(index, row)
        self._write(report, task)
        self.stages_bar.advance()
        return model, tokenizer

    def _record_failure(self, report: Report, exc: BaseException, current: str) -> None:
        """Say in the report how the run ended when it did not end by itself; re-raise what is not ours to say."""
        if isinstance(exc, StageFailed):
            report.status = "stage_failed"
            report.error = {"stage": exc.stage, "type": type(exc.cause).__name__, "message": str(exc.cause)}
        elif isinstance(exc, ComposeError):  # model, tokenizer or data could not be loaded
            report.status = "stage_failed"
            report.error = {"stage": current, "type": type(exc).__name__, "message": str(exc)}
        elif isinstance(exc, KeyboardInterrupt):  # SIGINT or SIGTERM (compose.run.interrupts)
            report.status = "interrupted"
            report.error = {
                "stage": current,
                "type": "Interrupted",
                "message": f"the run was interrupted ({interrupts.received() or 'KeyboardInterrupt'}); "
                "`recipe apply` on the same run folder resumes after the last finished stage",
            }
        else:  # OSError writing the report or a record: the machine's fault, in its words
            fault = explain_failure(exc, self.run_dir)
            if not isinstance(fault, ComposeError):
                raise exc
            report.status = "stage_failed"
            report.error = {"stage": current, "type": type(fault).__name__, "message": str(fault)}

    def _finish(self, report: Report, task, seconds: float, current: str) -> None:
        """The report's last write, whatever happened; a second signal while it is written ends the process."""
        report.seconds = seconds
        if report.status == "running":  # stopped by something we do not handle here
            report.status = "stage_failed"
            report.error = report.error or {"stage": current, "type": "Stopped", "message": "the run stopped"}
        if report.status == "interrupted":
            with interrupts.stopping():  # a second signal now ends the process at once
                interrupts.point("run/stopping")
                self._write(report, task)
        else:
            self._write(report, task)

    # -- resuming: the stage records (compose.run.resume) -------------------------

    def _record(self, index: int, row: StageRow) -> None:
        """Note a finished stage (after its artifact is in place), so a later run can reuse it."""
        if self.ranks.is_main and row.artifact is not None:
            record_finished_stage(
                self._artifact_dir(index, row.name), row, self.fingerprints[index], self.eval_fingerprint
            )

    def _cached_rows(self, names: list[str]) -> list[StageRow]:
        if not self.recipe.data["output"]["save_artifacts"]:
            return []
        folders = [self._artifact_dir(index, name) for index, name in enumerate(names)]
        rows, refused = reusable_rows(folders, names, self.fingerprints, self.eval_fingerprint, self.host)
        if refused:
            self.reuse_refused.append(refused)
            self.progress.log(f"not reusing stage '{refused['stage']}' (and those after it): {refused['reason']}")
        return rows

    def _write_resolved_recipe(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic.write_text(
            self.run_dir / RESOLVED_RECIPE,
            f"# The fully resolved recipe (defaults filled in) that produced this run.\n"
            f"# Source: {self.recipe.source}\n" + yaml.safe_dump(self.recipe.data, sort_keys=False),
        )

    def _run_stage(self, index, stage, stage_type, model, tokenizer, task):
        import transformers

        name = stage["name"]
        seed = stage.get("seed", self.recipe.data["seed"] + index)
        transformers.set_seed(seed)
        work_dir = self._artifact_dir(index, name) / "work"
        work_dir.mkdir(parents=True, exist_ok=True)
        ctx = StageContext(
            name=name,
            plugin=stage_type.name,
            settings=stage["with"],
            model=model,
            tokenizer=tokenizer,
            task=task,
            family=self.recipe.family,
            work_dir=work_dir,
            seed=seed,
            device=self.device,
            progress=self.progress,
            recipe=self.recipe.data,
            plugin_host=self.host,
            fingerprint=self.fingerprints[index],
            artifact_dir=self._artifact_dir(index, name) / "model",
        )
        started = time.perf_counter()
        try:
            result = stage_type.run(ctx)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - reported as a failed stage, exit code 3
            raise StageFailed(name, explain_failure(exc, self.run_dir)) from exc
        seconds = time.perf_counter() - started
        if result is not None and not isinstance(result, StageResult):
            raise StageFailed(name, TypeError(f"plugin returned {type(result).__name__}, expected StageResult or None"))
        result = result or StageResult()
        model = result.model if result.model is not None else ctx.model
        tokenizer = result.tokenizer if result.tokenizer is not None else ctx.tokenizer
        try:
            row = self._measure(
                name, stage_type.name, model, tokenizer, task, index, seconds, result.details, result.artifact
            )
        except ComposeError:
            raise
        except Exception as exc:  # noqa: BLE001 - saving or evaluating the stage's model failed
            raise StageFailed(name, explain_failure(exc, self.run_dir)) from exc
        return model, tokenizer, row
