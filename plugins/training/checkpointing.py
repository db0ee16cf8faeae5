"""`checkpointing:` in any training stage's settings: gradient checkpointing through transformers."""

from __future__ import annotations

from compose import hookimpl
from compose.api import TrainingExtension, TrainingSetup, load_schema_file


def setup(training: TrainingSetup, value: bool) -> None:
    model = training.model
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(
            f"checkpointing: {type(model).__name__} does not support gradient checkpointing in transformers; "
            "remove `checkpointing: true` from this stage"
        )
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    training.on_train_end.append(_disable)
    training.notes["checkpointing"] = True


def _disable(model) -> None:
    model.gradient_checkpointing_disable()


@hookimpl
def compose_register_training_extensions(register):
    register(
        TrainingExtension(
            name="checkpointing",
            schema=load_schema_file("compose.plugins.training", "checkpointing.schema.json"),
            setup=setup,
            description="Gradient checkpointing for training stages: less activation memory, more compute.",
        )
    )
