"""Fingerprints of everything that determines each stage's result, for resuming runs.

A stage's fingerprint chains the previous stage's with the stage's own recipe
entry (name, plugin, settings with defaults) and its plugin's package and
version. The first link covers the model and tokenizer sources (the bytes of a
local folder's files, not its path), the task with the bytes of its data files,
and the seed. Comments, key order and defaults written out change nothing.

The evaluation settings (with the evaluation split's data and the thread count
latency is measured at) have a fingerprint of their own, kept in each finished
stage's record beside its stage fingerprint. The executor reuses a finished stage
whose stage fingerprint matches; where the evaluation's differs, it measures the
stage again from its saved artifact (nothing retrains), so the rows of one report are
always measured the same way. A stage that writes its own format (``export``'s ONNX)
is read back by its stage type's ``load``; one without a ``load`` runs again instead.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from compose.recipe.load import Recipe
from compose.recipe.model_source import model_folder

_CHUNK = 1 << 20
#: Where a model or tokenizer comes from: a local one counts by its files' bytes, not by its path.
_SOURCE_KEYS = ("path", "package", "hub", "revision", "config")
_file_cache: dict[tuple, str] = {}


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (memoised on path, size and modification time)."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _file_cache:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
        _file_cache[key] = digest.hexdigest()
    return _file_cache[key]


def folder_digest(folder: Path) -> str:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return _hash([(str(p.relative_to(folder)), file_digest(p)) for p in files])


def _source_digest(spec: Mapping) -> Any:
    if "hub" in spec:
        return {"hub": spec["hub"], "revision": spec.get("revision")}
    if "config" in spec:
        return {"config": spec["config"]}
    folder = model_folder(spec)
    if folder is None or not folder.is_dir():
        return {"missing": str(folder)}
    return {"folder": folder_digest(folder)}


def data_digest(task: Mapping) -> dict:
    out = {}
    for split, spec in task["data"].items():
        source = dict(spec)
        if source.get("holdout"):
            # whole_texts and group_by came later: at their defaults they leave a holdout's fingerprint, and so
            # reuse, as it was
            later = {"whole_texts": False, "group_by": None}
            source["holdout"] = {k: v for k, v in source["holdout"].items() if not (k in later and not v)}
        for key in ("path", "data_files"):
            if spec.get(key) and Path(spec[key]).is_file():
                source[key] = file_digest(Path(spec[key]))
        out[split] = source
    return out


def _settings(spec: Mapping) -> dict:
    """A model's or tokenizer's entry without where it comes from (``_source_digest`` covers that)."""
    return {k: v for k, v in spec.items() if k not in _SOURCE_KEYS}


def stage_fingerprints(recipe: Recipe, host) -> list[str]:
    """Fingerprints of the input row and of every stage, in order."""
    data = recipe.data
    model = data["model"]
    tokenizer = model.get("tokenizer")
    base = {
        "model": {k: v for k, v in _settings(model).items() if k != "tokenizer"},
        "source": _source_digest(model),
        "tokenizer": {**_settings(tokenizer), "source": _source_digest(tokenizer)} if tokenizer else None,
        "task": {**{k: v for k, v in data["task"].items() if k != "data"}, "data": data_digest(data["task"])},
        "seed": data["seed"],
    }
    fingerprints = [_hash(base)]
    for index, stage in enumerate(data["stages"], start=1):
        plugin = host.stages[stage["uses"]].plugin if host is not None and stage["uses"] in host.stages else None
        link = {
            "previous": fingerprints[-1],
            "index": index,
            "stage": stage,
            "plugin": [plugin.package, plugin.version] if plugin else None,
        }
        fingerprints.append(_hash(link))
    return fingerprints


def evaluation_fingerprint(recipe: Recipe, threads: int | None = None) -> str:
    """Of the ``evaluate:`` settings (latency's included), the evaluation split's data and the
    thread count latency is measured at (``threads``: resolved, as null means the machine's default)."""
    data = recipe.data
    split = data["evaluate"]["split"]
    return _hash(
        {
            "evaluate": data["evaluate"],
            "split": data_digest({"data": {split: data["task"]["data"][split]}}),
            "latency_threads": threads,
        }
    )
