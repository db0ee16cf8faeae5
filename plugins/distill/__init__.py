"""The `distill` stage: a smaller student trained to imitate the model entering the stage.

The stage is ``stage``; the student's construction is ``student`` and ``sizes``, the layer
maps ``layer_maps``, the losses ``loss``, the plan ``plan``, the teacher's logits cache
``teacher_cache``. The settings schema is ``distill.schema.json``.
"""

from compose.plugins.distill.stage import compose_register_stages

__all__ = ["compose_register_stages"]
