"""What the shared training loop hands to plugins (``TrainingSetup``, ``TrainingStep``) and returns
(``TrainingSummary``); plain data, importable without torch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrainingSetup:
    """What ``compose_training_setup`` implementations may change before training starts.

    stage:              name of the stage that trains.
    settings:           the training settings (schemas/training.schema.json).
    model:              the model to train; a hook may wrap or replace it.
    accelerator_kwargs: keyword arguments for ``accelerate.Accelerator``.
    on_step_end:        callables ``f(TrainingStep)`` run after every optimizer step.
    on_train_end:       callables ``f(model) -> model | None`` run on the trained
                        (unwrapped) model, e.g. to undo a training-only change; a
                        returned model replaces it (e.g. gathered from shards).
    prepare_model:      False if the hook parallelised the model itself, so that
                        accelerate must not wrap it (no DDP).
    data_shard:         ``(index, count)``: each process reads every count-th batch
                        row from index on, instead of accelerate's split across all
                        processes (tensor parallelism: ranks of a group share data).
    clip_grad_norm:     ``f(parameters, max_norm)`` replacing accelerate's clipping
                        (parameters sharded over several device meshes).
    evaluate_between_epochs: False where evaluation cannot run mid-training.
    notes:              JSON-serialisable facts for the report (``details.training.setup``).
    device:             the torch device the stage computes on.
    announce:           lines the training loop logs as training starts (what a
                        setting chose on this machine, e.g. ``amp: auto -> bf16``).
    """

    stage: str
    settings: dict
    model: Any
    accelerator_kwargs: dict = field(default_factory=dict)
    on_step_end: list = field(default_factory=list)
    on_train_end: list = field(default_factory=list)
    prepare_model: bool = True
    data_shard: tuple | None = None
    clip_grad_norm: Callable | None = None
    evaluate_between_epochs: bool = True
    notes: dict = field(default_factory=dict)
    device: Any = None
    announce: list = field(default_factory=list)


@dataclass(frozen=True)
class TrainingStep:
    stage: str
    step: int
    total_steps: int
    epoch: int
    loss: float
    model: Any


@dataclass
class TrainingSummary:
    steps: int
    epochs: float
    final_loss: float | None
    seconds: float
    history: list = field(default_factory=list)  # per-epoch evaluations
    processes: int = 1
    setup: dict = field(default_factory=dict)  # TrainingSetup.notes
    resumed_from_step: int | None = None  # the in-stage checkpoint this run resumed from
    #: With several processes: whether every rank ended with bit-identical parameters.
    parameters_in_sync: bool | None = None
    #: Tokens this process trained on (resumed runs: since the resume): ``real`` (attention
    #: mask set) and ``computed`` (the padded batches' size), so real/computed is how much of
    #: the work was not padding.
    tokens: dict = field(default_factory=dict)
    #: The budget it ran (``compose.run.budget.Budget.to_json``): unit, steps, passes, tokens.
    budget: dict = field(default_factory=dict)
    #: With early_stopping: the metric on the held-out rows after each pass, the best pass, where it stopped.
    early_stopping: dict | None = None

    def to_json(self) -> dict:
        return {
            "steps": self.steps,
            "epochs": self.epochs,
            "final_loss": self.final_loss,
            "seconds": round(self.seconds, 3),
            "history": self.history,
            "processes": self.processes,
            "setup": self.setup,
            "resumed_from_step": self.resumed_from_step,
            "parameters_in_sync": self.parameters_in_sync,
            "tokens": self.tokens,
            "budget": self.budget,
            "early_stopping": self.early_stopping,
        }
