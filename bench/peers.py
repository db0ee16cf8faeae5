"""The default recipe's artifact beside what a CPU user would pick instead, measured side by side.

    pip install -e '.[peers]'                                # OpenVINO and NNCF (not needed by the tests)
    .venv/bin/recipe apply recipes/minilm-sst2.yaml           # the run it reads (if not done yet)
    .venv/bin/python bench/peers.py --run runs/minilm-sst2

From a finished run of the default recipe (or any encoder classification recipe ending in an
export), on the evaluation split, in one process at the same thread count:

- **fine-tuned, PyTorch fp32**: the run's fine-tuned model (its first training stage), the baseline;
- **OpenVINO + NNCF int8 PTQ**: that same fine-tuned model converted to OpenVINO
  (``openvino.convert_model``) and quantized by ``nncf.quantize`` (transformer preset, calibrated
  on ``--calibration`` rows of the training split), saved as OpenVINO IR;
- **ONNX Runtime dynamic int8**: that fine-tuned model exported to ONNX as is (fp32) and quantized by
  ONNX Runtime's own ``quantize_dynamic`` with its defaults (int8 weights per tensor);
- **recipe-compose (the run's final artifact)**: the export stage's folder as deployed.

For each: size of the whole artifact (model files, tokenizer.json and config.json, the same files for
every row), accuracy, retained against the fine-tuned model with its paired bootstrap interval
(the report's), agreement with the fine-tuned model's predictions, batch-1 latency p50 and batch-64
throughput. Speed is measured in ``--rounds`` interleaved rounds (every row once per round, in turn),
and each row's median round is reported, so a machine that slows down mid-benchmark slows every row
alike. Writes bench/results/peers.json and peers.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from deploy import export_folder, load_run  # noqa: E402 - the deploy benchmark's export of a stage

#: The row every other is measured against: the run's fine-tuned model as it was saved.
BASELINE = "fine-tuned, PyTorch fp32"


def openvino_module(compiled, config):
    """A ``torch.nn.Module`` running an OpenVINO compiled model as the core evaluates models:
    ``model(**inputs).logits``. The compiled model is made with the thread count given to it."""
    import torch
    from transformers.modeling_outputs import SequenceClassifierOutput

    class OpenVinoSequenceClassifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = config
            self.request = compiled.create_infer_request()
            self.names = {port.get_any_name() for port in compiled.inputs}

        def forward(self, input_ids, attention_mask=None, token_type_ids=None, **_ignored):
            feeds = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
            feeds = {k: v.numpy() for k, v in feeds.items() if v is not None and k in self.names}
            result = self.request.infer(feeds)
            return SequenceClassifierOutput(logits=torch.from_numpy(result.to_tuple()[0].copy()))

    return OpenVinoSequenceClassifier()


def openvino_int8(model, tokenizer, task, folder: Path, calibration: int, threads: int):
    """OpenVINO + NNCF int8 post-training quantization of ``model`` (saved to ``folder``, compiled)."""
    import nncf
    import openvino as ov
    import torch

    rows = list(task.batches("train", tokenizer, 1, limit=calibration, with_labels=False))
    example = {k: v for k, v in rows[0].items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        converted = ov.convert_model(model, example_input=example)
    names = {port.get_any_name() for port in converted.inputs}

    def transform(batch):
        return {k: v.numpy() for k, v in batch.items() if k in names}

    quantized = nncf.quantize(
        converted,
        nncf.Dataset(rows, transform),
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=calibration,
    )
    ov.save_model(quantized, folder / "openvino_model.xml")  # OpenVINO's default: fp32 constants as fp16
    compiled = ov.Core().compile_model(
        folder / "openvino_model.xml", "CPU", {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    )
    return compiled


def onnxruntime_dynamic_int8(model, tokenizer, task, folder: Path, defaults: dict) -> None:
    """The fine-tuned model exported to ONNX as is, then ONNX Runtime's ``quantize_dynamic`` with its defaults."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as plain:
        export_folder(
            model,
            tokenizer,
            task,
            Path(plain),
            {**defaults, "weights": "fp32", "embeddings": "fp32", "optimize": False},
        )
        quantize_dynamic(Path(plain) / "model.onnx", folder / "model.onnx", weight_type=QuantType.QInt8)
        for name in ("tokenizer.json", "config.json"):
            shutil.copy(Path(plain) / name, folder / name)


def evaluate_rows(model, tokenizer, task, split: str):
    """(the evaluation records the report's interval is computed from, the accuracy), as the core evaluates."""
    import torch

    from compose.evaluation.evaluator import evaluate

    found = evaluate(model, tokenizer, task, {"split": split, "batch_size": 64}, torch.device("cpu"))
    return found.records, found.metrics["accuracy"]


def main(argv=None) -> int:
    import onnxruntime
    import torch

    from compose.api import load_artifact, load_schema_file, size_on_disk
    from compose.evaluation.latency import measure_latency
    from compose.evaluation.paired import retained_interval
    from compose.plugins.export.floating import to_float
    from compose.plugins.export.onnx_runtime import onnx_module
    from compose.tasks import build_task

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "minilm-sst2", help="a finished run folder")
    parser.add_argument("--threads", type=int, default=2, help="threads for every row (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved speed rounds (default 3)")
    parser.add_argument("--calibration", type=int, default=300, help="NNCF's calibration rows (default 300)")
    parser.add_argument("--batch1-samples", type=int, default=100)
    parser.add_argument("--throughput-batches", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    try:
        import nncf
        import openvino
    except ImportError:
        raise SystemExit("bench/peers.py needs OpenVINO and NNCF: pip install -e '.[peers]'") from None

    recipe, report = load_run(args.run)
    task = build_task(recipe["task"], recipe["seed"])
    split = recipe["evaluate"]["split"]
    torch.set_num_threads(args.threads)
    trained = [r for r in report["stages"] if r["name"] != "input" and r["plugin"] != "export" and r["artifact"]]
    final = next((r for r in report["stages"] if r["plugin"] == "export"), None)
    if not trained or final is None:
        raise SystemExit(f"{args.run}: needs a training stage and a final export stage")
    finetuned = trained[0]
    model, tokenizer = load_artifact(finetuned["artifact"])
    model = model.float().eval()
    to_float(model)
    defaults = {
        k: v["default"]
        for k, v in load_schema_file("compose.plugins.export", "export.schema.json")["properties"].items()
    }
    work = Path(tempfile.mkdtemp(prefix="peers-"))
    rows: dict[str, dict] = {}
    started = time.perf_counter()

    rows[BASELINE] = {"model": model, "folder": Path(finetuned["artifact"])}

    ov_folder = work / "openvino"
    ov_folder.mkdir()
    began = time.perf_counter()
    compiled = openvino_int8(model, tokenizer, task, ov_folder, args.calibration, args.threads)
    for name in ("tokenizer.json", "config.json"):
        shutil.copy(Path(final["artifact"]) / name, ov_folder / name)
    rows["OpenVINO + NNCF int8 PTQ"] = {
        "model": openvino_module(compiled, model.config),
        "folder": ov_folder,
        "build_s": round(time.perf_counter() - began, 1),
    }

    ort_folder = work / "onnxruntime"
    ort_folder.mkdir()
    began = time.perf_counter()
    onnxruntime_dynamic_int8(model, tokenizer, task, ort_folder, defaults)
    rows["ONNX Runtime dynamic int8"] = {
        "model": onnx_module(ort_folder, finetuned["params"], model.config),
        "folder": ort_folder,
        "build_s": round(time.perf_counter() - began, 1),
    }

    folder = Path(final["artifact"])
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    rows["recipe-compose (final artifact)"] = {"model": onnx_module(folder, final["params"], config), "folder": folder}

    baseline_records = None
    for name, row in rows.items():
        records, accuracy = evaluate_rows(row["model"], tokenizer, task, split)
        baseline_records = records if baseline_records is None else baseline_records
        predicted, reference = records["predictions"], baseline_records["predictions"]
        row["accuracy"] = round(accuracy, 4)
        row["agreement"] = round(float((predicted == reference).float().mean()), 4)
        row["retained"] = round(accuracy / rows[BASELINE]["accuracy"], 4)
        interval = retained_interval(task, "accuracy", True, baseline_records, records, 1000, 0.95, recipe["seed"])
        row["retained_ci"] = [round(v, 4) for v in interval] if interval else None
        row["bytes"] = size_on_disk(row["folder"])
        print(f"{name:<34} accuracy {row['accuracy']:.4f} retained {row['retained']:.2%} {row['bytes']} B", flush=True)

    settings = {
        **recipe["evaluate"]["latency"],
        "batch1_samples": args.batch1_samples,
        "throughput_batches": args.throughput_batches,
        "throughput_batch_size": 64,
    }
    cpu = torch.device("cpu")
    for round_number in range(args.rounds):
        for name, row in rows.items():
            latency = measure_latency(row["model"], tokenizer, task, split, settings, cpu, args.threads)
            row.setdefault("rounds", []).append(
                {"batch1_p50_ms": latency.batch1_p50_ms, "throughput_per_s": latency.throughput_per_s}
            )
            print(f"round {round_number + 1}: {name:<34} {row['rounds'][-1]}", flush=True)

    for row in rows.values():  # each row's median round
        row["batch1_p50_ms"] = round(statistics.median(r["batch1_p50_ms"] for r in row["rounds"]), 3)
        row["throughput_per_s"] = round(statistics.median(r["throughput_per_s"] for r in row["rounds"]), 1)
    base = rows[BASELINE]
    out_rows = [
        {
            "name": name,
            "accuracy": row["accuracy"],
            "retained": row["retained"],
            "retained_ci": row["retained_ci"],
            "agreement": row["agreement"],
            "bytes": row["bytes"],
            "x_smaller": round(base["bytes"] / row["bytes"], 2),
            "batch1_p50_ms": row["batch1_p50_ms"],
            "throughput_per_s": row["throughput_per_s"],
            "x_throughput": round(row["throughput_per_s"] / base["throughput_per_s"], 2),
            "rounds": row["rounds"],
            "build_s": row.get("build_s"),
        }
        for name, row in rows.items()
    ]
    result = {
        "command": "python bench/peers.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "run": str(args.run),
        "recipe_final_stage": final["name"],
        "split": split,
        "rows_evaluated": int(len(baseline_records["ids"])),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": args.threads,
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "openvino": openvino.__version__,
            "nncf": nncf.__version__,
        },
        "calibration_rows": args.calibration,
        "speed": f"median of {args.rounds} interleaved rounds; b1 p50 over {args.batch1_samples} single examples, "
        f"b64 throughput over {args.throughput_batches} batches",
        "size": "the whole artifact: model files, tokenizer.json, config.json",
        "seconds": round(time.perf_counter() - started, 1),
        "rows": out_rows,
    }
    shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "peers.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    (args.out / "peers.md").write_text(markdown(result), encoding="utf-8")
    print(f"wrote {args.out / 'peers.json'} and peers.md")
    return 0


def markdown(result: dict) -> str:
    machine = result["machine"]
    lines = [
        "# Peers: the default recipe's artifact beside what a CPU user would pick instead",
        "",
        f"`{result['command']}` on {machine['cpu']} ({machine['cpu_capability']}), {machine['threads']} threads; "
        f"{result['rows_evaluated']} rows of {result['split']}; speed: {result['speed']}; size: {result['size']}.",
        f"torch {machine['torch']}, onnxruntime {machine['onnxruntime']}, openvino {machine['openvino']}, "
        f"nncf {machine['nncf']}; NNCF calibrated on {result['calibration_rows']} training rows.",
        "",
        "| | accuracy | retained (95% CI) | agreement | size | x smaller | b1 p50 | b64 ex/s | x throughput |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in result["rows"]:
        ci = row["retained_ci"]
        interval = f" ({ci[0]:.1%}-{ci[1]:.1%})" if ci else ""
        lines.append(
            f"| {row['name']} | {row['accuracy']:.4f} | {row['retained']:.1%}{interval} | {row['agreement']:.1%} | "
            f"{row['bytes'] / 1e6:.2f} MB | {row['x_smaller']:.2f}x | {row['batch1_p50_ms']:.2f} ms | "
            f"{row['throughput_per_s']:.0f} | {row['x_throughput']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
