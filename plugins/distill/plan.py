"""The distill stage at plan time: what it will do (``describe``) and what would fail
(``check``), from the settings and the teacher's config alone."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

from compose.api import Check, StageCost, describe_length
from compose.plugins.distill.layer_maps import layer_map_form_problem, layer_map_problems, stack_label
from compose.plugins.distill.sizes import (
    ALL_SIZE_KEYS,
    SIZE_KEYS,
    SIZE_ROLES,
    architecture_key_message,
    size_key_message,
)
from compose.plugins.distill.student import chosen_layers
from compose.plugins.shared.architectures.checks import architecture_problems, model_type_at
from compose.plugins.shared.architectures.costs import embedding_share
from compose.plugins.shared.architectures.registry import lookup
from compose.plugins.shared.distillation.loss import TERMS
from compose.plugins.shared.distillation.teacher_cache import why_not_cached


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
    length = describe_length(training)
    not_cached = why_not_cached(settings, None)
    teacher = (
        f"teacher's logits cached per example, up to {settings['teacher_cache']['max_megabytes']:g} MB "
        "(an encoder-decoder's teacher runs every step)"
        if not_cached is None
        else f"teacher run every step ({not_cached})"
    )
    return (
        f"distil into a student made of {student}; loss: {' + '.join(terms) or 'none'}; "
        f"train on '{training['split']}' for {length}, batch {training['batch_size']}, lr {training['learning_rate']}; "
        f"{teacher}"
    )


def _config_json(folder) -> dict | None:
    """A student folder's config.json, if it can be read."""
    path = Path(folder) / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def cost(settings, config) -> StageCost:
    """The student's compute relative to its teacher (the share of layers it keeps), and a training step's: the
    student's plus the teacher's forward pass (a third of a training step), which the teacher cache pays once
    per example instead of once per step."""
    arch = lookup((config or {}).get("model_type"))
    counts = arch.layer_counts(config) if arch is not None else None
    rule = (settings.get("student") or {}).get("from_teacher")
    if not counts or not isinstance(rule, Mapping):
        return StageCost()
    first = next(iter(counts.values()))
    layers = rule.get("layers")
    share = min(1.0, (len(layers) if isinstance(layers, list) else math.ceil(first / 2)) / first)
    training = settings["training"]
    passes = training["epochs"] if not any(training.get(k) for k in ("max_steps", "tokens", "minutes")) else 1.0
    cached = why_not_cached(settings, arch.family) is None
    teacher_forward = 1 / 3 / max(1.0, passes) if cached else 1 / 3
    table = embedding_share(config) or 0.0
    return StageCost(step=share + teacher_forward, leaves=share, leaves_parameters=table + (1 - table) * share)


def replaces_model(settings) -> dict | None:
    """The config of the student that replaces the model: a saved student's config.json (``{}`` where it
    cannot be read, or for a hub student); None for a student built from the teacher, of its type."""
    student = settings.get("student")
    if isinstance(student, Mapping) and "path" in student:
        return _config_json(student["path"]) or {}
    if isinstance(student, Mapping) and "hub" in student:
        return {}
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
                problems.append(
                    Check(
                        f"teacher{stack_label(stack)} layer(s) {bad} do not exist: the teacher{stack_label(stack)} has {n_teacher} "
                        f"layers (0 to {n_teacher - 1})",
                        path=("student", "from_teacher", setting),
                    )
                )
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
        yield Check(
            f"student.from_teacher.decoder_layers applies only to encoder-decoder models, not {family}; "
            "remove it and choose the layers with `layers`",
            path=("student", "from_teacher", "decoder_layers"),
        )
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
