"""The `qad` stage: distil a model into its own quantized self, as the next stage will quantize it.

Post-training quantization rounds a float model that never saw rounding (what that costs
the default pipeline's 4-bit export is measured in docs/results.md). Quantization-aware training simulates the rounding while the model
still trains, so the weights settle where rounding costs little; with a frozen float copy
of the model as teacher it is quantization-aware distillation (the quantized model learns
the float model's outputs, not only the labels).

1. read the quantization the target stage will apply (``scheme``): an encoder's ``export``
   (ONNX Runtime: weights, embedding tables and matmul inputs) or a ``gptq`` stage (any
   family: the blocks' weights on GPTQModel's grid);
2. copy the entering model as the frozen float teacher;
3. fake-quantize the model as the target will (``simulation``, ``fake_quant``;
   straight-through gradients) and train it on the soft targets (and optionally the
   labels) through the shared training loop;
4. for an export, leave every weight on its grid (``bake``): the export's quantizer then
   finds exactly the integers and scales the model was trained with. For gptq, keep the
   trained float weights: GPTQ recomputes its grid from them (its ``method: rtn`` lands on
   the simulated values; ``gptq`` compensates its rounding errors from there).

The scheme comes from the target's declaration (``compose.api``: ``StageContext.next_quantization``),
and ``record_trained_for`` tells the target which scheme the weights were trained for; the export
reports it and whether its own scheme matches. No module of another plugin is imported.
"""

from __future__ import annotations

import copy

from compose import hookimpl
from compose.api import (
    Check,
    ComposeError,
    StageContext,
    StageResult,
    StageType,
    load_schema_file,
    record_trained_for,
    train_model,
)
from compose.plugins.qad.scheme import GPTQScheme, scheme_of, unsupported

STAGE = "qad"


def _loss_settings(settings) -> dict:
    """The distillation loss's settings: soft targets and labels, no layer matching."""
    return {
        "soft": settings["loss"]["soft"],
        "hard": settings["loss"]["hard"],
        "hidden": {"weight": 0.0},
        "attention": {"weight": 0.0, "measure": None},
    }


def run(ctx: StageContext) -> StageResult:
    # torch and the shared training blocks: imported to run, not to validate a recipe
    from compose.plugins.qad.simulation import bake, simulate, simulate_gptq
    from compose.plugins.shared.architectures.modules import block_linears, stacks
    from compose.plugins.shared.distillation.loss import DistillationLoss
    from compose.plugins.shared.distillation.teacher_cache import TeacherCache, why_not_cached

    settings = ctx.settings
    model = ctx.model
    found = ctx.next_quantization(settings["target"], model)
    if found is None:  # validation refuses this; a recipe built in code may not have been validated
        raise ComposeError(f"qad: no stage after '{ctx.name}' declares a quantization to simulate")
    declared = found[1]
    reason = unsupported(declared)
    if reason is not None:
        raise ComposeError(f"qad cannot simulate stage '{declared.stage}': {reason}")
    scheme = scheme_of(declared)
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    gptq = isinstance(scheme, GPTQScheme)
    if gptq:
        layers = [
            layer for stack in stacks(model, STAGE) for block in stack.layers for layer in block_linears(block).values()
        ]
        counts = simulate_gptq(model, scheme, layers)
    else:
        counts = simulate(model, scheme)
    loss_settings = _loss_settings(settings)
    not_cached = why_not_cached({"loss": loss_settings, "teacher_cache": settings["teacher_cache"]}, ctx.family)
    cache = TeacherCache(settings["teacher_cache"]["max_megabytes"]) if not_cached is None else None
    loss = DistillationLoss(teacher, loss_settings, None, None, ctx.family, teacher_cache=cache)
    if not loss.terms:
        raise ComposeError("qad: every loss weight is 0; give loss.soft.weight > 0 (or loss.hard.weight)")
    ctx.log(f"simulating {scheme.describe()}: {counts['linear']} matmuls, {counts['embedding']} tables")
    try:
        model, summary = train_model(ctx, model, settings["training"], loss_fn=loss)
    finally:  # on the export's grid exactly; for gptq the trained float weights, which it quantizes itself
        bake(model, keep_rounded=not gptq)
    model.eval()
    record_trained_for(model, declared, ctx)
    details = {
        "scheme": scheme.as_dict(),
        "declared": declared.as_dict(),
        "simulated": counts,
        "loss": {"terms": loss.terms, "values": loss.summary()},
        "teacher_cache": cache.summary() if cache is not None else {"used": False, "reason": not_cached},
        "training": summary.to_json(),
    }
    return StageResult(model=model, details=details)


def rebuild(model, info):
    """Nothing to rebuild: the weights are saved on the grid, in the model's own layout."""
    return model


def check(settings, plan):
    named = settings.get("target")
    found = plan.next_quantization(named)
    if found is None:
        which = f"stage named '{named}' that declares a quantization" if named else "stage that declares a quantization"
        yield Check(
            f"qad simulates the quantization of the stage that follows it, but there is no {which} after it "
            "(an encoder's export does; a decoder's or T5's export writes a float checkpoint); "
            "add `- {name: deploy, uses: export}` (encoders) or `- {name: quantize, uses: gptq}` after it"
            + (" or fix `target`" if named else ""),
            "error",
            ("target",) if named else (),
        )
        return
    position, declared = found
    between = [name for name, _uses, _with in plan.stages[plan.index + 1 : position]]
    if between:
        yield Check(
            f"qad must come right before '{declared.stage}', whose quantization it simulates: stage(s) "
            f"{', '.join(between)} between them would change the weights it put on that grid (train, prune or "
            "quantize them again); move qad after them",
            "error",
        )
    reason = unsupported(declared)
    if reason is not None:
        yield Check(f"qad cannot simulate stage '{declared.stage}': {reason}", "error")
        return
    if declared.weights is None and declared.embeddings is None:
        yield Check(
            f"stage '{declared.stage}' quantizes nothing (weights and embeddings float): qad has nothing to simulate",
            "error",
        )


def describe(settings) -> str:
    loss = settings["loss"]
    terms = (
        [f"soft targets at T={loss['soft']['temperature']} x{loss['soft']['weight']}"] if loss["soft"]["weight"] else []
    )
    if loss["hard"]["weight"]:
        terms.append(f"hard labels x{loss['hard']['weight']}")
    target = f"stage '{settings['target']}'" if settings["target"] else "the export or gptq stage after it"
    return (
        f"simulate the quantization of {target} while training (fake-quantized as that stage will quantize: "
        f"an export's weights, tables and matmul inputs, left on its grid; gptq's block weights), distilling "
        f"from its float self ({' + '.join(terms)})"
    )


@hookimpl
def compose_register_stages(register):
    register(
        StageType(
            name=STAGE,
            run=run,
            schema=load_schema_file("compose.plugins.qad", "qad.schema.json"),
            description="Quantization-aware distillation: train with the quantization of the export (encoders: "
            "ONNX Runtime int8/int4) or gptq stage after it simulated, from a float copy of the model.",
            needs={"task_trained": True, "quantized": False},
            leaves={"quantization_simulated": True},
            compresses=True,  # the first step of the quantization: retained is measured against what entered it
            families=("encoder", "decoder", "encoder-decoder"),
            trains=True,
            check=check,
            describe=describe,
            rebuild=rebuild,
        )
    )
