"""The `prune-vocab` stage: keep the tokens the task uses, cut the word table to them.

The stage is ``stage``; which tokens stay is ``selection``; the tokenizer over the kept
pieces is ``tokenizer``; the model's tables cut to them is ``model``. The settings
schema is ``prune-vocab.schema.json``.
"""

from compose.plugins.pruning.vocab.stage import compose_register_stages

__all__ = ["compose_register_stages"]
