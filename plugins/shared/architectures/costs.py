"""Where a transformer block's compute goes, read from a config dict: for stage cost estimates (``StageType.cost``).

A block's matmuls: attention's Q, K, V and output projections (4 h^2 weights) and the FFN's
two (2 h i; a gated FFN, as Llama's, three: 3 h i). At the short sequences the pipelines
train on, the attention scores themselves add little; they are left out.
"""

from __future__ import annotations

from collections.abc import Mapping

from compose.plugins.shared.architectures.registry import lookup


def block_shares(config: Mapping | None) -> dict[str, float] | None:
    """{"attention": share, "ffn": share} of a block's matmul weights; None where the config does not say."""
    arch = lookup((config or {}).get("model_type"))
    if arch is None:
        return None
    hidden, inner = arch.config_value(config, "hidden"), arch.config_value(config, "intermediate")
    if not hidden or not inner:
        return None
    gated = arch.family == "decoder" and (config or {}).get("model_type") != "gpt2"
    attention, ffn = 4 * hidden * hidden, (3 if gated else 2) * hidden * inner
    return {"attention": attention / (attention + ffn), "ffn": ffn / (attention + ffn)}


def embedding_share(config: Mapping | None) -> float | None:
    """The share of the model's parameters in its token embedding table (vocabulary x hidden); None where the
    config does not say."""
    arch = lookup((config or {}).get("model_type"))
    if arch is None:
        return None
    hidden, inner = arch.config_value(config, "hidden"), arch.config_value(config, "intermediate")
    layers, vocab = layer_total(config), (config or {}).get("vocab_size")
    if not (hidden and inner and layers and isinstance(vocab, int)):
        return None
    table = vocab * hidden
    return table / (table + layers * (4 * hidden * hidden + 2 * hidden * inner))


def layer_total(config: Mapping | None) -> int | None:
    """Every stack's layers together; None where the config does not say."""
    arch = lookup((config or {}).get("model_type"))
    counts = arch.layer_counts(config) if arch is not None else None
    return sum(counts.values()) if counts else None
