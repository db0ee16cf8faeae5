"""The deploy benchmark: every stage of the default recipe in every runtime, measured in one run.

For the fine-tuned MiniLM and each later stage of ``recipes/minilm-sst2.yaml`` (read
from a finished run folder), and for the recipe's final exported artifact:

- PyTorch fp32 (the stage's saved artifact, reloaded with ``compose.api.load_artifact``),
- ONNX Runtime fp32 (exported, fused, not quantized),
- ONNX Runtime int8 (dynamic int8 matmuls per channel and int8 embeddings),
- the final artifact (the export stage's own folder, as deployed),
- on a CUDA machine also PyTorch fp32 and fp16 on the GPU,

each with: the size of the whole folder, SST-2 dev accuracy, agreement with the
fine-tuned PyTorch fp32 model's predictions, batch-1 latency p50/p95 and batch-64
throughput at ``--threads`` threads (``compose.evaluation.latency``, the same measurement as the
report's). Writes bench/results/deploy.json and deploy.md.

    .venv/bin/recipe apply recipes/minilm-sst2.yaml        # the run it reads (if not done yet)
    .venv/bin/python bench/deploy.py --run runs/minilm-sst2
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
#: ONNX Runtime settings of the comparison rows (the final artifact uses the recipe's own).
ONNX_ROWS = {
    "onnxruntime fp32": {"weights": "fp32", "embeddings": "fp32"},
    "onnxruntime int8": {"weights": "int8", "embeddings": "int8", "per_channel": True},
}


def load_run(run_dir: Path):
    """(resolved recipe, report) of a finished run."""
    recipe = yaml.safe_load((run_dir / "recipe.resolved.yaml").read_text(encoding="utf-8"))
    report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    if report["status"] not in ("passed", "gate_failed"):
        raise SystemExit(f"{run_dir}: the run did not finish (status {report['status']}); apply the recipe first")
    return recipe, report


def predictions(model, tokenizer, task, split: str, batch_size: int):
    """Predicted class of every example of ``split``, and the accuracy."""
    import torch

    predicted, labels = [], []
    with torch.no_grad():
        for batch in task.batches(split, tokenizer, batch_size):
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            predicted.append(task.predict(model, inputs, tokenizer).logits.argmax(-1).cpu())
            labels.append(batch["labels"])
    predicted, labels = torch.cat(predicted), torch.cat(labels)
    return predicted, (predicted == labels).float().mean().item()


def export_folder(model, tokenizer, task, folder: Path, settings: dict) -> None:
    """What the export stage writes for an encoder: model.onnx, tokenizer.json, config.json."""
    from compose.plugins.export.onnx_runtime import export_classifier
    from compose.plugins.export.stage import deploy_tokenizer

    export_classifier(model, tokenizer, folder, settings)
    deploy_tokenizer(tokenizer, folder / "tokenizer.json", task.spec.get("max_length"))
    model.config.to_json_file(folder / "config.json")


def measure(label, stage, runtime, model, tokenizer, task, folder, reference, args, latency_settings, device):
    from compose.api import count_parameters, size_on_disk
    from compose.evaluation.latency import measure_latency

    started = time.perf_counter()
    predicted, accuracy = predictions(model, tokenizer, task, args.split, 64)
    latency = measure_latency(model, tokenizer, task, args.split, latency_settings, device, args.threads)
    row = {
        "stage": stage,
        "runtime": runtime,
        "bytes": size_on_disk(folder),
        "params": count_parameters(model),
        "accuracy": round(accuracy, 4),
        "agreement": round((predicted == reference).float().mean().item(), 4) if reference is not None else 1.0,
        "batch1_p50_ms": latency.batch1_p50_ms,
        "batch1_p95_ms": latency.batch1_p95_ms,
        "throughput_per_s": latency.throughput_per_s,
        "threads": latency.threads,
        "device": latency.device,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(f"{label:<28} {json.dumps(row)}", flush=True)
    return row, predicted


def main(argv=None) -> int:
    import torch

    from compose.api import load_artifact, load_schema_file
    from compose.plugins.export.floating import to_float
    from compose.plugins.export.onnx_runtime import onnx_module
    from compose.tasks import build_task

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "minilm-sst2", help="a finished run folder")
    parser.add_argument("--threads", type=int, default=2, help="threads for every measurement (default 2)")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--batch1-samples", type=int, default=100)
    parser.add_argument("--throughput-batches", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)

    recipe, report = load_run(args.run)
    task = build_task(recipe["task"], recipe["seed"])
    latency_settings = {
        **recipe["evaluate"]["latency"],
        "batch1_samples": args.batch1_samples,
        "throughput_batches": args.throughput_batches,
        "throughput_batch_size": 64,
    }
    export_stage = next((s for s in recipe["stages"] if s["uses"] == "export"), None)
    defaults = {
        k: v["default"]
        for k, v in load_schema_file("compose.plugins.export", "export.schema.json")["properties"].items()
    }
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    rows, reference = [], None
    stages = [r for r in report["stages"] if r["name"] != "input" and r["plugin"] != "export" and r["artifact"]]
    for stage in stages:
        model, tokenizer = load_artifact(stage["artifact"])
        model.eval()
        row, predicted = measure(
            f"{stage['name']}: pytorch fp32",
            stage["name"],
            "pytorch fp32",
            model,
            tokenizer,
            task,
            stage["artifact"],
            reference,
            args,
            latency_settings,
            cpu,
        )
        reference = predicted if reference is None else reference  # the fine-tuned model's predictions
        rows.append(row)
        plain = copy.deepcopy(model).float().eval()
        to_float(plain)
        for runtime, settings in ONNX_ROWS.items():
            with tempfile.TemporaryDirectory() as folder:
                export_folder(plain, tokenizer, task, Path(folder), {**defaults, **settings})
                exported = onnx_module(Path(folder), rows[-1]["params"], plain.config)
                rows.append(
                    measure(
                        f"{stage['name']}: {runtime}",
                        stage["name"],
                        runtime,
                        exported,
                        tokenizer,
                        task,
                        folder,
                        reference,
                        args,
                        latency_settings,
                        cpu,
                    )[0]
                )
        if torch.cuda.is_available():
            gpu = torch.device("cuda")
            for runtime, dtype in (("pytorch fp32 cuda", torch.float32), ("pytorch fp16 cuda", torch.float16)):
                on_gpu = copy.deepcopy(model).to(gpu, dtype)
                rows.append(
                    measure(
                        f"{stage['name']}: {runtime}",
                        stage["name"],
                        runtime,
                        on_gpu,
                        tokenizer,
                        task,
                        stage["artifact"],
                        reference,
                        args,
                        latency_settings,
                        gpu,
                    )[0]
                )
                del on_gpu
    final = next((r for r in report["stages"] if r["plugin"] == "export"), None)
    if final is not None:
        folder = Path(final["artifact"])
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        _, tokenizer = load_artifact(stages[-1]["artifact"])
        exported = onnx_module(folder, final["params"], config)
        rows.append(
            measure(
                f"{final['name']}: final artifact",
                final["name"],
                "final artifact (onnxruntime)",
                exported,
                tokenizer,
                task,
                folder,
                reference,
                args,
                latency_settings,
                cpu,
            )[0]
        )
    base = rows[0]
    for row in rows:
        row["x_smaller"] = round(base["bytes"] / row["bytes"], 2)
        row["x_faster"] = round(row["throughput_per_s"] / base["throughput_per_s"], 2)
        row["retained"] = round(row["accuracy"] / base["accuracy"], 4)
    import onnxruntime

    result = {
        "command": "python bench/deploy.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "run": str(args.run),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": args.threads,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "export_settings": export_stage["with"] if export_stage else None,
        "baseline": "the fine-tuned model in PyTorch fp32 (size, speed, accuracy and predictions)",
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "deploy.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    (args.out / "deploy.md").write_text(markdown(result), encoding="utf-8")
    print(f"wrote {args.out / 'deploy.json'} and deploy.md")
    return 0


def markdown(result: dict) -> str:
    lines = [
        "# Deploy benchmark: the default recipe's stages in each runtime",
        "",
        f"Command: `.venv/bin/python bench/deploy.py --run {result['run']}`; machine: "
        f"{result['machine']['cpu_capability']} CPU, {result['machine']['threads']} threads, torch "
        f"{result['machine']['torch']}, onnxruntime {result['machine']['onnxruntime']}"
        + (f", GPU {result['machine']['cuda']}" if result["machine"]["cuda"] else ", no GPU")
        + ".",
        "Baseline (x smaller, x faster, retained, agreement): " + result["baseline"] + ". "
        f"Final artifact's export settings: `{json.dumps(result['export_settings'])}`.",
        "",
        "| stage | runtime | size | x smaller | accuracy | retained | agreement | b1 p50 ms | b1 p95 ms "
        "| b64 ex/s | x faster |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['stage']} | {r['runtime']} | {r['bytes'] / 1e6:.1f} MB | {r['x_smaller']:.2f}x | {r['accuracy']:.4f} "
            f"| {100 * r['retained']:.1f}% | {100 * r['agreement']:.1f}% | {r['batch1_p50_ms']:.2f} "
            f"| {r['batch1_p95_ms']:.2f} | {r['throughput_per_s']:.1f} | {r['x_faster']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
