"""How close `recipe plan --time` comes to the real stage times: on SST-2 and on a sentence-pair task.

    python bench/plan_estimates.py [--out bench/runs/plan-estimates] [--skip-runs]

For the default recipe (recipes/minilm-sst2.yaml) and the same recipe moved to the pair task
of bench/pair_task.py (data written under --out, never into the repository): `recipe plan
--time --json` (the estimate, with its own calibration on this machine), then `recipe apply`
of the same recipe from scratch, and per stage the estimate over the real time. Writes
bench/results/plan-estimates.json. The goal: every stage within ±30%.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from pair_task import write as write_pair_task  # noqa: E402

RESULTS = HERE / "results" / "plan-estimates.json"


def recipe_command() -> list[str]:
    script = Path(sys.executable).parent / "recipe"
    return [str(script)] if script.exists() else [sys.executable, "-m", "compose.cli.main"]


def plan(recipe: Path) -> dict:
    done = subprocess.run([*recipe_command(), "plan", str(recipe), "--time", "--json"], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"recipe plan failed on {recipe}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def apply(recipe: Path, output: Path) -> dict:
    started = time.perf_counter()
    done = subprocess.run([*recipe_command(), "apply", str(recipe), "--output", str(output), "--fresh", "-q"])
    if done.returncode not in (0, 1):
        raise SystemExit(f"recipe apply failed on {recipe} (exit {done.returncode})")
    report = json.loads((output / "report.json").read_text(encoding="utf-8"))
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    return report


def compare(estimate: dict, report: dict) -> dict:
    real = {row["name"]: row["seconds"] for row in report["stages"]}
    stages = []
    for item in estimate["data"]["time"]["stages"]:
        actual = real.get(item["stage"])
        stages.append(
            {
                "stage": item["stage"],
                "estimated_seconds": item["seconds"],
                "real_seconds": actual,
                "ratio": round(item["seconds"] / actual, 3) if actual else None,
            }
        )
    ratios = [s["ratio"] for s in stages if s["ratio"] is not None]
    return {
        "calibration": estimate["data"]["time"]["calibration"],
        "stages": stages,
        "within_30_percent": all(0.7 <= r <= 1.3 for r in ratios),
        "estimated_total_seconds": estimate["data"]["time"]["total_seconds"],
        "real_total_seconds": round(sum(v for k, v in real.items() if k != "input"), 1),
        "run_wall_seconds": report["wall_seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE / "runs" / "plan-estimates")
    args = parser.parse_args()
    import torch

    recipes = {
        "sst2": ROOT / "recipes" / "minilm-sst2.yaml",
        "pair-task": write_pair_task(args.out / "pair-data"),
    }
    results = {
        "command": "python bench/plan_estimates.py",
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(),
        },
        "tasks": {},
    }
    for name, recipe in recipes.items():
        estimate = plan(recipe)
        report = apply(recipe, args.out / name)
        results["tasks"][name] = compare(estimate, report)
        print(json.dumps({name: results["tasks"][name]}, indent=2))
    RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
