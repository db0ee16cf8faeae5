"""Post-training quantization vs quantization-aware distillation (`qad`) on the same student.

    python bench/qad.py --base runs/minilm-sst2            # a finished run of recipes/minilm-sst2.yaml
    python bench/qad.py --base runs/minilm-sst2 --seeds 1 2 3 --weights int8 int4
    python bench/qad.py --decoder-base runs/llama-wikitext2   # a run of recipes/llama-wikitext2.yaml

For each export setting (int8 matmuls or 4-bit MatMulNBits, 4-bit embeddings both times) it
runs, in folders under --out seeded with the base run's finished stages (so the fine-tune,
the student and both prunings are the very same):

- ptq-W: recipes/minilm-sst2.yaml without its qad stage (``~stages.qad``), the export's weights W
  (the student exported as is);
- qad-W-S: recipes/minilm-sst2.yaml with weights W and the qad stage's seed S.

It reads each run's report: the float student's accuracy (prune-ffn), the exported model's
accuracy, retained against the fine-tuned model with its paired interval, agreement, size
and throughput; the drop from the float student in points; and over the seeds the mean
drop with a 95% t-interval. Results: bench/results/qad.json.

With --decoder-base: the same for the Llama of recipes/llama-wikitext2.yaml before its 4-bit
GPTQ (`quantize`): the base run's own quantize row (GPTQ alone) against
recipes/llama-wikitext2-qad.yaml's seeds; the metric is test perplexity (lower is better),
the float student is the `prune` row. Results: bench/results/qad-decoder.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.evidence import mean_interval, row  # noqa: E402
from compose.run.run_folder import claim  # noqa: E402
from compose.tune.store import link_stages  # noqa: E402

FLOAT_STUDENT = "prune-ffn"


def apply(recipe: str, folder: Path, base: Path, overrides: list[str]) -> dict:
    if not (folder / "report.json").is_file():
        if not (folder / "stages").exists():
            claim(folder)  # a run folder of this tool's, as recipe tune makes its trials' folders
            link_stages(base, folder)
        command = [sys.executable, "-m", "compose.cli.main", "apply", recipe, *overrides]
        command += ["--output", str(folder), "-q"]
        with open(folder.with_suffix(".log"), "w", encoding="utf-8") as log:
            code = subprocess.call(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        if code != 0:
            raise SystemExit(f"{' '.join(command)} exited {code}; see {folder.with_suffix('.log')}")
    return json.loads((folder / "report.json").read_text(encoding="utf-8"))


def summary(report: dict, float_student: str = FLOAT_STUDENT) -> dict:
    student, final = row(report, float_student), report["stages"][-1]
    qad = next((r for r in report["stages"] if r["plugin"] == "qad"), None)
    return {
        "float_student": student["metric"]["value"],
        "exported": final["metric"]["value"],
        "drop_points": round(100 * (student["metric"]["value"] - final["metric"]["value"]), 3),
        "exported_minus_float": final["metric"]["value"] - student["metric"]["value"],
        "retained": final["retained"],
        "retained_ci": final["retained_ci"],
        "agreement_with_fine_tuned": final["agreement"],
        "size_bytes": final["size_bytes"],
        "throughput_per_s": (final["latency"] or {}).get("throughput_per_s"),
        "qad_seconds": qad["seconds"] if qad else None,
        "trained_for": final["details"].get("weights_trained_for"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, help="a finished run folder of recipes/minilm-sst2.yaml")
    parser.add_argument("--decoder-base", type=Path, help="a finished run folder of recipes/llama-wikitext2.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "qad-bench")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--weights", nargs="+", default=["int8", "int4"], choices=["int8", "int4"])
    args = parser.parse_args()
    if args.decoder_base:
        return decoder(args)
    if not args.base:
        parser.error("give --base (or --decoder-base)")
    started = time.perf_counter()
    results = {"command": " ".join(["python bench/qad.py", *sys.argv[1:]]), "base": str(args.base), "arms": {}}
    for weights in args.weights:
        deploy = [f"stages.deploy.with.weights={weights}"]
        ptq = summary(
            apply("recipes/minilm-sst2.yaml", args.out / f"ptq-{weights}", args.base, [*deploy, "~stages.qad"])
        )
        runs = [
            summary(
                apply(
                    "recipes/minilm-sst2.yaml",
                    args.out / f"qad-{weights}-{seed}",
                    args.base,
                    [*deploy, f"stages.qad.seed={seed}"],
                )
            )
            for seed in args.seeds
        ]
        results["arms"][weights] = {
            "post_training": ptq,
            "qad": runs,
            "qad_drop_points": mean_interval([r["drop_points"] for r in runs]),
            "qad_retained": mean_interval([r["retained"] for r in runs]),
        }
        print(json.dumps({weights: results["arms"][weights]}, indent=1))
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    target = ROOT / "bench" / "results" / "qad.json"
    target.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {target}")


def decoder(args) -> None:
    """GPTQ alone (the base run's own `quantize` row) vs qad then GPTQ, on the same pruned Llama student."""
    started = time.perf_counter()
    base = json.loads((args.decoder_base / "report.json").read_text(encoding="utf-8"))
    results = {"command": " ".join(["python bench/qad.py", *sys.argv[1:]]), "base": str(args.decoder_base)}
    results["metric"] = "perplexity (lower is better); drop = exported - float student"
    results["gptq_alone"] = summary(base, "prune")
    runs = [
        summary(
            apply(
                "recipes/llama-wikitext2-qad.yaml",
                args.out / f"decoder-qad-{seed}",
                args.decoder_base,
                [f"stages.qad.seed={seed}"],
            ),
            "prune",
        )
        for seed in args.seeds
    ]
    results["qad"] = runs
    results["qad_exported"] = mean_interval([r["exported"] for r in runs])
    results["qad_exported_minus_float"] = mean_interval([r["exported_minus_float"] for r in runs])
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    target = ROOT / "bench" / "results" / "qad-decoder.json"
    target.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(results, indent=1))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
