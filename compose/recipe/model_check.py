"""What validation can tell about a model source from its config.json and file list, without torch.

A local model folder (``model.path`` or ``model.package``) is refused before anything
runs when its weights are pickle-only (loading a pickle can run code), when its config
asks for code to be run (``auto_map``) and the recipe does not allow remote code, or when
any model's config (a folder's or an inline ``model.config``) describes more parameters
than this machine's memory holds in fp32. Each problem names the key or file and the fix.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from compose.errors import Problem

__all__ = ["check_model_source", "estimated_parameters"]

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
#: config keys by role, as the families spell them (BERT/Llama, GPT-2, T5).
_ROLES = {
    "vocab": ("vocab_size",),
    "width": ("hidden_size", "n_embd", "d_model"),
    "layers": ("num_hidden_layers", "n_layer", "num_layers"),
    "ffn": ("intermediate_size", "n_inner", "d_ff"),
}


def _role(config: Mapping, role: str) -> tuple[str | None, int]:
    for key in _ROLES[role]:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return key, value
    return None, 0


def estimated_parameters(config: Mapping) -> tuple[int, list[str]]:
    """(a lower bound of the parameters a config describes, the keys it was computed from)."""
    found = {role: _role(config, role) for role in _ROLES}
    vocab, width, layers, ffn = (found[role][1] for role in ("vocab", "width", "layers", "ffn"))
    total = vocab * width + layers * (4 * width * width + 2 * width * (ffn or 4 * width))
    return total, [key for key, value in found.values() if key is not None]


def _machine_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_model_source(data: Mapping, checker, folder: Path | None) -> list[Problem]:
    """Problems with the model source of the resolved recipe ``data`` (``folder``: its local folder, if any)."""
    model = data["model"]
    problems = []
    source_key = "path" if "path" in model else "package" if "package" in model else None
    config = model.get("config") if isinstance(model.get("config"), Mapping) else None
    if folder is not None and folder.is_dir():
        names = sorted(p.name for p in folder.iterdir() if p.is_file())
        pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES) and "training_args" not in n]
        if pickles and not any(n.endswith(".safetensors") for n in names):
            problems.append(
                checker.problem(
                    ("model", source_key),
                    (
                        f"{folder}: the weights are pickle-only ({', '.join(pickles[:3])}); loading a pickle can run code, "
                        "so recipe-compose reads safetensors only: convert them (transformers: "
                        "`AutoModel.from_pretrained(folder).save_pretrained(folder, safe_serialization=True)`)"
                    ),
                )
            )
        try:
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            config = None
        if isinstance(config, dict) and config.get("auto_map") and not model.get("trust_remote_code"):
            problems.append(
                checker.problem(
                    ("model", source_key),
                    (
                        f"{folder / 'config.json'}: auto_map asks for the model's own code "
                        f"({', '.join(sorted(config['auto_map']))}); "
                        "recipe-compose runs no code from a model unless the recipe sets model.trust_remote_code: true "
                        "and apply is given --trust-remote-code"
                    ),
                )
            )
    if isinstance(config, Mapping):
        parameters, keys = estimated_parameters(config)
        memory = _machine_memory()
        if memory and keys and parameters * 4 > memory:
            width_key = _role(config, "width")[0] or keys[0]
            where = ("model", "config", width_key) if "config" in model else ("model", source_key)
            sizes = ", ".join(f"{key}: {config[key]}" for key in keys)
            problems.append(
                checker.problem(
                    where,
                    (
                        f"the model's config ({sizes}) describes at least {parameters / 1e9:.1f}B parameters, "
                        f"{parameters * 4 / 2**30:,.0f} GiB in fp32, more than this machine's {memory / 2**30:.0f} GiB "
                        f"of memory; check {', '.join(keys)}"
                    ),
                )
            )
    return problems
