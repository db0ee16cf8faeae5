"""A baseline barely better than always answering one class makes ``retained`` meaningless.

Retained is a stage's metric over the baseline's; if the baseline itself is close to what a
constant prediction scores (an undertrained fine-tune, a skewed task whose F1 is high for
"always positive"), every compressed stage looks as if it kept almost everything.
``constant_score`` is the best that always predicting one class scores on the evaluation
split; ``warning`` says when the baseline is within ``MARGIN`` of it, giving both numbers.
"""

from __future__ import annotations

#: How close (in the metric's units) a baseline may come to the constant prediction before it is warned about.
MARGIN = 0.05


def constant_score(task, split: str) -> tuple[str, float] | None:
    """(class name, score) of the best constant prediction on ``split`` under the task's metric; None where
    the task is not a classification with a per-class metric."""
    import torch

    from compose.evaluation.metrics import CLASSIFICATION

    metric = CLASSIFICATION.get(task.metric_name) if task.kind == "sequence-classification" else None
    if metric is None:
        return None
    labels = torch.tensor(task.label_ids(split))
    if labels.numel() == 0:
        return None
    scores = [
        (name, float(metric(torch.full_like(labels, index), labels, task.num_labels)))
        for index, name in enumerate(task.label_names)
    ]
    return max(scores, key=lambda item: item[1])


def warning(task, split: str, baseline_name: str, baseline_value: float | None) -> dict | None:
    """A warning (message, both numbers) where the baseline scores within ``MARGIN`` of a constant prediction."""
    found = constant_score(task, split) if baseline_value is not None else None
    if found is None or baseline_value - found[1] >= MARGIN:
        return None
    name, score = found
    return {
        "kind": "weak_baseline",
        "message": (
            f"the baseline '{baseline_name}' scores {task.metric_name} {baseline_value:.4f} on '{split}', less than "
            f"{MARGIN:.2f} above always predicting '{name}' ({score:.4f}): retained against it flatters every stage; "
            "train it longer (epochs, or early_stopping with a higher epochs cap) or check the labels"
        ),
        "baseline": baseline_value,
        "constant_prediction": {"class": name, "score": score},
    }
