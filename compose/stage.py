"""What a stage plugin declares (``StageType``) and what it receives (``StageContext``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

#: The model families a stage may support.
FAMILIES = ("encoder", "decoder", "encoder-decoder")

#: Facts about the model that stages need and leave behind, with the words used in
#: messages. Plugins may use other fact names; they are shown as written.
KNOWN_FACTS = {
    "task_trained": "trained on the task",
    "quantized": "quantized",
    "heads_pruned": "head-pruned",
    "distilled": "distilled",
    "ffn_pruned": "FFN-pruned",
    "structure_changed": "restructured (shapes its config does not describe)",
    "exported": "exported",
}


def describe_fact(fact: str, value: bool) -> str:
    words = KNOWN_FACTS.get(fact, fact.replace("_", " "))
    return words if value else f"not {words}"


@dataclass(frozen=True)
class Check:
    """A finding of a stage's ``check`` callable: an error blocks the run, a warning does not."""

    message: str
    severity: str = "error"  # or "warning"
    path: tuple = ()  # inside the stage's `with:` settings, e.g. ("bits",)


@dataclass(frozen=True)
class StageType:
    """A kind of stage a plugin provides. Register it from ``compose_register_stages``.

    name:        what recipes write in ``uses:`` (lowercase, dashes).
    run:         ``run(ctx: StageContext) -> StageResult | None``. Do the work on
                 ``ctx.model``; return a ``StageResult`` to replace the model or
                 tokenizer, or None when the model was changed in place.
    schema:      JSON Schema (draft 2020-12) of the ``with:`` settings. Put every
                 default here (``"default": ...``): ``ctx.settings`` arrives with
                 them filled in, and ``recipe plan`` shows them. Forbid unknown
                 keys with ``"additionalProperties": false``.
    description: one line for ``recipe plugins`` and ``recipe plan``.
    needs:       facts that must hold when the stage starts, e.g.
                 ``{"task_trained": True, "quantized": False}``.
    leaves:      facts that hold after it, e.g. ``{"quantized": True}``.
    compresses:  True if the stage makes the model smaller or cheaper; the
                 baseline for "retained" is the model entering the first such stage.
    families:    model families the stage works on (see ``FAMILIES``).
    trains:      True if the stage may run the shared training loop
                 (``train_model``; e.g. a pruning stage's recovery training).
                 ``train_model`` refuses a stage type that did not declare it.
    check:       optional ``check(settings, plan) -> iterable of Check`` for rules
                 the schema cannot say (``plan`` is a ``compose.api.PlanView``).
    describe:    optional ``describe(settings) -> str``: what the stage will do,
                 for ``recipe plan``.
    rebuild:     optional ``rebuild(model, info) -> model``: re-apply a structural
                 change recorded with ``record_transform`` to a freshly built model,
                 so that saved artifacts reload (head pruning, quantized layers).
    load:        optional ``load(folder) -> model | None``, for a stage that writes its own
                 artifact (``StageResult.artifact``) in a format of its own: the model the
                 task predicts with, read back from ``folder`` (the export stage's ONNX
                 Runtime module), so that the core can measure it again without running
                 the stage; None where the core's own loader reads the folder.
    quantization: optional ``quantization(settings, family, model) -> QuantizationScheme | None``:
                 the quantization this stage will apply (``compose.api.QuantizationScheme``),
                 for a stage that prepares the model for it (``PlanView.next_quantization``,
                 ``StageContext.next_quantization``). ``model`` is the model about to enter
                 this stage where the caller has it (a stage right before it, at run time),
                 else None: answer from the settings then. Return None when these settings
                 quantize nothing this family can be prepared for.
    replaces_model: optional ``replaces_model(settings) -> dict | None``: for a stage that
                 replaces the model with another (a distillation student loaded from a
                 folder), the config.json (as a dict) of the model it leaves; ``{}`` where
                 that cannot be read before running (a hub model); None where the model
                 keeps its architecture. Later stages' checks see it as
                 ``PlanView.entering_config``.
    cost:        optional ``cost(settings, config) -> StageCost``: for ``recipe plan --time``,
                 a training step of this stage relative to one of the model entering it
                 (``step``: a distillation also runs its teacher), and the compute of the
                 model it leaves relative to the one entering (``leaves``: a pruned
                 model is cheaper). ``config``: the recipe model's config.json, if known.
    """

    name: str
    run: Callable[[StageContext], Any]
    schema: Mapping[str, Any]
    description: str
    needs: Mapping[str, bool] = field(default_factory=dict)
    leaves: Mapping[str, bool] = field(default_factory=dict)
    compresses: bool = False
    families: tuple = FAMILIES
    trains: bool = False
    check: Callable[..., Iterable[Check]] | None = None
    describe: Callable[[Mapping[str, Any]], str] | None = None
    rebuild: Callable[[Any, Mapping[str, Any]], Any] | None = None
    load: Callable[[Path], Any] | None = None
    quantization: Callable[[Mapping[str, Any], str, Any], Any] | None = None
    replaces_model: Callable[[Mapping[str, Any]], Mapping[str, Any] | None] | None = None
    cost: Callable[[Mapping[str, Any], Mapping[str, Any]], StageCost] | None = None


@dataclass(frozen=True)
class StageCost:
    """What a stage costs to train and what it leaves, relative to the model entering it (``StageType.cost``)."""

    step: float = 1.0
    leaves: float = 1.0
    #: The parameters of the model it leaves, relative to the entering model's (an optimizer step and a
    #: save cost per parameter; a student keeps its teacher's whole embedding table).
    leaves_parameters: float = 1.0
    #: Work besides training, in forward-and-backward passes of a batch of ``extra_batch_size`` of the model
    #: entering the stage (a pruning stage's importance scoring on calibration batches).
    extra_passes: float = 0.0
    extra_batch_size: int = 32


@dataclass
class StageResult:
    """What ``StageType.run`` may return.

    model:     the model that later stages receive (e.g. the distilled student);
               None keeps ``ctx.model``.
    tokenizer: a replacement tokenizer; None keeps ``ctx.tokenizer``.
    details:   JSON-serialisable facts for the report (``stages[i].details``).
    artifact:  a folder this stage wrote as its final artifact (e.g. an exported
               ONNX model, into ``ctx.artifact_dir``): the core measures its size and
               records it, and does not save the model again. None: the core saves
               the model with ``save_artifact``.
    """

    model: Any = None
    tokenizer: Any = None
    details: dict = field(default_factory=dict)
    artifact: Path | None = None


@dataclass
class StageContext:
    """Everything a stage receives.

    name, plugin: the stage's name in the recipe and its plugin's stage type.
    settings:     the ``with:`` settings, validated, with the schema's defaults.
    model, tokenizer: the model as the previous stage left it.
    task:         a ``compose.api.Task``: data splits, batches, the metric.
    family:       "encoder", "decoder" or "encoder-decoder".
    work_dir:     a folder for this stage's scratch files and checkpoints.
    seed:         the seed for this stage.
    device:       the torch device to compute on.
    progress:     a ``compose.api.Progress``: ``with ctx.progress.track("step", total=n) as bar: bar.advance()``.
    recipe:       the whole resolved recipe (plain dicts), read-only.
    plugin_host:  the host, for ``load_artifact`` of saved models.
    fingerprint:  identifies everything that determines this stage's result
                  (a checkpoint in ``work_dir`` is only resumed when it matches).
    artifact_dir: where the core keeps this stage's artifact; a stage that writes
                  its own (``StageResult.artifact``) writes it here.
    """

    name: str
    plugin: str
    settings: Mapping[str, Any]
    model: Any
    tokenizer: Any
    task: Any
    family: str
    work_dir: Path
    seed: int
    device: Any
    progress: Any
    recipe: Mapping[str, Any]
    plugin_host: Any = None
    fingerprint: str = ""
    artifact_dir: Path | None = None

    def log(self, message: str) -> None:
        """Print a line under the stage's progress (shown in the terminal, not in --json output)."""
        self.progress.log(f"[{self.name}] {message}")

    def next_quantization(self, name: str | None = None, model: Any = None):
        """(position, ``QuantizationScheme``) of the first later stage that declares a quantization (the one
        named ``name``, if given), as it will apply it to ``model`` (default: none, its settings alone);
        None if no later stage does. Positions count the recipe's stages from 0."""
        from compose.quantization_scheme import next_quantization

        stages = [
            (stage["name"], self.plugin_host.stage(stage["uses"]), stage["with"]) for stage in self.recipe["stages"]
        ]
        index = [stage["name"] for stage in self.recipe["stages"]].index(self.name)
        return next_quantization(stages, index, self.family, name, model)


@dataclass(frozen=True)
class TrainingExtension:
    """A setting every training stage accepts, provided by a plugin (``amp``, ``checkpointing``...).

    Register it from ``compose_register_training_extensions``. Its key appears in
    the shared training settings (``train``'s ``with:``, ``distill``'s
    ``with.training:``...), so a recipe turns it on with one line, and the same
    key on a stage that does not train is an unknown-key error.

    name:        the settings key, e.g. "amp".
    schema:      JSON Schema of the value. Give a ``default`` that means "off"
                 (null or false): ``setup`` only runs for other values.
    setup:       ``setup(training_setup, value)``: adjust the ``TrainingSetup``
                 (accelerator kwargs, the model, step callbacks) before training starts.
    description: one line for ``recipe plugins``.
    check:       optional ``check(value, plan) -> iterable of Check``, run at
                 validation time for each training stage that sets the key.
    describe:    optional ``describe(value) -> str``: what the value will do on this
                 machine, appended to the stage's line in ``recipe plan``.
    """

    name: str
    schema: Mapping[str, Any]
    setup: Callable[[Any, Any], None]
    description: str
    check: Callable[..., Iterable[Check]] | None = None
    describe: Callable[[Any], str] | None = None


@runtime_checkable
class Dequantizable(Protocol):
    """A quantized module that can say which float module computes what it computes.

    ``dequantized()`` returns that float module (an ``nn.Linear``, an ``nn.Embedding``...)
    with the dequantized weights. The ``export`` stage replaces every such module before
    it exports to ONNX (and before a transformers checkpoint, where no standard layout
    describes the quantized form), so a third-party quantization stage whose modules
    implement it exports with no further work. The built-in ``gptq`` stage's row-quantized
    embeddings and heads implement it.
    """

    def dequantized(self) -> Any: ...
