"""The `prune-ffn` stage: score every feed-forward neuron, then remove the weakest.

The stage is ``stage``; where the neurons are is ``compose.plugins.shared.architectures.ffn``.
The settings schema is ``prune-ffn.schema.json``.
"""

from compose.plugins.pruning.ffn.stage import compose_register_stages

__all__ = ["compose_register_stages"]
