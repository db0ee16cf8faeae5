"""Which quantization the `qad` stage simulates: the one its target stage will apply.

The scheme is read from the target stage's settings, so the two cannot disagree.

An ``export`` of an encoder (ONNX Runtime, ``Scheme``): weights
(``int8``: per output channel or per matrix, with per-tensor uint8 activations; ``int4``:
blocks of ``block_size``, with blocks of int8 activations), embeddings (``int4``: blocks
of ``embeddings_block_size`` along each row; ``int8``: one asymmetric uint8 scale per
table) and whether ONNX Runtime will fuse attention (its fused ``QAttention`` keeps the
Q/K/V projections int8 even when the other matmuls are 4-bit).

A ``gptq`` stage (any family, ``GPTQScheme``): the transformer blocks' linear layers on
GPTQModel's grid at its ``bits``, ``group_size`` and ``sym``; activations stay float
(GPTQ is weight-only); the embedding tables and head it quantizes row-wise are not simulated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

#: The stage types whose quantization can be simulated.
TARGET_PLUGINS = ("export", "gptq")


@dataclass(frozen=True)
class Scheme:
    target: str  # the export stage's name
    weights: str  # int8 | int4 | fp32
    embeddings: str  # int8 | int4 | fp32
    per_channel: bool
    block_size: int
    embeddings_block_size: int
    fused_attention: bool  # ONNX Runtime will fuse attention (optimize: true)

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        weights = {
            "int8": f"int8 weights ({'per channel' if self.per_channel else 'per matrix'}) x uint8 activations",
            "int4": f"4-bit weights (blocks of {self.block_size}) x int8 activation blocks",
            "fp32": "float matmuls",
        }[self.weights]
        embeddings = {
            "int4": f"4-bit embedding rows (blocks of {self.embeddings_block_size})",
            "int8": "uint8 embedding tables",
            "fp32": "float embeddings",
        }[self.embeddings]
        return f"{weights}, {embeddings}, as stage '{self.target}' will export them"


def target_stage(stages, index: int, name: str | None) -> tuple[int, Mapping] | None:
    """(position, stage) of the export or gptq stage the qad stage at ``index`` targets: the one
    named ``name``, or the first later one; None if there is none."""
    for position in range(index + 1, len(stages)):
        stage = stages[position]
        if stage.get("uses") in TARGET_PLUGINS and (name is None or stage.get("name") == name):
            return position, stage
    return None


@dataclass(frozen=True)
class GPTQScheme:
    target: str  # the gptq stage's name
    bits: int
    group_size: int
    sym: bool
    method: str

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        group = "per row" if self.group_size == -1 else f"groups of {self.group_size}"
        kind = "symmetric" if self.sym else "asymmetric"
        return f"{self.bits}-bit block weights ({group}, {kind}), as stage '{self.target}' ({self.method}) starts from"


def scheme_of(target: Mapping) -> Scheme | GPTQScheme:
    """The scheme of a target stage whose ``with`` settings were validated (every default filled in)."""
    settings = target["with"]
    if target["uses"] == "gptq":
        return GPTQScheme(
            target=target["name"],
            bits=settings["bits"],
            group_size=settings["group_size"],
            sym=settings["sym"],
            method=settings["method"],
        )
    return Scheme(
        target=target["name"],
        weights=settings["weights"],
        embeddings=settings["embeddings"],
        per_channel=settings["per_channel"],
        block_size=settings["block_size"],
        embeddings_block_size=settings["embeddings_block_size"],
        fused_attention=settings["optimize"],
    )
