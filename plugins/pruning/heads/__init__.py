"""The `prune-heads` stage: score every attention head, then remove the weakest.

The stage is ``stage``; removing heads from the architectures' attention blocks is
``removal`` (T5's relative position bias: ``t5_position_bias``). The settings schema is
``prune-heads.schema.json``.
"""

from compose.plugins.pruning.heads.stage import compose_register_stages

__all__ = ["compose_register_stages"]
