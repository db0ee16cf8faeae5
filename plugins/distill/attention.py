"""What attention matching needs from the models: head counts, eager attention, no attention dropout.

The attention blocks are the ones the architecture table names (``architectures.attention``).
"""

from __future__ import annotations

from compose.plugins.shared.architectures.attention import find_attention

STAGE = "distill"


def heads_per_layer(model) -> dict[str, list[int]]:
    """{stack name: self-attention heads of each layer}."""
    heads: dict[str, list[int]] = {}
    for site in find_attention(model, STAGE):
        if not site.cross:
            heads.setdefault(site.stack, []).append(site.query_heads)
    return heads


def set_attention_dropout(model, p: float) -> list:
    """Set the dropout on attention probabilities of every attention block to ``p``; return what to restore.

    BERT keeps it as ``dropout`` (an nn.Dropout) on its self-attention, T5 and BART as a
    float ``dropout`` on the attention module, Llama as a float ``attention_dropout``,
    GPT-2 as an nn.Dropout ``attn_dropout``. Returns (object, attribute, old value) triples.
    """
    import torch

    changed = []
    for site in find_attention(model, STAGE):
        for name in ("attention_dropout", "attn_dropout", "dropout"):
            value = getattr(site.module, name, None)
            if isinstance(value, torch.nn.Dropout):
                changed.append((value, "p", value.p))
                value.p = p
            elif isinstance(value, float):
                changed.append((site.module, name, value))
                setattr(site.module, name, float(p))
    return changed


def use_eager_attention(model) -> list:
    """Run every attention module of ``model`` in eager mode (the one that returns its weights).

    sdpa and flash attention return no attention weights (transformers warns once and
    gives None). The model's own config is not enough: T5's encoder and decoder stacks
    read deep copies of it, so every distinct config a module holds is switched, after
    ``set_attn_implementation`` (which validates the choice). Returns (config,
    "_attn_implementation", old value) triples for ``restore``.
    """
    configs = []
    for module in model.modules():
        config = getattr(module, "config", None)
        if hasattr(config, "_attn_implementation_internal") and all(config is not c for c in configs):
            configs.append(config)
    changed = [(config, "_attn_implementation", config._attn_implementation) for config in configs]
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    for config in configs:
        if config._attn_implementation != "eager":
            config._attn_implementation = "eager"
    return changed


def restore(changed: list) -> None:
    for obj, name, value in changed:
        setattr(obj, name, value)


__all__ = ["heads_per_layer", "restore", "set_attention_dropout", "use_eager_attention"]
