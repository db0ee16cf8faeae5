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
RECIPE_BIN = str(Path(sys.executable).parent / "recipe")


def apply(overrides: list[str], nproc: int = 1) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        command = [RECIPE_BIN, "apply", str(RECIPE), *overrides, "--output", tmp, "--json", "-q"]
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
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"memory probe failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def median(values):
    return statistics.median(values)


def gpu_precisions(steps: int, repeats: int) -> dict:
    """Steady-state step time on the GPU for each precision at batch 32 and 256."""
    import torch

    out = {"gpu": torch.cuda.get_device_name(0), "steps": [steps, 2 * steps],
           "how": "(training seconds of 2N steps - of N steps) / N, each run a fresh `recipe apply`"}  # fmt: skip
    for batch in (32, 256):
        row = {}
        for precision, value in (("fp32", "null"), ("bf16", "bf16"), ("fp16", "fp16")):
            def seconds(n):
                report = apply([f"stages.train.with.max_steps={n}", f"stages.train.with.batch_size={batch}",
                                f"stages.train.with.amp={value}"])  # fmt: skip
                return training_of(report)["seconds"]

            runs = [(seconds(2 * steps) - seconds(steps)) / steps for _ in range(repeats)]
            row[f"{precision}_step_s"] = median(runs)
            row[f"runs_{precision}"] = runs
        for precision in ("bf16", "fp16"):
            row[f"{precision}_time_saved"] = 1 - row[f"{precision}_step_s"] / row["fp32_step_s"]
        out[f"batch_{batch}"] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="1 repeat, 8 steps")
    parser.add_argument("--out", type=Path, help="default: bench/results/training.json (--gpu-only: training-gpu.json)")
    parser.add_argument("--gpu-only", action="store_true", help="only the GPU precision measurement")
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
    if args.gpu_only:
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
    print(json.dumps({k: v for k, v in results.items() if k in ("mixed_precision", "checkpointing", "processes")},
                     indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
