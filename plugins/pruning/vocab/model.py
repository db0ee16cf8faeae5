"""The model over fewer tokens: its word table (and an LM head over the vocabulary) cut to the kept rows."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from compose.plugins.pruning.vocab.selection import TOKEN_ID_SETTINGS


def vocabulary_modules(model) -> list[nn.Module]:
    """Every module whose weight has one row per token: the input embeddings, modules that share
    their weight (T5's encoder and decoder tables) and the output embeddings (a language model's head)."""
    table = model.get_input_embeddings()
    head = model.get_output_embeddings()
    rows = table.weight.shape[0]
    weights = {id(table.weight)}
    if head is not None and getattr(head, "weight", None) is not None and head.weight.shape[0] == rows:
        weights.add(id(head.weight))
    return [
        module
        for module in model.modules()
        if isinstance(module, (nn.Embedding, nn.Linear)) and id(getattr(module, "weight", None)) in weights
    ]


def keep_rows(model, kept: Sequence[int]) -> None:
    """Cut every vocabulary module to the ``kept`` rows (in place; tied weights stay one tensor) and
    renumber the config's token ids and vocabulary size."""
    index = torch.tensor(list(kept), dtype=torch.long)
    new_id = {old: new for new, old in enumerate(kept)}
    replaced: dict[int, nn.Parameter] = {}
    for module in vocabulary_modules(model):
        weight = module.weight
        if id(weight) not in replaced:
            replaced[id(weight)] = nn.Parameter(weight.data[index].clone(), requires_grad=weight.requires_grad)
        module.weight = replaced[id(weight)]
        if isinstance(module, nn.Embedding):
            module.num_embeddings = len(kept)
            if module.padding_idx is not None:
                module.padding_idx = new_id.get(module.padding_idx)
        else:
            module.out_features = len(kept)
            if module.bias is not None:
                module.bias = nn.Parameter(module.bias.data[index].clone(), requires_grad=module.bias.requires_grad)
    for config in _configs(model):
        if getattr(config, "vocab_size", None) is not None:
            config.vocab_size = len(kept)
        for name in TOKEN_ID_SETTINGS:
            value = getattr(config, name, None)
            if isinstance(value, int) and value in new_id:
                setattr(config, name, new_id[value])
            elif isinstance(value, (list, tuple)):
                setattr(config, name, [new_id.get(v, v) for v in value])


def _configs(model) -> list:
    """The model's config, its text config where it nests one, and its generation config."""
    found = [model.config]
    text = getattr(model.config, "get_text_config", None)
    if text is not None and text() is not model.config:
        found.append(text())
    if getattr(model, "generation_config", None) is not None:
        found.append(model.generation_config)
    return found
