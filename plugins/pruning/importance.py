"""Calibration batches and Taylor importance through unit masks, for stages that prune units (heads, FFN neurons).

A pruning stage puts a differentiable mask (ones) on every unit it may remove
(``architectures.attention.head_masks``, ``architectures.ffn.neuron_masks``); the gradient of the
task loss with respect to mask u is the first-order change in the loss if unit u were
removed (Michel et al. 2019 for heads, Molchanov et al. 2017 for neurons).
"""

from __future__ import annotations


def calibration_batches(ctx, count: int) -> list[dict]:
    """Up to ``count`` shuffled, labelled batches of the stage's ``calibration_split``
    (``calibration_batch_size`` rows each), on the stage's device."""
    s = ctx.settings
    loader = ctx.task.batches(
        s["calibration_split"], ctx.tokenizer, s["calibration_batch_size"], shuffle=True, seed=ctx.seed
    )
    batches = []
    for batch in loader:
        batches.append({k: v.to(ctx.device) for k, v in batch.items()})
        if len(batches) == count:
            break
    if not batches:
        raise ValueError(f"split '{s['calibration_split']}' has no rows to calibrate on; set calibration_split")
    return batches


def taylor_scores(model, masked, batches, bar) -> list:
    """Per block: the sum over ``batches`` of |dL/d mask_u|.

    ``masked`` is the masks' context manager (it yields one mask tensor per block);
    the model's own parameters get no gradients while it runs.
    """
    import torch

    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)  # only the masks need gradients
    try:
        with masked as masks:
            scores = [torch.zeros_like(mask, requires_grad=False) for mask in masks]
            for batch in batches:
                loss = model(**batch).loss
                if loss is None:
                    raise ValueError("the model returned no loss: taylor scores need labelled calibration batches")
                for score, grad in zip(scores, torch.autograd.grad(loss, masks)):
                    score += grad.abs()
                bar.advance()
    finally:
        for p in trainable:
            p.requires_grad_(True)
    return [s.cpu() for s in scores]


def normalise_per_layer(scores) -> list:
    """Divide each block's scores by their L2 norm, so that one ranking across blocks is fair."""
    return [s / (s.norm() + 1e-20) for s in scores]


def importance_scores(ctx, model, sites, batches, taylor, magnitude, what: str) -> list:
    """Per-block scores by ``ctx.settings["importance"]``, normalised for one ranking across blocks.

    ``taylor(model, sites, batches, device, bar)`` and ``magnitude(sites)`` are the stage's
    own scorers; ``what`` names the units in the progress bar ("heads", "FFN neurons")."""
    if ctx.settings["importance"] == "taylor":
        with ctx.progress.track(f"{ctx.name}: scoring {what} (taylor)", total=len(batches)) as bar:
            raw = taylor(model, sites, batches, ctx.device, bar)
    else:
        raw = magnitude(sites)
    return normalise_per_layer(raw)


def check_finite_outputs(model, batch) -> None:
    """Raise if the pruned model's outputs on ``batch`` are not all finite."""
    import torch

    with torch.no_grad():
        logits = model(**batch).logits
    if not torch.isfinite(logits).all():
        raise RuntimeError("the pruned model's outputs are not finite")
