"""Which quantization the `qad` stage simulates: the one its target stage will apply.

The scheme is the one the target stage declares (``StageType.quantization``), so the two cannot disagree.

An ``export`` of an encoder (ONNX Runtime, ``Scheme``): weights
(``int8``: per output channel or per matrix, with per-tensor uint8 activations; ``int4``:
blocks of ``block_size``, with blocks of int8 activations), embeddings (``int4``: blocks
of ``embeddings_block_size`` along each row; ``int8``: one asymmetric uint8 scale per
table) and whether ONNX Runtime will fuse attention (its fused ``QAttention`` keeps the
Q/K/V projections int8 even when the other matmuls are 4-bit).

A ``gptq`` stage (any family, ``GPTQScheme``): the transformer blocks' linear layers on
GPTQModel's grid at its ``bits``, ``group_size`` and ``sym``; activations stay float
(GPTQ is weight-only); the embedding tables and head it quantizes row-wise are not simulated.

qad reads the scheme its target declares through ``compose.api`` (``next_quantization``),
never the target's settings or modules: the export and gptq plugins could be replaced by a
third party's stage that declares a scheme of a runtime qad knows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from compose.api import QuantizationScheme

#: The runtimes whose rounding qad reproduces, with what it simulates of each.
SIMULATED_RUNTIMES = {
    "onnxruntime": "ONNX Runtime's int8/4-bit weights, embedding tables and matmul inputs",
    "gptq": "GPTQModel's grid for the blocks' weights",
}


@dataclass(frozen=True)
class Scheme:
    target: str  # the export stage's name
    weights: str  # int8 | int4 | fp32
    embeddings: str  # int8 | int4 | fp32
    per_channel: bool
    block_size: int
    embeddings_block_size: int
    fused_attention: bool  # ONNX Runtime will fuse attention (optimize: true, uniform heads)

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


def unsupported(declared: QuantizationScheme) -> str | None:
    """Why qad cannot simulate ``declared`` exactly (None: it can)."""
    if declared.runtime not in SIMULATED_RUNTIMES:
        known = ", ".join(f"{name} ({what})" for name, what in SIMULATED_RUNTIMES.items())
        return f"it simulates the rounding of {known}, not of runtime '{declared.runtime}'"
    if declared.runtime == "gptq":
        return None if declared.weights is not None else "the gptq stage declares no weight quantization"
    for key, bits in (("weights", (8, 4)), ("embeddings", (8, 4))):
        tensor = getattr(declared, key)
        if tensor is not None and tensor.bits not in bits:
            return f"ONNX Runtime {key} of {tensor.bits} bits are not simulated (8 or 4)"
    return None


def scheme_of(declared: QuantizationScheme) -> Scheme | GPTQScheme:
    """qad's simulation plan for a declared scheme that ``unsupported`` accepts."""
    if declared.runtime == "gptq":
        weights = declared.weights
        return GPTQScheme(
            target=declared.stage,
            bits=weights.bits,
            group_size=weights.group_size,
            sym=weights.symmetric,
            method=(declared.options or {}).get("method", "gptq"),
        )
    weights, tables = declared.weights, declared.embeddings
    options = declared.options or {}
    return Scheme(
        target=declared.stage,
        weights={None: "fp32", 8: "int8", 4: "int4"}[weights.bits if weights else None],
        embeddings={None: "fp32", 8: "int8", 4: "int4"}[tables.bits if tables else None],
        per_channel=bool(options.get("per_channel", weights is not None and weights.group_size == -1)),
        block_size=weights.group_size if weights is not None and weights.bits == 4 else 32,
        embeddings_block_size=tables.group_size if tables is not None and tables.bits == 4 else 128,
        fused_attention=declared.fused_attention,
    )
