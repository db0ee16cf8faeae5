"""The `train` stage: fine-tune (or train from scratch) on the task's training split."""

from __future__ import annotations

from compose import hookimpl
from compose.api import StageContext, StageResult, StageType, describe_length, load_schema_file, train_model


def run(ctx: StageContext) -> StageResult:
    model, summary = train_model(ctx)
    return StageResult(model=model, details={"training": summary.to_json()})


def describe(settings) -> str:
    length = describe_length(settings)
    return (
        f"train on split '{settings['split']}' for {length}, batch {settings['batch_size']}, "
        f"{settings['optimizer']} lr {settings['learning_rate']} ({settings['scheduler']} schedule)"
    )


@hookimpl
def compose_register_stages(register):
    register(
        StageType(
            name="train",
            run=run,
            schema=load_schema_file("compose.plugins.training", "train.schema.json"),
            description="Fine-tune or train the model on the task's training split (shared training loop).",
            needs={"quantized": False},
            leaves={"task_trained": True},
            trains=True,
            describe=describe,
        )
    )
