"""The `distill` stage's student: a copy of the teacher's layers, a smaller config, or a saved model.

The teacher's stacks of layers (one, or an encoder's and a decoder's) come from the
architecture table (``architectures.modules.stacks``), so a family is one entry there,
not a branch here.
"""

from __future__ import annotations

import copy
from pathlib import Path

from compose.api import task_model_kwargs, transforms_of
from compose.plugins.distill.sizes import (
    ALL_SIZE_KEYS,
    SIZE_KEYS,
    architecture_key_message,
    config_keys,
    size_key_message,
)
from compose.plugins.shared.architectures.modules import architecture, stacks

STAGE = "distill"

#: task.kind -> the transformers Auto class a `path` / `hub` student is loaded with.
AUTO_CLASSES = {
    "sequence-classification": "AutoModelForSequenceClassification",
    "causal-lm": "AutoModelForCausalLM",
    "seq2seq": "AutoModelForSeq2SeqLM",
}

#: Config entries that are bookkeeping, not structure (left out of the config differences).
_NOT_STRUCTURE = {
    "_name_or_path",
    "transformers_version",
    "architectures",
    "dtype",
    "torch_dtype",
    "_attn_implementation_autoset",
    "id2label",
    "label2id",
}


def _embeddings(model):
    """The embedding block (word, position, token-type, LayerNorm) when the model has one (BERT)."""
    base = getattr(model, "base_model", model)
    return getattr(base, "embeddings", None)


def _renumber(layer, index: int) -> None:
    """Give every module that knows its layer index (attention's KV-cache slot) its new index."""
    for module in layer.modules():
        if isinstance(getattr(module, "layer_idx", None), int):
            module.layer_idx = index


def _move_relative_bias(kept: list, teacher_first) -> None:
    """T5: only a stack's first block owns the relative position bias (later ones reuse it).

    The first kept block gets the bias of the teacher's block 0 (a copy) if it lacks
    it; later kept blocks drop theirs, so the student matches a freshly built model
    of its config and reloads with from_pretrained.
    """
    for position, block in enumerate(kept):
        for name, module in block.named_modules():
            if not hasattr(module, "has_relative_attention_bias"):
                continue
            if position == 0 and not module.has_relative_attention_bias:
                source = teacher_first.get_submodule(name)
                if getattr(source, "has_relative_attention_bias", False):
                    module.relative_attention_bias = copy.deepcopy(source.relative_attention_bias)
                    module.has_relative_attention_bias = True
            elif position > 0 and module.has_relative_attention_bias:
                del module.relative_attention_bias
                module.has_relative_attention_bias = False


def _outside_parts(model, model_stacks: list) -> list[str]:
    """Names (two levels deep) of the modules with weights outside the layer stacks."""
    inside = {id(m) for stack in model_stacks for m in stack.layers.modules()}
    parts = []
    for name, module in model.named_modules():
        if id(module) in inside or not any(True for _ in module.parameters(recurse=False)):
            continue
        short = ".".join(name.split(".")[:2])
        if short not in parts:
            parts.append(short)
    return parts


# ---------------------------------------------------------------------------
# The student
# ---------------------------------------------------------------------------


def every_other(n_layers: int) -> list[int]:
    return list(range(0, n_layers, 2))


def chosen_layers(spec: dict, stack: str, n_teacher: int) -> list[int]:
    """The teacher layers a `from_teacher` student keeps in ``stack``."""
    rule = spec["layers"]
    if stack == "decoder" and spec["decoder_layers"] is not None:
        rule = spec["decoder_layers"]
    return every_other(n_teacher) if rule == "every_other" else list(rule)


def _set_layer_count(config, arch, stack: str, n: int) -> None:
    for key in arch.config_keys["decoder_layers" if stack == "decoder" else "layers"]:
        setattr(config, key, n)


def _subset_layer_types(config, chosen: list[int]) -> None:
    """Models whose config lists a type per layer (sliding / full attention) keep the kept layers' types."""
    types = getattr(config, "layer_types", None)
    if isinstance(types, list) and all(i < len(types) for i in chosen):
        config.layer_types = [types[i] for i in chosen]


def student_from_teacher(teacher, spec: dict) -> tuple:
    """A deep copy of the teacher with only the chosen layers of each stack, renumbered."""
    arch = architecture(teacher, STAGE)
    teacher_stacks = stacks(teacher, STAGE)
    if spec["decoder_layers"] is not None and [s.name for s in teacher_stacks] != ["encoder", "decoder"]:
        raise ValueError(
            "student.from_teacher.decoder_layers applies only to encoder-decoder models (T5); "
            "remove it and choose the layers with `layers`"
        )
    choices = {}
    for stack in teacher_stacks:
        n_teacher = len(stack.layers)
        chosen = chosen_layers(spec, stack.name, n_teacher)
        bad = [i for i in chosen if i >= n_teacher]
        if bad:
            setting = "decoder_layers" if stack.name == "decoder" and spec["decoder_layers"] is not None else "layers"
            where = "" if stack.name == "layers" else f" {stack.name}"
            raise ValueError(
                f"student.from_teacher.{setting} names teacher{where} layer(s) {bad}, but the teacher{where} has "
                f"{n_teacher} layers (0 to {n_teacher - 1}); pick indices below {n_teacher}"
            )
        choices[stack.name] = chosen

    student = copy.deepcopy(teacher)  # the teacher has no recorded transforms (build_student refuses them)
    for stack, teacher_stack in zip(stacks(student, STAGE), teacher_stacks):
        chosen = choices[stack.name]
        old = stack.layers
        kept = type(old)([old[i] for i in chosen])
        for index, layer in enumerate(kept):
            _renumber(layer, index)
        _move_relative_bias(list(kept), teacher_stack.layers[0])
        setattr(stack.owner, stack.attr, kept)
        _set_layer_count(student.config, arch, stack.name, len(chosen))
        part_config = getattr(stack.owner, "config", None)
        if part_config is not None and part_config is not student.config and hasattr(part_config, "num_layers"):
            part_config.num_layers = len(chosen)  # T5 builds each stack from its own copy of the config
    if len(choices) == 1:
        _subset_layer_types(student.config, choices["layers"])
        info = {"source": "from_teacher", "teacher_layers": choices["layers"]}
    else:
        info = {"source": "from_teacher", "teacher_layers": choices}
    info["copied"] = _outside_parts(student, stacks(student, STAGE))
    return student, info


def _fit_heads(config, teacher_config, overrides: dict) -> None:
    """Keep derived attention sizes consistent after overriding sizes (Llama's head_dim, KV heads)."""
    keys = config.to_dict()
    heads_changed = "num_attention_heads" in overrides
    if "head_dim" in keys and "head_dim" not in overrides and (heads_changed or "hidden_size" in overrides):
        if teacher_config.head_dim == teacher_config.hidden_size // teacher_config.num_attention_heads:
            config.head_dim = config.hidden_size // config.num_attention_heads
    if "num_key_value_heads" in keys and "num_key_value_heads" not in overrides and heads_changed:
        if teacher_config.num_key_value_heads == teacher_config.num_attention_heads:
            config.num_key_value_heads = config.num_attention_heads  # plain multi-head attention stays so
    kv = keys.get("num_key_value_heads") and config.num_key_value_heads
    if kv and config.num_attention_heads % kv:
        raise ValueError(
            f"student.config: num_attention_heads {config.num_attention_heads} is not a multiple of "
            f"num_key_value_heads {kv}; set num_key_value_heads to a divisor of {config.num_attention_heads}"
        )


def student_from_config(teacher, settings: dict, family: str, seed: int) -> tuple:
    """A randomly initialised model of the teacher's class, with the teacher's config and these sizes."""
    import torch

    overrides = {k: settings[k] for k in ALL_SIZE_KEYS if k in settings}
    wrong = [k for k in overrides if k not in SIZE_KEYS.get(family, ())]
    if wrong:
        raise ValueError(size_key_message(wrong[0], family))
    arch = architecture(teacher, STAGE)
    config = copy.deepcopy(teacher.config)
    for key, value in overrides.items():
        problem = architecture_key_message(key, arch)
        if problem:
            raise ValueError(problem)
        for name in config_keys(key, arch):
            setattr(config, name, value)
    _fit_heads(config, teacher.config, overrides)
    if "d_kv" not in config.to_dict() and config.hidden_size % config.num_attention_heads:
        raise ValueError(
            f"student.config: hidden_size {config.hidden_size} is not a multiple of num_attention_heads "
            f"{config.num_attention_heads}; set num_attention_heads to a divisor of {config.hidden_size}"
        )
    if "num_hidden_layers" in overrides:
        n_teacher = teacher.config.num_hidden_layers
        _subset_layer_types(config, [min(i, n_teacher - 1) for i in range(config.num_hidden_layers)])
    torch.manual_seed(seed)
    student = type(teacher)(config)
    copied = False
    if settings["copy_embeddings"] and config.hidden_size == teacher.config.hidden_size:
        source, target = _embeddings(teacher), _embeddings(student)
        if source is not None and target is not None:
            target.load_state_dict(source.state_dict())
        else:
            student.get_input_embeddings().load_state_dict(teacher.get_input_embeddings().state_dict())
            t_out, s_out = teacher.get_output_embeddings(), student.get_output_embeddings()
            untied = s_out is not None and s_out.weight is not student.get_input_embeddings().weight
            if untied and t_out is not None and t_out.weight.shape == s_out.weight.shape:
                s_out.load_state_dict(t_out.state_dict())
        copied = True
    return student, {"source": "config", "overrides": overrides, "embeddings_copied": copied}


def student_from_saved(ctx, settings) -> tuple:
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


def build_student(ctx, teacher) -> tuple:
    """(student, facts about how it was made) for ``ctx.settings['student']``."""
    spec = ctx.settings["student"]
    if "from_teacher" in spec:
        applied = transforms_of(teacher)
        if applied:
            names = ", ".join(sorted({t["stage"] for t in applied}))
            raise ValueError(
                f"student.from_teacher copies the teacher's layers, but the teacher's structure was changed "
                f"by stage(s) {names} and no longer matches its config; distil before those stages, "
                "or use student.config"
            )
        student, info = student_from_teacher(teacher, spec["from_teacher"])
    elif "config" in spec:
        student, info = student_from_config(teacher, spec["config"], ctx.family, ctx.seed)
    else:
        student, info = student_from_saved(ctx, spec)
    for what in ("vocab_size", "num_labels"):
        mine, theirs = getattr(student.config, what, None), getattr(teacher.config, what, None)
        if mine != theirs:
            raise ValueError(
                f"the student has {what} {mine} but the teacher has {theirs}; the student reads the teacher's "
                f"tokenizer and imitates its outputs, so they must agree"
            )
    mine, theirs = [s.name for s in stacks(student, STAGE)], [s.name for s in stacks(teacher, STAGE)]
    if mine != theirs:
        raise ValueError(
            f"the student has layer stacks {mine} but the teacher {theirs}; give a student of the teacher's family"
        )
    for param in student.parameters():
        param.requires_grad_(True)
    return student, info


def config_differences(teacher, student) -> dict:
    """{key: [teacher value, student value]} for every structural config entry that differs."""
    ours, theirs = student.config.to_dict(), teacher.config.to_dict()
    keys = sorted((set(ours) | set(theirs)) - _NOT_STRUCTURE)
    return {k: [theirs.get(k), ours.get(k)] for k in keys if theirs.get(k) != ours.get(k)}
