"""Plan-time: which architecture a stage will see, and whether the architecture table lets it run.

The model type is read without loading the model: ``plan.entering_config`` is the
config of the model entering the stage (the recipe's inline ``config`` or the config.json
of its ``path`` / ``package`` folder, or what an earlier stage that replaces the model
declared, ``StageType.replaces_model``); None where it cannot be read offline (the checks
then skip).
"""

from __future__ import annotations

from collections.abc import Mapping

from compose.api import Check
from compose.plugins.shared.architectures.registry import Architecture, lookup, unknown_message

#: What ``model_type_at`` returns when the model type cannot be known before running.
UNKNOWN = None


def model_type_at(plan) -> str | None:
    """The model_type of the model entering stage ``plan.index`` (None where it cannot be read)."""
    config = plan.entering_config if isinstance(plan.entering_config, Mapping) else {}
    return config.get("model_type")


def recipe_architecture(plan) -> Architecture | None:
    """The entry of the recipe's own model (what ``plan.model_config`` describes), if known."""
    config = plan.model_config if isinstance(plan.model_config, Mapping) else {}
    return lookup(config.get("model_type"))


def architecture_problems(
    stage: str, plan, what: str | None = None, path: tuple = (), fix: str = "remove the stage"
) -> list[Check]:
    """Errors where ``stage`` (or its setting ``what``, e.g. ``parallel:tp``) cannot run on the model.

    An unknown model type is refused (the stage would not find its layers); a known
    one is refused where the table says so. Nothing is said when the type cannot be read.
    """
    model_type = model_type_at(plan)
    if model_type is None:
        return []
    doing = what.replace(":", ": ") if what else stage
    arch = lookup(model_type)
    if arch is None:
        return [Check(unknown_message(doing, model_type, fix), path=path)]
    reason = arch.refusal(what or stage)
    if reason is None:
        return []
    return [Check(f"{doing} is not available for model type '{model_type}': {reason}", path=path)]


__all__ = ["architecture_problems", "model_type_at", "recipe_architecture"]
