"""Measure the `export` stage's settings on real MiniLM artifacts (SST-2 dev, 872 rows).

For each saved artifact given (e.g. the default recipe's stages/01-finetune/model,
02-distill/model, 03-prune/model) and each export setting: the whole exported
folder's size, SST-2 dev accuracy in ONNX Runtime, and batch-64 throughput at
``--threads`` threads; and the same for the PyTorch fp32 artifact itself.

    .venv/bin/python bench/export_minilm.py runs/minilm-sst2/stages/01-finetune/model ... \
        --dev ../shared/data/sst2/dev.tsv --json bench/results/export_minilm.json

The artifacts are only read; the exports go to a temporary folder.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

#: name -> settings over the schema defaults ("default": none changed)
SETTINGS = {
    "fp32": {"weights": "fp32", "embeddings": "fp32", "per_channel": False},
    "int8": {"weights": "int8", "embeddings": "int8", "per_channel": False},
    "int8-per-channel": {"weights": "int8", "embeddings": "int8", "per_channel": True},
    "int8+int4-emb": {"weights": "int8", "embeddings": "int4", "per_channel": False},
    "int8-pc+int4-emb": {"weights": "int8", "embeddings": "int4", "per_channel": True},
    "default": {},
    "int4+int4-emb": {"weights": "int4", "embeddings": "int4", "per_channel": False},
    "int4-b128+int4-emb": {"weights": "int4", "embeddings": "int4", "per_channel": False, "block_size": 128},
}


def defaults() -> dict:
    """The export stage's schema defaults (what a recipe gets without `with:`)."""
    from compose.api import load_schema_file

    schema = load_schema_file("compose.plugins.export", "export.schema.json")
    return {key: spec["default"] for key, spec in schema["properties"].items()}


def read_dev(path: Path) -> tuple[list[str], list[int]]:
    rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()[1:] if line.strip()]
    return [r[0] for r in rows], [int(r[1]) for r in rows]


def batches(tokenizer, texts, size=64, max_length=64):
    return [
        dict(tokenizer(texts[i : i + size], padding=True, truncation=True, max_length=max_length, return_tensors="pt"))
        for i in range(0, len(texts), size)
    ]


def measure(model, data, labels, repeats=2) -> dict:
    """Accuracy over the dev set, and rows per second at batch 64 (best of ``repeats`` passes)."""
    import torch

    best = None
    correct = 0
    with torch.no_grad():
        model(**data[0])  # warm-up
        for _ in range(repeats):
            predictions = []
            start = time.perf_counter()
            for batch in data:
                predictions.append(model(**batch).logits.argmax(-1))
            seconds = time.perf_counter() - start
            best = seconds if best is None else min(best, seconds)
        predictions = torch.cat(predictions).tolist()
        correct = sum(int(p == y) for p, y in zip(predictions, labels))
    return {"accuracy": round(correct / len(labels), 4), "rows_per_second": round(len(labels) / best, 1)}


def main(argv=None) -> int:
    import torch

    from compose.api import count_parameters, load_artifact, size_on_disk
    from compose.plugins.export.floating import to_float
    from compose.plugins.export.onnx_runtime import export_classifier, onnx_module
    from compose.plugins.export.stage import deploy_tokenizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", nargs="+")
    parser.add_argument("--dev", default="../shared/data/sst2/dev.tsv")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--json")
    parser.add_argument("--keep-layers", help="e.g. 0,2,4: measure a student of these layers (size and speed only)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    texts, labels = read_dev(Path(args.dev))
    results = []
    for artifact in args.artifacts:
        model, tokenizer = load_artifact(artifact)
        model = model.eval()
        if args.keep_layers:
            keep = [int(i) for i in args.keep_layers.split(",")]
            model.bert.encoder.layer = torch.nn.ModuleList(model.bert.encoder.layer[i] for i in keep)
            model.config.num_hidden_layers = len(keep)
        data = batches(tokenizer, texts)
        row = {
            "artifact": artifact,
            "setting": "pytorch",
            "bytes": size_on_disk(artifact),
            "params": count_parameters(model),
            **measure(model, data, labels),
        }
        print(json.dumps(row), flush=True)
        results.append(row)
        plain = copy.deepcopy(model).float()
        to_float(plain)
        for name in args.settings.split(","):
            with tempfile.TemporaryDirectory() as folder:
                started = time.perf_counter()
                details = export_classifier(plain, tokenizer, Path(folder), {**defaults(), **SETTINGS[name]})
                tokenizer.save_pretrained(folder)
                deploy_tokenizer(tokenizer, Path(folder) / "tokenizer.json", 64)
                plain.config.to_json_file(Path(folder) / "config.json")
                seconds = time.perf_counter() - started
                exported = onnx_module(Path(folder), 0)
                row = {
                    "artifact": artifact,
                    "setting": name,
                    "bytes": size_on_disk(folder),
                    "onnx_bytes": (Path(folder) / "model.onnx").stat().st_size,
                    **measure(exported, data, labels),
                    "export_seconds": round(seconds, 1),
                    "fusions": details["optimization"].get("fusions"),
                    "steps": details["quantization"]["steps"],
                }
            print(json.dumps(row), flush=True)
            results.append(row)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
