"""The `distill` stage: train a smaller student to imitate the model entering the stage.

The model coming in is the *teacher*: frozen, in eval mode, run under ``no_grad``.
The *student* is built from the teacher's own layers (``from_teacher``, as
DistilBERT), from the teacher's config with smaller sizes (``config``, random
weights), or loaded from a folder or the hub (``path`` / ``hub``). It trains
through the shared loop (``compose.api.train_model``) on a weighted sum of

- soft targets: KL(teacher || student) of the temperature-softened logits, x T^2;
- hard labels:  the task's own loss (the student's ``outputs.loss``);
- hidden states: MSE between mapped student and teacher layer outputs, through a
  learned projection when the widths differ (trained along, then dropped);
- attentions:   KL or MSE between mapped attention distributions (same heads only).

The stage's result is the student. It is a plain transformers model whose config
describes it fully, so its artifact reloads with ``from_pretrained`` (no transform).

Layer access goes through ``_layer_owner`` / ``_attention_modules``, which know
the encoder layout (``base_model.encoder.layer``) and the places other families
keep their layers, so that GPT-2 (``base_model.h``) can be added by allowing the
family; T5 (two stacks) needs its own mapping per stack.
"""

from __future__ import annotations

import copy
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
    task_model_kwargs,
    train_model,
)

#: task.kind -> the transformers Auto class a `path` / `hub` student is loaded with.
AUTO_CLASSES = {
    "sequence-classification": "AutoModelForSequenceClassification",
    "causal-lm": "AutoModelForCausalLM",
    "seq2seq": "AutoModelForSeq2SeqLM",
}

#: Where the stack of transformer layers lives under ``model.base_model``, by layout.
LAYER_PATHS = ("encoder.layer", "transformer.layer", "layer", "h", "layers")

#: Sizes a `config` student may override.
SIZE_KEYS = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size")

#: Config entries that are bookkeeping, not structure (left out of the config differences).
_NOT_STRUCTURE = {"_name_or_path", "transformers_version", "architectures", "dtype", "torch_dtype",
                  "_attn_implementation_autoset", "id2label", "label2id"}  # fmt: skip


# ---------------------------------------------------------------------------
# Layer access (the part a later family extends)
# ---------------------------------------------------------------------------


def _layer_owner(model):
    """(module, attribute) holding the model's ``nn.ModuleList`` of transformer layers."""
    import torch

    base = getattr(model, "base_model", model)
    for path in LAYER_PATHS:
        *parents, last = path.split(".")
        owner = base
        for part in parents:
            owner = getattr(owner, part, None)
        if owner is not None and isinstance(getattr(owner, last, None), torch.nn.ModuleList):
            return owner, last
    raise ValueError(
        f"distill cannot find the transformer layers of {type(model).__name__} "
        f"(looked under base_model for: {', '.join(LAYER_PATHS)})"
    )


def _layers(model):
    owner, attr = _layer_owner(model)
    return getattr(owner, attr)


def _head_count(module) -> int | None:
    for attr in ("num_attention_heads", "num_heads", "n_head"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    return None


def _attention_modules(layer) -> list:
    """The outermost modules of one layer that know their head count (the self-attentions)."""
    found = []
    for module in layer.modules():
        if _head_count(module) is not None and not any(_contains(f, module) for f in found):
            found.append(module)
    return found


def _contains(parent, child) -> bool:
    return any(m is child for m in parent.modules())


def _heads_per_layer(model) -> list[int]:
    heads = []
    for layer in _layers(model):
        modules = _attention_modules(layer)
        heads.append(_head_count(modules[0]) if modules else model.config.num_attention_heads)
    return heads


def _embeddings(model):
    """The embedding block (word, position, token-type, LayerNorm) when the model has one."""
    base = getattr(model, "base_model", model)
    return getattr(base, "embeddings", None)


def _renumber(layer, index: int) -> None:
    for module in layer.modules():
        if isinstance(getattr(module, "layer_idx", None), int):
            module.layer_idx = index


# ---------------------------------------------------------------------------
# The student
# ---------------------------------------------------------------------------


def _every_other(n_layers: int) -> list[int]:
    return list(range(0, n_layers, 2))


def _student_from_teacher(teacher, layers_setting) -> tuple:
    n_teacher = len(_layers(teacher))
    chosen = _every_other(n_teacher) if layers_setting == "every_other" else list(layers_setting)
    bad = [i for i in chosen if i >= n_teacher]
    if bad:
        raise ValueError(
            f"student.from_teacher.layers names teacher layer(s) {bad}, but the teacher has "
            f"{n_teacher} layers (0 to {n_teacher - 1}); pick indices below {n_teacher}"
        )
    student = copy.deepcopy(teacher)
    student.__dict__.pop("compose_transforms", None)
    owner, attr = _layer_owner(student)
    old = getattr(owner, attr)
    kept = type(old)([old[i] for i in chosen])
    for index, layer in enumerate(kept):
        _renumber(layer, index)
    setattr(owner, attr, kept)
    student.config.num_hidden_layers = len(chosen)
    return student, {"source": "from_teacher", "teacher_layers": chosen,
                     "copied": ["embeddings", f"layers {chosen}", "pooler", "classifier"]}  # fmt: skip


def _student_from_config(teacher, settings, seed: int) -> tuple:
    import torch

    overrides = {k: settings[k] for k in SIZE_KEYS if k in settings}
    config = copy.deepcopy(teacher.config)
    for key, value in overrides.items():
        setattr(config, key, value)
    if config.hidden_size % config.num_attention_heads:
        raise ValueError(
            f"student.config: hidden_size {config.hidden_size} is not a multiple of num_attention_heads "
            f"{config.num_attention_heads}; set num_attention_heads to a divisor of {config.hidden_size}"
        )
    torch.manual_seed(seed)
    student = type(teacher)(config)
    copied = False
    if settings["copy_embeddings"] and config.hidden_size == teacher.config.hidden_size:
        source, target = _embeddings(teacher), _embeddings(student)
        if source is not None and target is not None:
            target.load_state_dict(source.state_dict())
        else:
            student.get_input_embeddings().load_state_dict(teacher.get_input_embeddings().state_dict())
        copied = True
    return student, {"source": "config", "overrides": overrides, "embeddings_copied": copied}


def _student_from_saved(ctx, settings) -> tuple:
    import transformers

    cls = getattr(transformers, AUTO_CLASSES[ctx.task.kind])
    if "path" in settings:
        if not Path(settings["path"]).is_dir():
            raise ValueError(
                f"student.path {settings['path']} is not a folder; give a folder saved with save_pretrained"
            )
        source, kwargs = settings["path"], {"local_files_only": True}
    else:
        source, kwargs = settings["hub"], ({"revision": settings["revision"]} if "revision" in settings else {})
    try:
        student = cls.from_pretrained(source, **task_model_kwargs(ctx.task), **kwargs)
    except Exception as exc:  # noqa: BLE001 - any loading failure is the user's to fix
        raise ValueError(f"cannot load the student from {source}: {type(exc).__name__}: {exc}") from None
    return student, {"source": "path" if "path" in settings else "hub", "from": source}


def build_student(ctx: StageContext, teacher) -> tuple:
    """(student, facts about how it was made) for ``ctx.settings['student']``."""
    spec = ctx.settings["student"]
    if "from_teacher" in spec:
        applied = list(getattr(teacher, "compose_transforms", []))
        if applied:
            stages = ", ".join(sorted({t["stage"] for t in applied}))
            raise ValueError(
                f"student.from_teacher copies the teacher's layers, but the teacher's structure was changed "
                f"by stage(s) {stages} and no longer matches its config; distil before those stages, "
                "or use student.config"
            )
        student, info = _student_from_teacher(teacher, spec["from_teacher"]["layers"])
    elif "config" in spec:
        student, info = _student_from_config(teacher, spec["config"], ctx.seed)
    else:
        student, info = _student_from_saved(ctx, spec)
    for what in ("vocab_size", "num_labels"):
        mine, theirs = getattr(student.config, what, None), getattr(teacher.config, what, None)
        if mine != theirs:
            raise ValueError(
                f"the student has {what} {mine} but the teacher has {theirs}; the student reads the teacher's "
                f"tokenizer and imitates its outputs, so they must agree"
            )
    for param in student.parameters():
        param.requires_grad_(True)
    return student, info


def config_differences(teacher, student) -> dict:
    """{key: [teacher value, student value]} for every structural config entry that differs."""
    ours, theirs = student.config.to_dict(), teacher.config.to_dict()
    keys = sorted((set(ours) | set(theirs)) - _NOT_STRUCTURE)
    return {k: [theirs.get(k), ours.get(k)] for k in keys if theirs.get(k) != ours.get(k)}


# ---------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------


def uniform_layer_map(n_student: int, n_teacher: int) -> list[int]:
    """Student layer i learns from teacher layer (i+1)*T/S - 1: spread evenly, last matches last."""
    return [max(0, math.ceil((i + 1) * n_teacher / n_student) - 1) for i in range(n_student)]


def soft_target_kl(student_logits, teacher_logits, temperature: float):
    """KL(teacher || student) of the temperature-softened distributions, x T^2, mean over the batch."""
    import torch.nn.functional as F

    t = temperature
    log_p_student = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=-1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * t * t


def _masked_mean(values, mask):
    """Mean of ``values`` (B, L) over positions where ``mask`` (B, L) is 1."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


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


class DistillationLoss:
    """``loss_fn(model, batch)`` for ``train_model``: the weighted terms, with the teacher under no_grad."""

    def __init__(self, teacher, settings: dict, layer_map: list[int] | None, projection=None):
        self.teacher = teacher
        self.soft_weight = settings["soft"]["weight"]
        self.temperature = settings["soft"]["temperature"]
        self.hard_weight = settings["hard"]["weight"]
        self.hidden_weight = settings["hidden"]["weight"]
        self.attention_weight = settings["attention"]["weight"]
        self.measure = settings["attention"]["measure"]
        self.layer_map = layer_map
        self.projection = projection
        self.first: dict | None = None
        self.recent: list[dict] = []

    @property
    def terms(self) -> list[str]:
        weights = {"soft": self.soft_weight, "hard": self.hard_weight,
                   "hidden": self.hidden_weight, "attention": self.attention_weight}  # fmt: skip
        return [name for name, weight in weights.items() if weight > 0]

    def components(self, model, batch) -> dict:
        """Each active term's (unweighted) value on ``batch``, as tensors."""
        import torch

        want_hidden, want_attention = self.hidden_weight > 0, self.attention_weight > 0
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        extra = {}
        if want_hidden:
            extra["output_hidden_states"] = True
        if want_attention:
            extra["output_attentions"] = True
        teacher_out = None
        if self.soft_weight > 0 or want_hidden or want_attention:
            device = next(iter(inputs.values())).device
            if next(self.teacher.parameters()).device != device:
                self.teacher.to(device)
            with torch.no_grad():
                teacher_out = self.teacher(**inputs, **extra)
        student_out = model(**(batch if self.hard_weight > 0 else inputs), **extra)
        mask = inputs.get("attention_mask")
        if mask is None:
            mask = torch.ones(student_out.logits.shape[0], next(iter(inputs.values())).shape[1],
                              device=student_out.logits.device)  # fmt: skip
        terms = {}
        if self.soft_weight > 0:
            terms["soft"] = soft_target_kl(student_out.logits, teacher_out.logits, self.temperature)
        if self.hard_weight > 0:
            if student_out.loss is None:
                raise ValueError("the batch has no labels for the hard-label loss; set loss.hard.weight: 0")
            terms["hard"] = student_out.loss
        if want_hidden:
            # hidden_states[0] is the embeddings' output; layer i's output is hidden_states[i + 1]
            losses = [
                hidden_mse(student_out.hidden_states[i + 1], teacher_out.hidden_states[j + 1], mask, self.projection)
                for i, j in enumerate(self.layer_map)
            ]
            terms["hidden"] = torch.stack(losses).mean()
        if want_attention:
            if not student_out.attentions or not teacher_out.attentions:
                raise ValueError(
                    "the model returned no attention weights (its attention implementation cannot output them); "
                    "set loss.attention.weight: 0"
                )
            losses = []
            for i, j in enumerate(self.layer_map):
                s, t = student_out.attentions[i], teacher_out.attentions[j]
                if s.shape[1] != t.shape[1]:
                    raise ValueError(
                        f"attention matching needs the same number of heads, but student layer {i} has {s.shape[1]} "
                        f"and teacher layer {j} has {t.shape[1]}; set loss.attention.weight: 0 or give the "
                        "student the teacher's num_attention_heads"
                    )
                losses.append(attention_loss(s, t, mask, self.measure))
            terms["attention"] = torch.stack(losses).mean()
        return terms

    def total(self, terms: dict):
        weights = {"soft": self.soft_weight, "hard": self.hard_weight,
                   "hidden": self.hidden_weight, "attention": self.attention_weight}  # fmt: skip
        return sum(weights[name] * value for name, value in terms.items())

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
# The stage
# ---------------------------------------------------------------------------


def _set_attention_dropout(model, p: float | None) -> list:
    """Set the attention-probability dropout of every layer to ``p``; return the old values."""
    import torch

    old = []
    for layer in _layers(model):
        for module in _attention_modules(layer):
            dropout = getattr(module, "dropout", None)
            if isinstance(dropout, torch.nn.Dropout):
                old.append((dropout, dropout.p))
                dropout.p = p
    return old


def _layer_map(loss_settings, n_student: int, n_teacher: int) -> list[int]:
    given = loss_settings["layer_map"]
    if given is None:
        return uniform_layer_map(n_student, n_teacher)
    if len(given) != n_student:
        raise ValueError(
            f"loss.layer_map has {len(given)} entries but the student has {n_student} layers; "
            "give one teacher layer per student layer (or null for the uniform mapping)"
        )
    bad = [j for j in given if j >= n_teacher]
    if bad:
        raise ValueError(f"loss.layer_map names teacher layer(s) {bad}, but the teacher has {n_teacher} layers")
    return list(given)


def run(ctx: StageContext) -> StageResult:
    import torch

    settings, loss_settings = ctx.settings, ctx.settings["loss"]
    teacher = ctx.model
    student, student_info = build_student(ctx, teacher)
    student.to(ctx.device)
    teacher.to(ctx.device)
    matching = loss_settings["hidden"]["weight"] > 0 or loss_settings["attention"]["weight"] > 0
    n_student, n_teacher = len(_layers(student)), len(_layers(teacher))
    layer_map = _layer_map(loss_settings, n_student, n_teacher) if matching else None

    attention = loss_settings["attention"]["weight"] > 0
    if attention:
        student_heads, teacher_heads = _heads_per_layer(student), _heads_per_layer(teacher)
        for i, j in enumerate(layer_map):
            if student_heads[i] != teacher_heads[j]:
                raise ValueError(
                    f"attention matching needs the same number of heads, but student layer {i} has "
                    f"{student_heads[i]} and teacher layer {j} has {teacher_heads[j]}; set loss.attention.weight: 0 "
                    "or give the student the teacher's num_attention_heads"
                )

    projection = None
    if loss_settings["hidden"]["weight"] > 0 and student.config.hidden_size != teacher.config.hidden_size:
        torch.manual_seed(ctx.seed)
        projection = torch.nn.Linear(student.config.hidden_size, teacher.config.hidden_size).to(ctx.device)

    was_grad = {name: p.requires_grad for name, p in teacher.named_parameters()}
    was_training = teacher.training
    teacher_impl = getattr(teacher.config, "_attn_implementation", None)
    student_impl = getattr(student.config, "_attn_implementation", None)
    dropouts = []
    loss = DistillationLoss(teacher, loss_settings, layer_map, projection)
    if not loss.terms:
        raise ValueError("every loss weight is 0: nothing to train the student on; give loss.soft.weight > 0")
    try:
        teacher.eval()
        teacher.requires_grad_(False)
        if attention:
            # sdpa / flash attention return no attention weights: run both in eager while matching,
            # and without dropout on the student's probabilities (eager returns them after dropout).
            for model in (teacher, student):
                if model.config._attn_implementation != "eager":
                    model.set_attn_implementation("eager")
            dropouts = _set_attention_dropout(student, 0.0)
        ctx.log(f"teacher {count_parameters(teacher):,} parameters -> student {count_parameters(student):,}; "
                f"loss: {', '.join(loss.terms)}")  # fmt: skip
        student, summary = train_model(ctx, student, settings["training"], loss_fn=loss,
                                       extra_modules=[projection] if projection is not None else [])  # fmt: skip
    finally:
        for dropout, p in dropouts:
            dropout.p = p
        for model, impl in ((teacher, teacher_impl), (student, student_impl)):
            if impl is not None and model.config._attn_implementation != impl:
                model.set_attn_implementation(impl)
        for name, param in teacher.named_parameters():
            param.requires_grad_(was_grad[name])
        teacher.train(was_training)
    student.eval()

    teacher_params, student_params = count_parameters(teacher), count_parameters(student)
    details = {
        "teacher_params": teacher_params,
        "student_params": student_params,
        "params_ratio": round(student_params / teacher_params, 4),
        "student": {**student_info, "layers": n_student, "config_differences": config_differences(teacher, student)},
        "loss": {
            "terms": loss.terms,
            "weights": {name: loss_settings[name]["weight"] for name in ("soft", "hard", "hidden", "attention")},
            "temperature": loss_settings["soft"]["temperature"],
            "layer_map": layer_map,
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


def describe(settings) -> str:
    spec, loss_settings, training = settings["student"], settings["loss"], settings["training"]
    if "from_teacher" in spec:
        layers = spec["from_teacher"]["layers"]
        layers = "every other layer" if layers == "every_other" else f"layers {layers}"
        student = f"the teacher's embeddings, {layers}, pooler and classifier"
    elif "config" in spec:
        sizes = ", ".join(f"{k}={spec['config'][k]}" for k in SIZE_KEYS if k in spec["config"])
        student = f"a random model with the teacher's config but {sizes}"
    else:
        student = f"the model at {spec.get('path') or spec.get('hub')}"
    terms = []
    if loss_settings["soft"]["weight"] > 0:
        terms.append(f"soft-target KL at T={loss_settings['soft']['temperature']} x{loss_settings['soft']['weight']}")
    if loss_settings["hard"]["weight"] > 0:
        terms.append(f"hard labels x{loss_settings['hard']['weight']}")
    mapping = "uniform layer map" if loss_settings["layer_map"] is None else f"layer map {loss_settings['layer_map']}"
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
    config = plan.model_config
    if not config or "num_hidden_layers" not in config:
        return None
    return config


def check(settings, plan):
    loss_settings, spec = settings["loss"], settings["student"]
    if all(loss_settings[name]["weight"] == 0 for name in ("soft", "hard", "hidden", "attention")):
        yield Check("every loss weight is 0: nothing to train the student on; set loss.soft.weight > 0", path=("loss",))
    earlier = [uses for _, uses, _ in plan.stages[: plan.index]]
    if "from_teacher" in spec and "prune-heads" in earlier:
        yield Check(
            "student.from_teacher copies the teacher's layers, but an earlier prune-heads stage changes their "
            "structure; put distill before prune-heads, or use student.config",
            path=("student", "from_teacher"),
        )
    teacher = _known_teacher_config(plan)
    if teacher is None:
        return
    n_teacher, teacher_heads = teacher["num_hidden_layers"], teacher.get("num_attention_heads")
    student = None
    if "from_teacher" in spec:
        layers = spec["from_teacher"]["layers"]
        layers = _every_other(n_teacher) if layers == "every_other" else layers
        bad = [i for i in layers if i >= n_teacher]
        if bad:
            yield Check(
                f"teacher layer(s) {bad} do not exist: the teacher has {n_teacher} layers (0 to {n_teacher - 1})",
                path=("student", "from_teacher", "layers"),
            )
        student = {**teacher, "num_hidden_layers": len(layers)}
    elif "config" in spec:
        student = {**teacher, **{k: spec["config"][k] for k in SIZE_KEYS if k in spec["config"]}}
        hidden, heads = student.get("hidden_size"), student.get("num_attention_heads")
        if hidden and heads and hidden % heads:
            divisors = [d for d in range(1, min(hidden, 64) + 1) if hidden % d == 0]
            yield Check(
                f"the student's hidden_size {hidden} is not a multiple of its num_attention_heads {heads}; "
                f"set student.config.num_attention_heads to a divisor of {hidden} (e.g. {divisors[-3:]})",
                path=("student", "config"),
            )
    elif "path" in spec:
        student = _config_json(spec["path"])
    if student is None or "num_hidden_layers" not in student:
        return
    n_student = student["num_hidden_layers"]
    given = loss_settings["layer_map"]
    matching = loss_settings["hidden"]["weight"] > 0 or loss_settings["attention"]["weight"] > 0
    if given is not None and matching:
        if len(given) != n_student:
            yield Check(
                f"loss.layer_map has {len(given)} entries but the student has {n_student} layers; "
                "give one teacher layer per student layer (or null for the uniform mapping)",
                path=("loss", "layer_map"),
            )
        bad = [j for j in given if j >= n_teacher]
        if bad:
            yield Check(f"loss.layer_map names teacher layer(s) {bad}, but the teacher has {n_teacher} layers",
                        path=("loss", "layer_map"))  # fmt: skip
    if loss_settings["attention"]["weight"] > 0 and student.get("num_attention_heads") != teacher_heads:
        yield Check(
            f"attention matching needs the same number of heads, but the student has "
            f"{student.get('num_attention_heads')} and the teacher {teacher_heads}; set loss.attention.weight: 0, "
            f"or keep num_attention_heads at {teacher_heads}",
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
            "hidden-state and attention matching.",
            needs={"task_trained": True, "quantized": False},
            leaves={"distilled": True, "task_trained": True, "heads_pruned": False},
            compresses=True,
            families=("encoder",),
            trains=True,
            check=check,
            describe=describe,
        )
    )
