"""The `rounding-error` stage: how far the weights are from the grid the next quantizing stage declares.

A cross-stage plugin written as any third party would write one: it learns what the later
stage will do to the weights only through ``compose.api`` (``PlanView.next_quantization`` to
validate, ``StageContext.next_quantization`` to run), never from that stage's settings or
modules, so it works before the built-in ``export`` or ``gptq`` stage or before a third
party's own quantizer that declares its scheme.

It rounds a copy of every Linear weight of the transformer blocks to the nearest level of
the declared weight grid (symmetric, ``2^(bits-1) - 1`` levels each side, one scale per
declared group) and reports the relative error per layer and overall. It leaves the model
as it was.
"""

from __future__ import annotations

from compose import hookimpl
from compose.api import Check, StageContext, StageResult, StageType

STAGE = "rounding-error"

SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "target": {
            "type": ["string", "null"],
            "default": None,
            "description": "The quantizing stage to measure against (its name); null: the next one that declares a quantization.",
        },
        "worst": {
            "type": "integer",
            "minimum": 0,
            "default": 3,
            "description": "How many of the worst layers to name in the report.",
        },
    },
}


def rounded(weight, bits: int, group_size: int):
    """``weight`` ([out, in]) on a symmetric grid of ``bits`` with one scale per group of ``group_size`` inputs
    (0: the whole matrix; -1: a whole row)."""
    import torch

    rows, cols = weight.shape
    group = cols if group_size == -1 else (rows * cols if group_size == 0 else group_size)
    flat = weight.reshape(-1) if group_size == 0 else weight
    pad = (-flat.shape[-1]) % group
    blocks = torch.nn.functional.pad(flat, (0, pad)).reshape(-1, group)
    top = 2 ** (bits - 1) - 1
    scale = blocks.abs().amax(dim=1, keepdim=True) / top
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    out = (torch.round(blocks / scale).clamp(-top, top) * scale).reshape(flat.shape[:-1] + (-1,))
    return out[..., : flat.shape[-1]].reshape(rows, cols)


def run(ctx: StageContext) -> StageResult:
    import torch

    found = ctx.next_quantization(ctx.settings["target"], ctx.model)
    if found is None:
        raise ValueError(f"{STAGE}: no later stage declares a quantization")
    _, scheme = found
    weights = scheme.weights
    errors = {}
    with torch.no_grad():
        for name, module in ctx.model.named_modules():
            if isinstance(module, torch.nn.Linear) and ".layer" in f".{name}":
                w = module.weight.float()
                q = rounded(w, weights.bits, weights.group_size)
                errors[name] = float((q - w).norm() / w.norm().clamp_min(1e-12))
    worst = sorted(errors, key=errors.get, reverse=True)[: ctx.settings["worst"]]
    mean = sum(errors.values()) / max(len(errors), 1)
    ctx.log(
        f"{len(errors)} layers against stage '{scheme.stage}' ({weights.describe()}): mean relative error {mean:.4f}"
    )
    details = {
        "target": scheme.stage,
        "runtime": scheme.runtime,
        "weights": {"bits": weights.bits, "group_size": weights.group_size, "symmetric": weights.symmetric},
        "layers": len(errors),
        "mean_relative_error": round(mean, 6),
        "worst": {name: round(errors[name], 6) for name in worst},
    }
    return StageResult(details=details)


def check(settings, plan):
    found = plan.next_quantization(settings["target"])
    if found is None:
        which = f"named '{settings['target']}' " if settings["target"] else ""
        yield Check(
            f"{STAGE} measures against a later stage's quantization, but no later stage {which}declares one; "
            "add a quantizing stage after it (an encoder's export, gptq) or remove this stage",
            "error",
            ("target",) if settings["target"] else (),
        )
    elif found[1].weights is None:
        yield Check(
            f"stage '{found[1].stage}' leaves the weights float: there is no rounding error to measure", "warning"
        )


def describe(settings) -> str:
    target = f"stage '{settings['target']}'" if settings["target"] else "the next quantizing stage"
    return f"measure each block Linear's relative rounding error on the weight grid {target} declares (model unchanged)"


@hookimpl
def compose_register_stages(register):
    register(
        StageType(
            name=STAGE,
            run=run,
            schema=SCHEMA,
            description="Measure the weights' rounding error on the grid a later stage declares (reads it through compose.api).",
            needs={"quantized": False},
            families=("encoder", "decoder", "encoder-decoder"),
            check=check,
            describe=describe,
        )
    )
