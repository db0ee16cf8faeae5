"""Save every stage's model in a form that reloads, and reload it.

An artifact folder holds what ``save_pretrained`` writes (config.json and
safetensors weights), the tokenizer, and ``compose-artifact.json``: the task kind
and the list of structural *transforms* the model went through (pruned heads,
quantized layers...). A stage that changes the model's structure records a
transform with ``record_transform(model, stage, info)``; ``load_artifact`` builds
the model from its config, lets each transform's stage type ``rebuild`` the
structure, then loads the weights strictly. A model without transforms reloads
with plain ``from_pretrained`` too.

Writes go through compose.atomic: a killed run never leaves a half-written artifact
that looks finished, and a save killed between its renames is recovered when read.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from compose import atomic
from compose.errors import ModelLoadError, os_error_in
from compose.run import interrupts

MANIFEST = "compose-artifact.json"
FORMAT_VERSION = 1
_TRANSFORMS_ATTR = "compose_transforms"
#: Files that hold weights (``size_on_disk(weights_only=True)``): checkpoints, and exported ONNX graphs.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".onnx")


def record_transform(model, stage: str, info: Mapping[str, Any]) -> None:
    """Note that ``stage`` changed the model's structure; ``info`` (JSON-serialisable)
    is handed back to that stage type's ``rebuild(model, info)`` when the artifact loads."""
    transforms = list(getattr(model, _TRANSFORMS_ATTR, []))
    transforms.append({"stage": stage, "info": json.loads(json.dumps(info))})
    model.__dict__[_TRANSFORMS_ATTR] = transforms


def transforms_of(model) -> list[dict]:
    return copy.deepcopy(getattr(model, _TRANSFORMS_ATTR, []))


def save_artifact(
    model, tokenizer, directory: Path, task_kind: str, extra: Mapping | None = None, *, point: str | None = None
) -> Path:
    """Save atomically into ``directory`` (replacing an older one); return it.

    ``point``: this save's name as a point of the run's progress (``compose.run.interrupts.point``),
    reached when every file is written and none is in place yet.
    """
    directory = Path(directory)
    before_replace = (lambda: interrupts.point(point)) if point is not None else None
    try:
        return _save(model, tokenizer, directory, task_kind, extra, before_replace)
    except Exception as exc:
        found = os_error_in(exc)
        if found is None or isinstance(exc, OSError):
            raise
        # a library's wrapper of the machine's error (safetensors' SafetensorError): said with the folder
        raise OSError(found.errno, found.strerror, str(directory)) from exc


def _save(model, tokenizer, directory: Path, task_kind: str, extra, before_replace) -> Path:
    with atomic.writing_folder(directory, before_replace) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        manifest = {
            "format_version": FORMAT_VERSION,
            "task_kind": task_kind,
            "model_class": type(model).__name__,
            "transforms": transforms_of(model),
            **(dict(extra) if extra else {}),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return directory


def size_on_disk(directory: Path, *, weights_only: bool = False) -> int:
    """Bytes of the artifact's files (or of its weight files only)."""
    total = 0
    for path in Path(directory).rglob("*"):
        if path.is_file() and (not weights_only or path.suffix in WEIGHT_SUFFIXES):
            total += path.stat().st_size
    return total


def read_manifest(directory: Path) -> dict:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return {"format_version": FORMAT_VERSION, "transforms": []}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ModelLoadError(f"{path} is not valid JSON: {exc}") from None


def load_artifact(directory, host=None, task_kind: str | None = None):
    """(model, tokenizer) from an artifact folder saved by ``save_artifact``.

    ``host`` (a ``PluginHost``; default: the installed plugins) provides the
    ``rebuild`` of every recorded transform.
    """
    import transformers
    from safetensors.torch import load_file

    from compose.run.modeling import auto_class

    directory = atomic.recover(Path(directory))  # a save killed between its two renames
    if not (directory / "config.json").is_file():
        raise ModelLoadError(f"{directory} is not a saved model (no config.json)")
    manifest = read_manifest(directory)
    kind = task_kind or manifest.get("task_kind") or "sequence-classification"
    cls = auto_class(kind)
    tokenizer = None
    if (directory / "tokenizer_config.json").is_file():
        tokenizer = transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True)
    transforms = manifest.get("transforms", [])
    if not transforms:
        return cls.from_pretrained(directory, local_files_only=True), tokenizer
    if host is None:
        from compose.plugin_host import create_host

        host = create_host()
    config = transformers.AutoConfig.from_pretrained(directory, local_files_only=True)
    if hasattr(config, "quantization_config"):
        # The recorded transforms rebuild the quantized layers; transformers' own
        # quantizer integration must not try to.
        del config.quantization_config
    model = cls.from_config(config)
    for transform in transforms:
        name = transform["stage"]
        if name not in host.stages or host.stage(name).rebuild is None:
            raise ModelLoadError(
                f"{directory} was changed by stage '{name}', whose plugin is not installed "
                "(or cannot rebuild it); install the plugin that provides it"
            )
        model = host.stage(name).rebuild(model, transform["info"])
    model.__dict__[_TRANSFORMS_ATTR] = copy.deepcopy(transforms)
    state = {}
    for file in sorted(directory.glob("*.safetensors")):
        state.update(load_file(file))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(_tied_keys(model))
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise ModelLoadError(
            f"{directory}: the weights do not match the rebuilt model "
            f"(missing: {missing[:5]}, unexpected: {unexpected[:5]})"
        )
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    model.eval()
    return model, tokenizer


def _tied_keys(model) -> list[str]:
    """Every tied weight's key, also those a submodule declares (BART's encoder and decoder embeddings)."""
    keys = []
    for prefix, module in model.named_modules():
        # transformers 5: a dict {tied key: source key}; 4.x: a list of keys
        for key in getattr(module, "_tied_weights_keys", None) or []:
            keys.append(f"{prefix}.{key}" if prefix else key)
    return keys


def _stage_loader(host, plugin: str | None):
    """The ``load`` of a stage type that writes its own artifact format, or None."""
    registered = host.stages.get(plugin) if host is not None and plugin else None
    return registered.stage.load if registered is not None else None


def reloadable(directory, host, plugin: str | None) -> bool:
    """Whether ``load_stage_artifact`` can read a finished stage's artifact back as a model."""
    return (Path(directory) / MANIFEST).is_file() or _stage_loader(host, plugin) is not None


def load_stage_artifact(directory, host, plugin: str | None):
    """(model, tokenizer) of a finished stage's artifact: the core's own folders through ``load_artifact``,
    a folder a stage wrote in its own format through that stage type's ``load``. None where neither can."""
    import transformers

    directory = atomic.recover(Path(directory))
    if (directory / MANIFEST).is_file():
        return load_artifact(directory, host)
    load = _stage_loader(host, plugin)
    if load is None:
        return None
    model = load(directory)
    if model is None:
        return load_artifact(directory, host)
    return model, transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True)
