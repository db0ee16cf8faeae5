"""The short fine-tune a pruning stage may run after its surgery (``recovery:`` in its
settings, the shared training settings or null), and how ``recipe plan`` describes it."""

from __future__ import annotations

from compose.api import StageContext, describe_length, train_model


def recover(ctx: StageContext, model, recovery: dict | None):
    """(model, the training summary as JSON), or (model, None) when ``recovery`` is null."""
    if recovery is None:
        return model, None
    model, summary = train_model(ctx, model, dict(recovery))
    return model, summary.to_json()


def describe_recovery(recovery: dict | None) -> str:
    """ "; then recovery training for 100 steps at lr 5e-05" (or "; no recovery training")."""
    if recovery is None:
        return "; no recovery training"
    length = describe_length(recovery)
    return f"; then recovery training for {length} at lr {recovery['learning_rate']}"
