"""Where a recipe's model comes from, read without torch: its folder, its config, its family."""

from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path

#: model_type values of decoder-only models (a config without ``CausalLM`` in its architectures).
DECODER_MODEL_TYPES = {
    "gpt2",
    "gpt_neo",
    "gpt_neox",
    "gptj",
    "llama",
    "mistral",
    "mixtral",
    "opt",
    "qwen2",
    "qwen3",
    "phi",
    "phi3",
    "gemma",
    "gemma2",
    "gemma3",
    "falcon",
    "bloom",
    "codegen",
    "olmo",
    "smollm3",
}


def model_folder(model_spec: dict) -> Path | None:
    """The local folder a model comes from (path or package), without running any code."""
    if "path" in model_spec:
        return Path(model_spec["path"])
    if "package" in model_spec:
        spec = find_spec(model_spec["package"]["name"])
        if spec is None or not spec.submodule_search_locations:
            return None
        return Path(list(spec.submodule_search_locations)[0]) / model_spec["package"]["folder"]
    return None


def model_config_dict(model_spec: dict) -> dict | None:
    if "config" in model_spec:
        return model_spec["config"]
    folder = model_folder(model_spec)
    if folder is not None and (folder / "config.json").is_file():
        try:
            return json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
    return None


def model_family(data: dict) -> str:
    """encoder, decoder or encoder-decoder: from the task, else from the model's config."""
    kind = data["task"]["kind"]
    if kind == "causal-lm":
        return "decoder"
    if kind == "seq2seq":
        return "encoder-decoder"
    config = model_config_dict(data["model"]) or {}
    if config.get("is_encoder_decoder"):
        return "encoder-decoder"
    architectures = " ".join(config.get("architectures") or [])
    if config.get("model_type") in DECODER_MODEL_TYPES or "CausalLM" in architectures:
        return "decoder"
    return "encoder"
