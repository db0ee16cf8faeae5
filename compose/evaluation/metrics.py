"""Classification metrics from predictions and labels, for one sample or many resamples at once.

Every function takes ``predictions`` and ``labels`` of shape ``[n]`` (one evaluation) or
``[replicates, n]`` (bootstrap resamples, compose.evaluation.paired) and returns a tensor of
shape ``[]`` or ``[replicates]``: one batched computation instead of a Python loop.
"""

from __future__ import annotations

import torch


def confusion(predictions: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.Tensor:
    """Counts ``[..., true class, predicted class]`` (float64)."""
    flat_p = predictions.reshape(-1, predictions.shape[-1])
    flat_l = labels.reshape(-1, labels.shape[-1])
    replicates = flat_p.shape[0]
    offset = torch.arange(replicates, device=flat_p.device)[:, None] * classes * classes
    keys = (offset + flat_l * classes + flat_p).reshape(-1)
    counts = torch.bincount(keys, minlength=replicates * classes * classes).double()
    return counts.reshape(*predictions.shape[:-1], classes, classes)


def accuracy(predictions, labels, classes: int) -> torch.Tensor:
    return (predictions == labels).double().mean(-1)


def _per_class_f1(c: torch.Tensor) -> torch.Tensor:
    tp = c.diagonal(dim1=-2, dim2=-1)
    precision = tp / c.sum(-2).clamp(min=1)
    recall = tp / c.sum(-1).clamp(min=1)
    return 2 * precision * recall / (precision + recall).clamp(min=1e-12)


def f1_positive(predictions, labels, classes: int) -> torch.Tensor:
    """F1 of class 1, the positive class of a binary task (GLUE's MRPC/QQP F1)."""
    if classes != 2:
        raise ValueError(
            f"f1 is the positive class's F1 of a binary task; this task has {classes} classes (use f1_macro)"
        )
    return _per_class_f1(confusion(predictions, labels, classes))[..., 1]


def f1_macro(predictions, labels, classes: int) -> torch.Tensor:
    return _per_class_f1(confusion(predictions, labels, classes)).mean(-1)


def matthews(predictions, labels, classes: int) -> torch.Tensor:
    """Matthews correlation (multi-class form, Gorodkin 2004); 0 where it is undefined."""
    c = confusion(predictions, labels, classes)
    t = c.sum(-1)
    p = c.sum(-2)
    total = c.sum((-2, -1))
    correct = c.diagonal(dim1=-2, dim2=-1).sum(-1)
    numerator = correct * total - (t * p).sum(-1)
    denominator = ((total**2 - (p * p).sum(-1)) * (total**2 - (t * t).sum(-1))).sqrt()
    return torch.where(denominator > 0, numerator / denominator.clamp(min=1e-300), torch.zeros_like(numerator))


CLASSIFICATION = {"accuracy": accuracy, "f1": f1_positive, "f1_macro": f1_macro, "matthews": matthews}
