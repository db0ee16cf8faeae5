"""The sizes a `config` student may override, by the names each family uses, and the config keys they set.

The schema names sizes per family (BERT/Llama ``hidden_size``..., T5 ``d_model``...);
each name stands for a *role* (hidden, heads, layers...), and the architecture table
(``architectures.registry``) says which config keys hold that role in each architecture
(GPT-2 ``n_embd``, BART ``encoder_attention_heads`` and ``decoder_attention_heads``...).
"""

from __future__ import annotations

#: Sizes a `config` student may override, by family (the schema accepts their union).
SIZE_KEYS = {
    "encoder": ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size"),
    "decoder": ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size"),
    "encoder-decoder": ("num_layers", "num_decoder_layers", "d_model", "num_heads", "d_kv", "d_ff"),
}
ALL_SIZE_KEYS = tuple(dict.fromkeys(k for keys in SIZE_KEYS.values() for k in keys))

#: Size name -> the role it sets (``Architecture.config_keys``).
SIZE_ROLES = {
    "num_hidden_layers": "layers",
    "num_layers": "layers",
    "num_decoder_layers": "decoder_layers",
    "hidden_size": "hidden",
    "d_model": "hidden",
    "num_attention_heads": "heads",
    "num_heads": "heads",
    "num_key_value_heads": "kv_heads",
    "d_kv": "head_dim",
    "intermediate_size": "intermediate",
    "d_ff": "intermediate",
}

#: The same size under the other naming (T5 <-> BERT/Llama), for "use X instead" messages.
SIZE_ALIASES = {
    "num_hidden_layers": "num_layers (encoder) and num_decoder_layers",
    "hidden_size": "d_model",
    "num_attention_heads": "num_heads",
    "intermediate_size": "d_ff",
    "num_key_value_heads": None,
    "num_layers": "num_hidden_layers",
    "num_decoder_layers": "num_hidden_layers",
    "d_model": "hidden_size",
    "num_heads": "num_attention_heads",
    "d_ff": "intermediate_size",
    "d_kv": None,
}


def size_key_message(key: str, family: str) -> str:
    alias = SIZE_ALIASES.get(key)
    instead = f"; use {alias}" if alias and alias.split(" ")[0] in SIZE_KEYS.get(family, ()) else "; leave it out"
    return (
        f"student.config.{key} does not apply to {family} models (their sizes are "
        f"{', '.join(SIZE_KEYS.get(family, ()))}){instead}"
    )


def architecture_key_message(key: str, arch) -> str | None:
    """Why size ``key`` cannot be set on ``arch`` (its config has no such role), or None."""
    if arch.config_keys.get(SIZE_ROLES[key]):
        return None
    return f"student.config.{key} does not apply to {arch.name} models (their config has no such size); leave it out"


def config_keys(key: str, arch) -> tuple[str, ...]:
    """The config keys that size ``key`` sets on ``arch``."""
    return arch.config_keys.get(SIZE_ROLES[key], ())


__all__ = ["ALL_SIZE_KEYS", "SIZE_KEYS", "SIZE_ROLES", "architecture_key_message", "config_keys", "size_key_message"]
