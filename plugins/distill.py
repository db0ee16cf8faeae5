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
(``_architectures``) says (one stack, or an encoder and a decoder stack, each with its
layer map).

The stage's result is the student. It is a plain transformers model whose config
describes it fully, so its artifact reloads with ``from_pretrained`` (no transform).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from compose import hookimpl
from compose.api import (
    Check,
    StageContext,
    StageResult,
    StageType,
    count_parameters,
    load_schema_file,
    train_model,
)
from compose.plugins._architecture_checks import architecture_problems, model_type_at
from compose.plugins._architecture_modules import layer_counts
from compose.plugins._architectures import lookup
from compose.plugins._distill_attention import heads_per_layer, restore, set_attention_dropout, use_eager_attention
from compose.plugins._distill_sizes import ALL_SIZE_KEYS, SIZE_KEYS, SIZE_ROLES, architecture_key_message
from compose.plugins._distill_sizes import size_key_message
from compose.plugins._distill_student import build_student, chosen_layers, config_differences

#: Output fields of each stack: (hidden states, self-attentions).
STACK_OUTPUTS = {
    "layers": ("hidden_states", "attentions"),
    "encoder": ("encoder_hidden_states", "encoder_attentions"),
    "decoder": ("decoder_hidden_states", "decoder_attentions"),
}

TERMS = ("soft", "hard", "hidden", "attention")


# ---------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------


def uniform_layer_map(n_student: int, n_teacher: int) -> list[int]:
    """Student layer i learns from teacher layer (i+1)*T/S - 1: spread evenly, last matches last."""
    return [max(0, math.ceil((i + 1) * n_teacher / n_student) - 1) for i in range(n_student)]


def _masked_mean(values, mask):
    """Mean of ``values`` (B, L) over positions where ``mask`` (B, L) is 1."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def soft_target_kl(student_logits, teacher_logits, temperature: float, mask=None):
    """KL(teacher || student) of the temperature-softened distributions, x T^2.

    Logits (B, C): mean over the batch. Logits (B, L, V): the KL of each position,
    averaged over the positions where ``mask`` (B, L) is 1.
    """
    import torch.nn.functional as F

    t = temperature
    log_p_student = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=-1)
    if mask is None:
        return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * t * t
    per_position = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)
    return _masked_mean(per_position, mask) * t * t


def hidden_mse(student_states, teacher_states, mask, projection=None):
    """MSE per token (mean over features) of one layer's states, averaged over real tokens."""
    s = student_states.float()
    if projection is not None:
        s = projection(s)
    return _masked_mean(((s - teacher_states.float()) ** 2).mean(-1), mask)


def attention_loss(student_att, teacher_att, mask, measure: str):
    """KL(teacher || student) or squared error of (B, H, Lq, Lk) attention rows, over real query tokens."""
    import torch

    s, t = student_att.float(), teacher_att.float()
    if measure == "kl":
        eps = torch.finfo(torch.float32).tiny
        per_row = (t * (t.clamp_min(eps).log() - s.clamp_min(eps).log())).sum(-1)
    else:
        per_row = ((s - t) ** 2).mean(-1)
    per_query = per_row.mean(1)  # over heads: (B, Lq)
    return _masked_mean(per_query, mask)


def _target_labels(batch):
    labels = batch.get("labels")
    if labels is None:
        raise ValueError("distilling an encoder-decoder needs the batch's labels (the target tokens)")
    return labels


def _next_token_mask(batch, inputs, logits):
    """Causal LM: position t predicts token t+1, so it counts where token t+1 is a label."""
    import torch

    target = batch.get("labels")
    target = (target != -100) if target is not None else inputs.get("attention_mask")
    mask = torch.zeros(logits.shape[:2], dtype=torch.bool, device=logits.device)
    if target is None:
        mask[:, :-1] = True
    else:
        mask[:, :-1] = target[:, 1:].bool()
    return mask


class DistillationLoss:
    """``loss_fn(model, batch)`` for ``train_model``: the weighted terms, with the teacher under no_grad.

    family:     "encoder", "decoder" or "encoder-decoder" (which positions the soft term averages over).
    layer_maps: {stack name: teacher layer of each student layer}, or None when nothing is matched
                (a plain list is the map of a one-stack model).
    """

    def __init__(self, teacher, settings: dict, layer_maps, projection=None, family: str = "encoder"):
        self.teacher = teacher
        self.soft_weight = settings["soft"]["weight"]
        self.temperature = settings["soft"]["temperature"]
        self.hard_weight = settings["hard"]["weight"]
        self.hidden_weight = settings["hidden"]["weight"]
        self.attention_weight = settings["attention"]["weight"]
        self.measure = settings["attention"]["measure"]
        self.layer_maps = {"layers": layer_maps} if isinstance(layer_maps, list) else layer_maps
        self.projection = projection
        self.family = family
        self.first: dict | None = None
        self.recent: list[dict] = []

    @property
    def weights(self) -> dict:
        return {"soft": self.soft_weight, "hard": self.hard_weight,
                "hidden": self.hidden_weight, "attention": self.attention_weight}  # fmt: skip

    @property
    def terms(self) -> list[str]:
        return [name for name, weight in self.weights.items() if weight > 0]

    def _masks(self, batch, inputs, logits) -> dict:
        """{stack name: (B, L) mask of the positions that count}, and "soft" for the soft term."""
        import torch

        mask = inputs.get("attention_mask")
        if mask is None:
            mask = torch.ones(logits.shape[0], inputs["input_ids"].shape[1], device=logits.device)
        if self.family == "encoder-decoder":
            target = _target_labels(batch) != -100
            return {"soft": target, "encoder": mask, "decoder": target}
        if self.family == "decoder":
            return {"soft": _next_token_mask(batch, inputs, logits), "layers": mask}
        return {"soft": None if logits.dim() == 2 else mask, "layers": mask}

    def components(self, model, batch) -> dict:
        """Each active term's (unweighted) value on ``batch``, as tensors."""
        import torch

        want_hidden, want_attention = self.hidden_weight > 0, self.attention_weight > 0
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        device = next(iter(inputs.values())).device
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        if self.family == "encoder-decoder" and "decoder_input_ids" not in inputs:
            # teacher and student read the same decoder inputs: the targets shifted right
            labels = _target_labels(batch)
            inputs["decoder_input_ids"] = self.teacher.prepare_decoder_input_ids_from_labels(labels=labels)
        extra = {}
        if want_hidden:
            extra["output_hidden_states"] = True
        if want_attention:
            extra["output_attentions"] = True
        if self.family != "encoder":
            extra["use_cache"] = False  # no key/value cache: each batch is one forward pass
        teacher_out = None
        if self.soft_weight > 0 or want_hidden or want_attention:
            with torch.no_grad():
                teacher_out = self.teacher(**inputs, **extra)
        student_inputs = {**inputs, "labels": batch["labels"]} if self.hard_weight > 0 and "labels" in batch else inputs
        student_out = model(**student_inputs, **extra)
        masks = self._masks(batch, inputs, student_out.logits)
        terms = {}
        if self.soft_weight > 0:
            terms["soft"] = soft_target_kl(student_out.logits, teacher_out.logits, self.temperature, masks["soft"])
        if self.hard_weight > 0:
            if student_out.loss is None:
                raise ValueError("the batch has no labels for the hard-label loss; set loss.hard.weight: 0")
            terms["hard"] = student_out.loss
        if want_hidden:
            # hidden_states[0] is the embeddings' output; layer i's output is hidden_states[i + 1]
            losses = []
            for stack, layer_map in self.layer_maps.items():
                key = STACK_OUTPUTS[stack][0]
                s_states, t_states = getattr(student_out, key), getattr(teacher_out, key)
                losses += [hidden_mse(s_states[i + 1], t_states[j + 1], masks[stack], self.projection)
                           for i, j in enumerate(layer_map)]  # fmt: skip
            terms["hidden"] = torch.stack(losses).mean()
        if want_attention:
            terms["attention"] = self._attention_term(student_out, teacher_out, masks)
        return terms

    def _attention_term(self, student_out, teacher_out, masks):
        import torch

        losses = []
        for stack, layer_map in self.layer_maps.items():
            key = STACK_OUTPUTS[stack][1]
            s_att, t_att = getattr(student_out, key, None), getattr(teacher_out, key, None)
            if not s_att or not t_att:
                raise ValueError(
                    "the model returned no attention weights (its attention implementation cannot output them); "
                    "set loss.attention.weight: 0"
                )
            where = "" if stack == "layers" else f"{stack} "
            for i, j in enumerate(layer_map):
                s, t = s_att[i], t_att[j]
                if s.shape[1] != t.shape[1]:
                    raise ValueError(
                        f"attention matching needs the same number of heads, but student {where}layer {i} has "
                        f"{s.shape[1]} and teacher {where}layer {j} has {t.shape[1]}; set loss.attention.weight: 0 "
                        "or give the student the teacher's number of heads"
                    )
                losses.append(attention_loss(s, t, masks[stack], self.measure))
        return torch.stack(losses).mean()

    def total(self, terms: dict):
        return sum(self.weights[name] * value for name, value in terms.items())

    def __call__(self, model, batch):
        terms = self.components(model, batch)
        values = {name: round(value.detach().float().item(), 6) for name, value in terms.items()}
        if self.first is None:
            self.first = values
        self.recent = (self.recent + [values])[-50:]
        return self.total(terms)

    def summary(self) -> dict:
        n = len(self.recent)
        last = {name: round(sum(v[name] for v in self.recent) / n, 6) for name in self.terms} if n else {}
        return {"first_batch": self.first or {}, "last_50_batches": last}


# ---------------------------------------------------------------------------
# Layer maps (shared by run time and plan time)
# ---------------------------------------------------------------------------


def _where(stack: str) -> str:
    return "" if stack == "layers" else f" {stack}"


def layer_map_form_problem(setting, two_stacks: bool) -> str | None:
    """Why the form of ``loss.layer_map`` does not fit a model with one or two stacks (None: it fits)."""
    if isinstance(setting, list) and two_stacks:
        return ("loss.layer_map is a list, but an encoder-decoder has two stacks of layers; give "
                "{encoder: [...] or null, decoder: [...] or null}")  # fmt: skip
    if isinstance(setting, dict) and not two_stacks:
        return ("loss.layer_map with encoder/decoder entries is for encoder-decoder models; give a list "
                "(one teacher layer per student layer) or null")  # fmt: skip
    return None


def layer_map_problems(setting, student_counts: dict, teacher_counts: dict) -> list[tuple]:
    """(message, settings path) for each entry of a well-formed ``loss.layer_map`` that does not fit.

    ``student_counts`` / ``teacher_counts``: {stack name: number of layers}.
    """
    given = setting if isinstance(setting, dict) else {"layers": setting}
    problems = []
    for stack, layer_map in given.items():
        if layer_map is None:
            continue
        name = "loss.layer_map" + ("" if stack == "layers" else f".{stack}")
        path = ("loss", "layer_map") + (() if stack == "layers" else (stack,))
        n_student, n_teacher = student_counts[stack], teacher_counts[stack]
        if len(layer_map) != n_student:
            problems.append((f"{name} has {len(layer_map)} entries but the student{_where(stack)} has {n_student} "
                             "layers; give one teacher layer per student layer (or null for the uniform mapping)",
                             path))  # fmt: skip
        bad = [j for j in layer_map if j >= n_teacher]
        if bad:
            problems.append((f"{name} names teacher{_where(stack)} layer(s) {bad}, but the teacher{_where(stack)} "
                             f"has {n_teacher} layers", path))  # fmt: skip
    return problems


def resolve_layer_maps(setting, student_counts: dict, teacher_counts: dict) -> dict:
    """{stack name: teacher layer of each student layer}: the given maps, uniform where null."""
    wrong_form = layer_map_form_problem(setting, "layers" not in student_counts)
    if wrong_form:
        raise ValueError(wrong_form)
    problems = layer_map_problems(setting, student_counts, teacher_counts)
    if problems:
        raise ValueError(problems[0][0])
    given = setting if isinstance(setting, dict) else {"layers": setting}
    return {
        stack: list(given.get(stack) or uniform_layer_map(n_student, teacher_counts[stack]))
        for stack, n_student in student_counts.items()
    }


# ---------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------


def _one_or_all(per_stack: dict):
    """A one-stack model's value itself, an encoder-decoder's {encoder: ..., decoder: ...}."""
    return per_stack["layers"] if list(per_stack) == ["layers"] else per_stack


def _check_heads(student, teacher, layer_maps: dict) -> None:
    student_heads, teacher_heads = heads_per_layer(student), heads_per_layer(teacher)
    for stack, layer_map in layer_maps.items():
        for i, j in enumerate(layer_map):
            if student_heads[stack][i] != teacher_heads[stack][j]:
                raise ValueError(
                    f"attention matching needs the same number of heads, but student{_where(stack)} layer {i} has "
                    f"{student_heads[stack][i]} and teacher{_where(stack)} layer {j} has {teacher_heads[stack][j]}; "
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
    loss = DistillationLoss(teacher, loss_settings, layer_maps, projection, ctx.family)
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
        ctx.log(f"teacher {count_parameters(teacher):,} parameters -> student {count_parameters(student):,}; "
                f"loss: {', '.join(loss.terms)}")  # fmt: skip
        student, summary = train_model(ctx, student, settings["training"], loss_fn=loss,
                                       extra_modules=[projection] if projection is not None else [])  # fmt: skip
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
        "student": {**student_info, "layers": _one_or_all(student_counts),
                    "config_differences": config_differences(teacher, student)},  # fmt: skip
        "loss": {
            "terms": loss.terms,
            "weights": {name: loss_settings[name]["weight"] for name in TERMS},
            "temperature": loss_settings["soft"]["temperature"],
            "layer_map": None if layer_maps is None else _one_or_all(layer_maps),
            "hidden_projection": None if projection is None else [projection.in_features, projection.out_features],
            "attention_measure": loss_settings["attention"]["measure"] if attention else None,
            "values": loss.summary(),
        },
        "training": summary.to_json(),
    }
    return StageResult(model=student, details=details)


# ---------------------------------------------------------------------------
# Plan-time: describe and check
# ---------------------------------------------------------------------------


def _describe_layers(rule) -> str:
    return "every other layer" if rule == "every_other" else f"layers {rule}"


def describe(settings) -> str:
    spec, loss_settings, training = settings["student"], settings["loss"], settings["training"]
    if "from_teacher" in spec:
        layers, decoder = spec["from_teacher"]["layers"], spec["from_teacher"]["decoder_layers"]
        student = f"a copy of the teacher keeping {_describe_layers(layers)}"
        if decoder is not None:
            student += f" of the encoder and {_describe_layers(decoder)} of the decoder"
    elif "config" in spec:
        sizes = ", ".join(f"{k}={spec['config'][k]}" for k in ALL_SIZE_KEYS if k in spec["config"])
        student = f"a random model with the teacher's config but {sizes}"
    else:
        student = f"the model at {spec.get('path') or spec.get('hub')}"
    terms = []
    if loss_settings["soft"]["weight"] > 0:
        terms.append(f"soft-target KL at T={loss_settings['soft']['temperature']} x{loss_settings['soft']['weight']}")
    if loss_settings["hard"]["weight"] > 0:
        terms.append(f"hard labels x{loss_settings['hard']['weight']}")
    given = loss_settings["layer_map"]
    mapping = "uniform layer map" if given is None else f"layer map {given}"
    if loss_settings["hidden"]["weight"] > 0:
        terms.append(f"hidden-state MSE x{loss_settings['hidden']['weight']} ({mapping})")
    if loss_settings["attention"]["weight"] > 0:
        att = loss_settings["attention"]
        terms.append(f"attention {att['measure'].upper()} x{att['weight']} ({mapping})")
    length = f"{training['max_steps']} steps" if training["max_steps"] else f"{training['epochs']} epoch(s)"
    return (
        f"distil into a student made of {student}; loss: {' + '.join(terms) or 'none'}; "
        f"train on '{training['split']}' for {length}, batch {training['batch_size']}, lr {training['learning_rate']}"
    )


def _config_json(folder) -> dict | None:
    """A student folder's config.json, if it can be read."""
    path = Path(folder) / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _known_teacher_config(plan) -> dict | None:
    """The teacher's config when it is the recipe's model, changed by nothing but `train` stages."""
    if any(uses != "train" for _, uses, _ in plan.stages[: plan.index]):
        return None
    return plan.model_config or None


def _counts(config: dict) -> dict | None:
    """{stack name: layers} read from a config dict (None where it does not say)."""
    arch = lookup(config.get("model_type"))
    return arch.layer_counts(config) if arch else None


def _heads(config: dict) -> int | None:
    arch = lookup(config.get("model_type"))
    return arch.config_value(config, "heads") if arch else None


def _student_config_checks(sizes: dict, teacher: dict | None, family: str, model_type):
    """Checks of a `config` student's sizes: keys that do not apply to the family or the architecture,
    head arithmetic."""
    arch = lookup(model_type)
    for key in sizes:
        if key in ALL_SIZE_KEYS and key not in SIZE_KEYS[family]:
            yield Check(size_key_message(key, family), path=("student", "config", key))
        elif key in ALL_SIZE_KEYS and arch is not None and architecture_key_message(key, arch):
            yield Check(architecture_key_message(key, arch), path=("student", "config", key))
    if family == "encoder-decoder" or teacher is None or arch is None:
        return
    roles = {role: arch.config_value(teacher, role) for role in ("hidden", "heads", "kv_heads")}
    teacher_heads, teacher_kv = roles["heads"], roles["kv_heads"]
    roles.update({SIZE_ROLES[k]: v for k, v in sizes.items() if k in SIZE_KEYS[family]})
    hidden, heads = roles["hidden"], roles["heads"]
    if hidden and heads and hidden % heads:
        divisors = [d for d in range(1, min(hidden, 64) + 1) if hidden % d == 0]
        yield Check(
            f"the student's hidden_size {hidden} is not a multiple of its num_attention_heads {heads}; "
            f"set student.config.num_attention_heads to a divisor of {hidden} (e.g. {divisors[-3:]})",
            path=("student", "config"),
        )
    kv = sizes.get("num_key_value_heads")
    if kv is None and teacher_kv is not None and teacher_kv != teacher_heads:
        kv = teacher_kv  # grouped-query attention stays grouped; plain multi-head follows num_attention_heads
    if kv and heads and heads % kv:
        yield Check(
            f"the student's num_attention_heads {heads} is not a multiple of its num_key_value_heads {kv}; "
            f"set student.config.num_key_value_heads to a divisor of {heads}",
            path=("student", "config"),
        )


def _student_counts(spec: dict, teacher_counts: dict, family: str):
    """(student's {stack: layers} or None, checks) for the student spec, given the teacher's counts."""
    problems = []
    if "from_teacher" in spec:
        counts = {}
        for stack, n_teacher in teacher_counts.items():
            layers = chosen_layers(spec["from_teacher"], stack, n_teacher)
            bad = [i for i in layers if i >= n_teacher]
            if bad:
                own = stack == "decoder" and spec["from_teacher"]["decoder_layers"] is not None
                setting = "decoder_layers" if own else "layers"
                problems.append(Check(
                    f"teacher{_where(stack)} layer(s) {bad} do not exist: the teacher{_where(stack)} has {n_teacher} "
                    f"layers (0 to {n_teacher - 1})", path=("student", "from_teacher", setting)))  # fmt: skip
            counts[stack] = len(layers)
        return counts, problems
    if "config" in spec:
        keys = {"layers": "num_hidden_layers", "encoder": "num_layers", "decoder": "num_decoder_layers"}
        sizes = spec["config"]
        return {stack: sizes.get(keys[stack], n) for stack, n in teacher_counts.items()}, problems
    if "path" in spec:
        config = _config_json(spec["path"])
        return (_counts(config) if config else None), problems
    return None, problems


def check(settings, plan):
    loss_settings, spec, family = settings["loss"], settings["student"], plan.family
    refused = architecture_problems("distill", plan)
    yield from refused
    if refused:
        return
    if all(loss_settings[name]["weight"] == 0 for name in TERMS):
        yield Check("every loss weight is 0: nothing to train the student on; set loss.soft.weight > 0", path=("loss",))
    if "from_teacher" in spec and plan.facts.get("structure_changed"):
        earlier = plan.set_by.get("structure_changed", "an earlier stage")
        yield Check(
            f"student.from_teacher copies the teacher's layers, but stage '{earlier}' before it changes their "
            f"structure; put distill before '{earlier}', or use student.config",
            path=("student", "from_teacher"),
        )
    if "from_teacher" in spec and spec["from_teacher"]["decoder_layers"] is not None and family != "encoder-decoder":
        yield Check(f"student.from_teacher.decoder_layers applies only to encoder-decoder models, not {family}; "
                    "remove it and choose the layers with `layers`",
                    path=("student", "from_teacher", "decoder_layers"))  # fmt: skip
    teacher = _known_teacher_config(plan)
    if "config" in spec:
        yield from _student_config_checks(spec["config"], teacher, family, model_type_at(plan))
    matching = loss_settings["hidden"]["weight"] > 0 or loss_settings["attention"]["weight"] > 0
    wrong_form = layer_map_form_problem(loss_settings["layer_map"], family == "encoder-decoder")
    if matching and wrong_form:
        yield Check(wrong_form, path=("loss", "layer_map"))
    teacher_counts = _counts(teacher) if teacher else None
    if teacher_counts is None:
        return
    student_counts, problems = _student_counts(spec, teacher_counts, family)
    yield from problems
    if student_counts is None or list(student_counts) != list(teacher_counts):
        return
    if matching and not wrong_form:
        for message, path in layer_map_problems(loss_settings["layer_map"], student_counts, teacher_counts):
            yield Check(message, path=path)
    if loss_settings["attention"]["weight"] > 0:
        teacher_heads = _heads(teacher)
        if "config" in spec:
            given = [v for k, v in spec["config"].items() if k in SIZE_KEYS[family] and SIZE_ROLES[k] == "heads"]
            student_heads = given[0] if given else teacher_heads
        elif "path" in spec:
            student_heads = _heads(_config_json(spec["path"]) or {})
        else:
            student_heads = teacher_heads
        if student_heads is not None and teacher_heads is not None and student_heads != teacher_heads:
            key = "num_heads" if family == "encoder-decoder" else "num_attention_heads"
            yield Check(
                f"attention matching needs the same number of heads, but the student has {student_heads} and the "
                f"teacher {teacher_heads}; set loss.attention.weight: 0, or keep {key} at {teacher_heads}",
                path=("loss", "attention", "weight"),
            )


@hookimpl
def compose_register_stages(register):
    register(
        StageType(
            name="distill",
            run=run,
            schema=load_schema_file("compose.schemas", "distill.schema.json"),
            description="Distil the trained model (teacher) into a smaller student: soft targets, hard labels, "
            "hidden-state and attention matching (encoders, decoders and encoder-decoders).",
            needs={"task_trained": True, "quantized": False},
            leaves={"distilled": True, "task_trained": True, "heads_pruned": False, "ffn_pruned": False,
                    "structure_changed": False},
            compresses=True,
            families=("encoder", "decoder", "encoder-decoder"),
            trains=True,
            check=check,
            describe=describe,
        )
    )
