"""What one stage may learn of another: the quantization a stage will apply, and what a model was trained for.

A stage that quantizes declares its scheme (``StageType.quantization``); a stage that
prepares the model for it (quantization-aware training, a calibration, a check) reads the
declaration of the stage it prepares for through ``PlanView.next_quantization`` (at
validation) or ``StageContext.next_quantization`` (at run time), never that stage's
settings or modules. A stage that trained the model for a scheme says so with
``record_trained_for``; the quantizing stage reads it with ``trained_for`` and reports
whether it applies the same scheme. The two plugins then share only these names: either
can be renamed, replaced or written by a third party.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

#: The transform-record key under which ``record_trained_for`` keeps the scheme a model was trained for.
TRAINED_FOR = "trained_for_quantization"


@dataclass(frozen=True)
class TensorQuantization:
    """How one kind of tensor is stored or computed: ``bits``, the values that share one scale, symmetry.

    group_size: along the reduced (input) dimension: ``0`` one scale for the whole tensor,
                ``-1`` one per output row (per channel), ``k`` blocks of ``k`` values.
    symmetric:  zero maps to code 0 (no zero point) when True.
    """

    bits: int
    group_size: int
    symmetric: bool

    def describe(self) -> str:
        grouping = {0: "per tensor", -1: "per row"}.get(self.group_size, f"blocks of {self.group_size}")
        return f"{self.bits}-bit {grouping}{'' if self.symmetric else ' asymmetric'}"


@dataclass(frozen=True)
class QuantizationScheme:
    """The quantization a stage will apply, as another stage may simulate or check it.

    stage:       the declaring stage's name in the recipe (a declaration may leave it empty:
                 ``next_quantization`` fills it in).
    runtime:     whose rounding it is: ``"onnxruntime"`` (the export stage's ONNX Runtime
                 quantizers), ``"gptq"`` (GPTQModel's grid), or a third party's own name; a
                 reader that does not know the runtime's rounding refuses it by name.
    weights:     the matmul weights (None: they stay float).
    activations: the matmul inputs, quantized as the model runs (None: weight-only).
    embeddings:  the embedding tables (None: they stay float).
    fused_attention: the runtime stores each attention's Q/K/V projections as one matrix
                 (so a per-tensor weight scale is shared by the three).
    options:     anything else the runtime's rounding depends on, as plain values.
    """

    stage: str
    runtime: str
    weights: TensorQuantization | None = None
    activations: TensorQuantization | None = None
    embeddings: TensorQuantization | None = None
    fused_attention: bool = False
    options: Mapping[str, Any] | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QuantizationScheme:
        parts = {key: TensorQuantization(**data[key]) if data.get(key) else None for key in _TENSORS}
        return cls(
            stage=data["stage"],
            runtime=data["runtime"],
            fused_attention=bool(data.get("fused_attention", False)),
            options=dict(data["options"]) if data.get("options") else None,
            **parts,
        )

    def describe(self) -> str:
        parts = []
        for key in _TENSORS:
            tensor = getattr(self, key)
            parts.append(f"{key} {tensor.describe()}" if tensor else f"{key} float")
        fused = ", fused attention" if self.fused_attention else ""
        return f"{'; '.join(parts)}{fused} ({self.runtime}, stage '{self.stage}')"

    def differences(self, other: QuantizationScheme) -> list[str]:
        """The fields (``weights``, ``embeddings``...) in which ``other`` rounds differently; the stage name aside."""
        return [
            key
            for key in (*_TENSORS, "runtime", "fused_attention", "options")
            if getattr(self, key) != getattr(other, key)
        ]


_TENSORS = ("weights", "activations", "embeddings")

#: ``StageType.quantization``: ``(settings, family, model) -> QuantizationScheme | None``.
Declaration = Callable[[Mapping[str, Any], str, Any], "QuantizationScheme | None"]


def next_quantization(
    stages: Sequence[tuple[str, Any, Mapping[str, Any]]],
    index: int,
    family: str,
    name: str | None = None,
    model: Any = None,
) -> tuple[int, QuantizationScheme] | None:
    """(position, scheme) of the first stage after ``index`` that declares a quantization (the one named
    ``name``, if given); None if there is none. ``stages``: (name, stage type, settings) in order."""
    for position in range(index + 1, len(stages)):
        stage_name, stage_type, settings = stages[position]
        declare = getattr(stage_type, "quantization", None)
        if declare is None or (name is not None and stage_name != name):
            continue
        scheme = declare(settings, family, model)
        if scheme is not None:
            return position, replace(scheme, stage=stage_name)
    return None


def record_trained_for(model, scheme: QuantizationScheme, ctx) -> None:
    """Record on ``model`` that the running stage (``ctx``, its ``StageContext``) trained it for ``scheme``;
    the record is kept with the artifact, and the stage type's ``rebuild`` receives it on reload."""
    from compose.run.artifacts import record_transform

    record_transform(model, ctx.plugin, {TRAINED_FOR: scheme.as_dict(), "by": ctx.name})


def trained_for(model) -> tuple[str, QuantizationScheme] | None:
    """(stage, scheme) of the last stage that recorded training ``model`` for a quantization; None if none did."""
    from compose.run.artifacts import transforms_of

    for transform in reversed(transforms_of(model)):
        info = transform["info"] if isinstance(transform["info"], dict) else {}
        if info.get(TRAINED_FOR):
            return info.get("by", transform["stage"]), QuantizationScheme.from_dict(info[TRAINED_FOR])
    return None
