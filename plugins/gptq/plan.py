"""The `gptq` stage at plan time: what it will do (``describe``), what it declares it will quantize
(``quantization``), and the rules the schema cannot say (``check``); nothing here imports torch."""

from __future__ import annotations

from collections.abc import Mapping

from compose.api import Check, QuantizationScheme, TensorQuantization
from compose.plugins.shared.architectures.checks import architecture_problems
from compose.plugins.shared.architectures.registry import lookup

STAGE = "gptq"


def _model_widths(config) -> dict:
    """The linear layers' widths the recipe's model config tells, by role.

    Reads the architecture's own config keys (``architectures.registry``: hidden, intermediate,
    heads, head_dim, kv_heads). ``inputs`` are in_features (what group_size divides),
    ``outputs`` the other out_features; a width the config does not state is left out."""
    arch = lookup(config.get("model_type")) if isinstance(config, Mapping) else None
    if arch is None:
        return {"inputs": set(), "outputs": set()}
    hidden = arch.config_value(config, "hidden")
    intermediate = arch.config_value(config, "intermediate")
    heads = arch.config_value(config, "heads")
    head_dim = arch.config_value(config, "head_dim")
    if head_dim is None and hidden and heads and hidden % heads == 0:
        head_dim = hidden // heads
    attention = heads * head_dim if heads and head_dim else None
    kv_heads = arch.config_value(config, "kv_heads")
    key_value = kv_heads * head_dim if kv_heads and head_dim else None
    inputs = {w for w in (hidden, intermediate, attention) if w}
    return {"inputs": inputs, "outputs": {w for w in (key_value,) if w} - inputs}


def _check_rows(settings, plan):
    """A 4-bit row must fill whole bytes: an odd hidden width needs an even group_size."""
    config = plan.model_config if isinstance(plan.model_config, Mapping) else {}
    arch = lookup(config.get("model_type"))
    hidden = arch.config_value(config, "hidden") if arch else None
    for role in ("embeddings", "lm_head", "heads"):
        rows = settings[role]
        if hidden and rows["bits"] == 4 and hidden % 2 and (rows["group_size"] == -1 or rows["group_size"] >= hidden):
            yield Check(
                f"{role}: 4-bit rows of {hidden} values (odd) do not fill whole bytes with one group per row; "
                "use bits 8 or an even group_size smaller than the row",
                path=(role, "group_size"),
            )


def check(settings, plan):
    # (a `split` missing from task.data is reported by the core for every stage)
    yield from architecture_problems(STAGE, plan)
    yield from _check_rows(settings, plan)
    if settings["method"] == "rtn" and settings["act_order"]:
        yield Check(
            "act_order has no effect with method rtn (round-to-nearest uses no activation statistics)",
            "warning",
            ("act_order",),
        )
    widths = _model_widths(plan.model_config)
    group = settings["group_size"]
    for width in sorted(widths["inputs"] | widths["outputs"]):
        if settings["bits"] == 3 and width % 32:
            yield Check(
                f"3-bit packing needs layer widths that are multiples of 32, and this model has {width}; "
                "use bits 2, 4 or 8",
                path=("bits",),
            )
    for width in sorted(widths["inputs"]):
        if group == -1:
            continue
        if group > width:
            yield Check(
                f"group_size {group} is larger than in_features {width} of some layers: they get one "
                "group per row, as with group_size -1",
                "warning",
                ("group_size",),
            )
        elif width % group:
            yield Check(
                f"group_size {group} does not divide in_features {width}: the last group of each row is "
                "partial, and fast GPU kernels (Marlin, ExLlama) refuse such layers",
                "warning",
                ("group_size",),
            )


def describe(settings) -> str:
    group = "per channel" if settings["group_size"] == -1 else f"group {settings['group_size']}"
    how = "GPTQ" if settings["method"] == "gptq" else "round-to-nearest"
    extras = []
    if settings["method"] == "gptq":
        extras.append(f"damp {settings['damp_percent']}")
        if settings["act_order"]:
            extras.append("act-order")
    rows = [
        f"{role} {settings[role]['bits']}-bit"
        for role in ("embeddings", "lm_head", "heads")
        if settings[role]["bits"] is not None
    ]
    outside = f"; row-wise: {', '.join(rows)}" if rows else "; embeddings and heads stay in full precision"
    return (
        f"quantize the transformer blocks' linear layers to {settings['bits']} bits ({group}, "
        f"{'symmetric' if settings['sym'] else 'asymmetric'}{', ' + ', '.join(extras) if extras else ''}) "
        f"with {how} via GPTQModel (its own model definition for the decoders it knows, else block by "
        f"block: encoder, then decoder), calibrated on {settings['samples']} examples of '{settings['split']}'"
        f"{outside}"
    )


def quantization(settings, family: str, model=None) -> QuantizationScheme:
    """What this stage will quantize: the blocks' weights on GPTQModel's grid (weight-only; ``method`` says
    whether GPTQ's error compensation moves them from its round-to-nearest start), and the embedding tables
    row-wise where ``embeddings.bits`` is set."""
    tables = settings.get("embeddings") or {}
    bits = tables.get("bits", 8)
    return QuantizationScheme(
        stage="",
        runtime="gptq",
        weights=TensorQuantization(settings["bits"], settings["group_size"], settings["sym"]),
        embeddings=TensorQuantization(bits, tables.get("group_size", 64), tables.get("sym", False)) if bits else None,
        options={"method": settings["method"]},
    )
