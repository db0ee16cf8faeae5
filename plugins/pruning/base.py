"""The skeleton both structured pruning stages share: calibrate, score, choose, remove, check, recover.

``prune-heads`` and ``prune-ffn`` differ in their units (attention heads or key/value
groups; FFN neurons), in how they choose which to remove and in how they cut them out;
everything around that is one ``UnitPruning.run``: calibration batches, importance
scores (``importance``), timing, the finite-output check, the optional recovery
fine-tune (``recovery``), the transform record that lets a saved model be rebuilt, and
the stage's details. Validation shares the same way: ``check`` refuses architectures the
table cannot prune, skips what an earlier stage changed, and hands the rest to the stage.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from typing import Any

from compose.api import (
    Check,
    StageContext,
    StageCost,
    StageResult,
    StageType,
    count_parameters,
    record_transform,
)
from compose.plugins.pruning import importance
from compose.plugins.pruning.recovery import describe_recovery, recover
from compose.plugins.shared.architectures.checks import architecture_problems, recipe_architecture
from compose.plugins.shared.architectures.costs import block_shares, embedding_share


class UnitPruning(ABC):
    """A stage that removes whole units. Subclasses name their units and fill in the steps below."""

    #: The stage's name in recipes.
    stage: str
    #: The units in the scoring progress bar ("heads", "FFN neurons").
    units: str
    #: How taylor scoring reads in ``recipe plan``.
    taylor_words: str

    # -- the steps each stage fills in ---------------------------------------

    @abstractmethod
    def find_sites(self, model) -> list:
        """The blocks whose units the stage may remove, in model order."""

    @abstractmethod
    def taylor_scores(self, model, sites, batches, device, bar) -> list:
        """Per block: each unit's first-order Taylor importance on the calibration batches."""

    @abstractmethod
    def magnitude_scores(self, sites) -> list:
        """Per block: each unit's weight norm."""

    def before_scoring(self, ctx: StageContext, sites) -> None:  # noqa: B027 - a hook, optional
        """Refuse settings that cannot apply to these sites before any scoring time is spent."""

    @abstractmethod
    def choose(self, ctx: StageContext, sites, scores) -> Any:
        """Which units go (the stage's own form); logs what it chose."""

    @abstractmethod
    def remove(self, model, sites, choice, batches) -> None:
        """Cut the chosen units out of the model, for real, and check the widths left."""

    @abstractmethod
    def transform_record(self, sites, choice) -> dict | None:
        """What ``rebuild`` needs to shrink a fresh model the same way; None when nothing was removed."""

    @abstractmethod
    def details(self, sites, choice, scores, settings) -> dict:
        """The stage's own entries of its report details."""

    @abstractmethod
    def what(self, settings) -> str:
        """What ``recipe plan`` says the stage removes."""

    @abstractmethod
    def keeping(self, settings) -> str:
        """What ``recipe plan`` says every block keeps at least."""

    def settings_checks(self, settings, plan) -> Iterator[Check]:
        """Checks of the settings against the rest of the recipe, whatever the architecture."""
        return iter(())

    def layout_checks(self, settings, plan, architecture) -> Iterator[Check]:
        """Checks of the settings against the recipe's model, read from its config."""
        return iter(())

    # -- the shared skeleton --------------------------------------------------

    def run(self, ctx: StageContext) -> StageResult:
        settings = ctx.settings
        model = ctx.model.eval()
        sites = self.find_sites(model)
        self.before_scoring(ctx, sites)
        params_before = count_parameters(model)
        # magnitude scores need no data: one batch traces the model and checks the pruned outputs
        count = settings["calibration_batches"] if settings["importance"] == "taylor" else 1
        batches = importance.calibration_batches(ctx, count)

        started = time.perf_counter()
        scores = importance.importance_scores(
            ctx, model, sites, batches, self.taylor_scores, self.magnitude_scores, self.units
        )
        choice = self.choose(ctx, sites, scores)
        scoring_seconds = time.perf_counter() - started

        started = time.perf_counter()
        self.remove(model, sites, choice, batches)
        importance.check_finite_outputs(model, batches[0])
        pruning_seconds = time.perf_counter() - started
        params_pruned = count_parameters(model)

        model, recovery = recover(ctx, model, settings["recovery"])
        record = self.transform_record(sites, choice)
        if record is not None:
            record_transform(model, self.stage, record)
        return StageResult(
            model=model,
            details={
                "importance": settings["importance"],
                "calibration": {
                    "split": settings["calibration_split"],
                    "batches": len(batches),
                    "examples": sum(len(b["input_ids"]) for b in batches),
                },
                "architecture": sites[0].architecture,
                **self.details(sites, choice, scores, settings),
                "params_before": params_before,
                "params_after": params_pruned,
                "params_removed": params_before - params_pruned,
                "seconds": {"scoring": round(scoring_seconds, 3), "pruning": round(pruning_seconds, 3)},
                "recovery": recovery,
            },
        )

    def describe(self, settings) -> str:
        if settings["importance"] == "taylor":
            how = (
                f"{self.taylor_words} on {settings['calibration_batches']} batch(es) of "
                f"{settings['calibration_batch_size']} from '{settings['calibration_split']}'"
            )
        else:
            how = "weight magnitude"
        return f"{self.what(settings)} by {how}, {self.keeping(settings)}" + describe_recovery(settings["recovery"])

    def check(self, settings, plan) -> Iterator[Check]:
        # splits (calibration_split, recovery.split) are checked by the core, with every other split setting
        yield from self.settings_checks(settings, plan)
        refused = architecture_problems(self.stage, plan)
        yield from refused
        if refused or plan.facts.get("distilled"):
            return  # the model entering this stage is the student, not the recipe's model
        architecture = recipe_architecture(plan)
        if architecture is not None:
            yield from self.layout_checks(settings, plan, architecture)

    def stage_type(self, *, schema: dict, description: str, leaves: Mapping[str, bool], rebuild) -> StageType:
        """The stage's registration: both pruning stages need a task-trained float model and may train (recovery)."""
        return StageType(
            name=self.stage,
            run=self.run,
            schema=schema,
            description=description,
            needs={"quantized": False, "task_trained": True},
            leaves=dict(leaves),
            trains=True,  # recovery training
            compresses=True,
            families=("encoder", "decoder", "encoder-decoder"),
            check=self.check,
            describe=self.describe,
            rebuild=rebuild,
            cost=self.cost,
        )

    #: Which share of a block's compute (``shared.architectures.costs.block_shares``) the pruned units are.
    compute_part = "ffn"

    def cost(self, settings, config) -> StageCost:
        """The pruned model's compute (a ``ratio`` of the units gone from their share of every block); its recovery
        trains that model."""
        shares = block_shares(config)
        ratio = settings.get("ratio")
        if shares is None or not ratio:
            return StageCost()  # heads_per_layer: the share removed depends on the model's layout
        left = 1.0 - ratio * shares[self.compute_part]
        table = embedding_share(config) or 0.0
        scoring = settings["calibration_batches"] if settings.get("importance") == "taylor" else 0
        return StageCost(
            step=left,
            leaves=left,
            leaves_parameters=table + (1 - table) * left,
            extra_passes=scoring,
            extra_batch_size=settings.get("calibration_batch_size", 32),
        )
