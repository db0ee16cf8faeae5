"""Is the int8 export's accuracy loss the rounding, or this CPU's int8 kernels?

    python bench/export_kernel_check.py RUN_DIR [--float-stage prune-ffn] [--deploy-stage deploy]

RUN_DIR: a finished run of recipes/minilm-sst2.yaml (or any encoder recipe ending in an int8
export). On the evaluation split, three forward passes of the same model: the float student
the export started from (PyTorch fp32), the same weights with the export's quantization
simulated exactly (the qad stage's fake quantization: ONNX Runtime's grids and scales, int8
arithmetic carried out exactly), and the exported model in ONNX Runtime on this CPU (MLAS
picks its int8 kernel by the instruction set: AMX, AVX512-VNNI, AVX2 u8s8; there is no switch
to force another, so each CPU kind runs this once). Where ONNX Runtime matches the exact
simulation, what the export loses is the rounding itself (the same on every CPU); where it
departs, the kernel's arithmetic adds its own. Writes bench/results/export-kernel-<capability>.json.
"""

from __future__ import annotations

import argparse
import copy
import json
from dataclasses import replace
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def stage_folder(run: Path, name: str) -> Path:
    [found] = [p for p in (run / "stages").iterdir() if p.name.split("-", 1)[1] == name]
    return found / "model"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--float-stage", default="prune-ffn")
    parser.add_argument("--deploy-stage", default="deploy")
    args = parser.parse_args()

    import yaml

    from compose.plugin_host import create_host
    from compose.plugins.export.onnx_runtime import onnx_module
    from compose.plugins.qad.scheme import scheme_of
    from compose.plugins.qad.simulation import simulate
    from compose.run.artifacts import load_artifact
    from compose.tasks import build_task

    recipe = yaml.safe_load((args.run / "recipe.resolved.yaml").read_text())
    host = create_host()
    task = build_task(recipe["task"], recipe["seed"])
    model, tokenizer = load_artifact(stage_folder(args.run, args.float_stage), host)
    model = model.float().eval()
    [deploy] = [s for s in recipe["stages"] if s["name"] == args.deploy_stage]
    declared = host.stage("export").quantization(deploy["with"], "encoder", model)
    simulated = copy.deepcopy(model)
    simulate(simulated, scheme_of(replace(declared, stage=args.deploy_stage)))
    folder = stage_folder(args.run, args.deploy_stage)
    served = onnx_module(folder, 0)
    split = recipe["evaluate"]["split"]
    labels, logits = [], {"float": [], "simulated": [], "onnxruntime": []}
    with torch.no_grad():
        for batch in task.batches(split, tokenizer, 64):
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            labels.append(batch["labels"])
            logits["float"].append(model(**inputs).logits)
            logits["simulated"].append(simulated(**inputs).logits)
            logits["onnxruntime"].append(served(**inputs).logits)
    labels = torch.cat(labels)
    found = {name: torch.cat(parts) for name, parts in logits.items()}
    predictions = {name: values.argmax(-1) for name, values in found.items()}
    result = {
        "command": f"python bench/export_kernel_check.py {args.run}",
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "scheme": declared.as_dict(),
        "rows": int(labels.numel()),
        "accuracy": {name: round(float((p == labels).float().mean()), 4) for name, p in predictions.items()},
        "agreement": {
            "onnxruntime_vs_simulated": round(
                float((predictions["onnxruntime"] == predictions["simulated"]).float().mean()), 4
            ),
            "simulated_vs_float": round(float((predictions["simulated"] == predictions["float"]).float().mean()), 4),
        },
        "max_abs_logit_difference": {
            "onnxruntime_vs_simulated": round(float((found["onnxruntime"] - found["simulated"]).abs().max()), 5),
            "simulated_vs_float": round(float((found["simulated"] - found["float"]).abs().max()), 5),
        },
    }
    out = HERE / "results" / f"export-kernel-{result['cpu_capability'].lower()}.json"
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
