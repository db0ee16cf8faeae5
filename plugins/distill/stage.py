"""The `distill` stage: train a smaller student to imitate the model entering the stage.

The model coming in is the *teacher*: frozen, in eval mode, run under ``no_grad``.
The *student* is built from the teacher's own layers (``from_teacher``, as
DistilBERT), from the teacher's config with smaller sizes (``config``, random
weights), or loaded from a folder or the hub (``path`` / ``hub``). It trains
through the shared loop (``compose.api.train_model``) on a weighted sum of

- soft targets: KL(teacher || student) of the temperature-softened logits, x T^2,
  per example (classification) or per predicted token (language models: the
  positions whose next token is a label; seq2seq: the target positions);
- hard labels:  the task's own loss (the student's ``outputs.loss``);
- hidden states: MSE between mapped student and teacher layer outputs, through a
  learned projection when the widths differ (trained along, then dropped);
- attentions:   KL or MSE between mapped self-attention distributions (same heads only).

Encoders (BERT), decoders (Llama, GPT-2) and encoder-decoders (T5) share all of
this; what differs is where the layers are, which the architecture table
(``architectures.registry``) says (one stack, or an encoder and a decoder stack, each with its
layer map).

One module per concern: the loss (``distill.loss``), layer maps (``distill.layer_maps``),
the student (``distill.student``, ``distill.sizes``), attention settings
(``distill.attention``) and the plan-time checks (``distill.plan``); this one runs the stage.

The stage's result is the student. It is a plain transformers model whose config
describes it fully, so its artifact reloads with ``from_pretrained`` (no transform).
"""

from __future__ import annotations

from compose import hookimpl
from compose.api import StageContext, StageResult, StageType, count_parameters, load_schema_file, train_model
from compose.plugins.distill.attention import heads_per_layer, restore, set_attention_dropout, use_eager_attention
from compose.plugins.distill.layer_maps import resolve_layer_maps, stack_label
from compose.plugins.distill.plan import check, cost, describe, replaces_model
from compose.plugins.distill.student import build_student, config_differences
from compose.plugins.shared.architectures.modules import layer_counts
from compose.plugins.shared.distillation.loss import TERMS, DistillationLoss
from compose.plugins.shared.distillation.teacher_cache import TeacherCache, why_not_cached


def _one_or_all(per_stack: dict):
    """A one-stack model's value itself, an encoder-decoder's {encoder: ..., decoder: ...}."""
    return per_stack["layers"] if list(per_stack) == ["layers"] else per_stack


def _check_heads(student, teacher, layer_maps: dict) -> None:
    student_heads, teacher_heads = heads_per_layer(student), heads_per_layer(teacher)
    for stack, layer_map in layer_maps.items():
        for i, j in enumerate(layer_map):
            if student_heads[stack][i] != teacher_heads[stack][j]:
                raise ValueError(
                    f"attention matching needs the same number of heads, but student{stack_label(stack)} layer {i} has "
                    f"{student_heads[stack][i]} and teacher{stack_label(stack)} layer {j} has {teacher_heads[stack][j]}; "
                    "set loss.attention.weight: 0 or give the student the teacher's number of heads"
                )


def run(ctx: StageContext) -> StageResult:
    import torch

    settings, loss_settings = ctx.settings, ctx.settings["loss"]
    teacher = ctx.model
    student, student_info = build_student(ctx, teacher)
    student.to(ctx.device)
    teacher.to(ctx.device)
    matching = loss_settings["hidden"]["weight"] > 0 or loss_settings["attention"]["weight"] > 0
    student_counts, teacher_counts = layer_counts(student, "distill"), layer_counts(teacher, "distill")
    layer_maps = resolve_layer_maps(loss_settings["layer_map"], student_counts, teacher_counts) if matching else None
    attention = loss_settings["attention"]["weight"] > 0
    if attention:
        _check_heads(student, teacher, layer_maps)

    projection = None
    if loss_settings["hidden"]["weight"] > 0 and student.config.hidden_size != teacher.config.hidden_size:
        torch.manual_seed(ctx.seed)
        projection = torch.nn.Linear(student.config.hidden_size, teacher.config.hidden_size).to(ctx.device)

    was_grad = {name: p.requires_grad for name, p in teacher.named_parameters()}
    was_training = teacher.training
    changed = []  # dropouts and attention implementations, restored afterwards
    not_cached = why_not_cached(settings, ctx.family)
    cache = TeacherCache(settings["teacher_cache"]["max_megabytes"]) if not_cached is None else None
    loss = DistillationLoss(teacher, loss_settings, layer_maps, projection, ctx.family, teacher_cache=cache)
    if not loss.terms:
        raise ValueError("every loss weight is 0: nothing to train the student on; give loss.soft.weight > 0")
    try:
        teacher.eval()
        teacher.requires_grad_(False)
        if attention:
            # sdpa / flash attention return no attention weights: run both in eager while matching,
            # and without dropout on the student's probabilities (eager returns them after dropout).
            for model in (teacher, student):
                changed += use_eager_attention(model)
            changed += set_attention_dropout(student, 0.0)
        ctx.log(
            f"teacher {count_parameters(teacher):,} parameters -> student {count_parameters(student):,}; "
            f"loss: {', '.join(loss.terms)}"
        )
        student, summary = train_model(
            ctx,
            student,
            settings["training"],
            loss_fn=loss,
            extra_modules=[projection] if projection is not None else [],
        )
    finally:
        restore(changed)
        for name, param in teacher.named_parameters():
            param.requires_grad_(was_grad[name])
        teacher.train(was_training)
    student.eval()

    teacher_params, student_params = count_parameters(teacher), count_parameters(student)
    details = {
        "teacher_params": teacher_params,
        "student_params": student_params,
        "params_ratio": round(student_params / teacher_params, 4),
        "student": {
            **student_info,
            "layers": _one_or_all(student_counts),
            "config_differences": config_differences(teacher, student),
        },
        "loss": {
            "terms": loss.terms,
            "weights": {name: loss_settings[name]["weight"] for name in TERMS},
            "temperature": loss_settings["soft"]["temperature"],
            "layer_map": None if layer_maps is None else _one_or_all(layer_maps),
            "hidden_projection": None if projection is None else [projection.in_features, projection.out_features],
            "attention_measure": loss_settings["attention"]["measure"] if attention else None,
            "values": loss.summary(),
        },
        "teacher_cache": cache.summary() if cache is not None else {"used": False, "reason": not_cached},
        "training": summary.to_json(),
    }
    return StageResult(model=student, details=details)


@hookimpl
def compose_register_stages(register):
    register(
        StageType(
            name="distill",
            run=run,
            schema=load_schema_file("compose.plugins.distill", "distill.schema.json"),
            description="Distil the trained model (teacher) into a smaller student: soft targets, hard labels, "
            "hidden-state and attention matching (encoders, decoders and encoder-decoders).",
            needs={"task_trained": True, "quantized": False},
            leaves={
                "distilled": True,
                "task_trained": True,
                "heads_pruned": False,
                "ffn_pruned": False,
                "structure_changed": False,
            },
            compresses=True,
            families=("encoder", "decoder", "encoder-decoder"),
            trains=True,
            check=check,
            describe=describe,
            replaces_model=replaces_model,
            cost=cost,
        )
    )
