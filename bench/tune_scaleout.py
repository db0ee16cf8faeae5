"""`recipe tune` with one and with two workers on one PostgreSQL study: trials per hour and stage reuse.

    python bench/tune_scaleout.py [--trials 4] [--out bench/runs/tune-scaleout]

Starts a throwaway PostgreSQL server (tests/servers.py; needs root and the Debian package), then
runs bench/recipes/tune-small.yaml to --trials finished trials with one worker, and again on a
fresh study with two workers started together (each its own process, one tune folder, so one
stage store: layout (a) of docs/tune.md). On a 2-core machine the two workers share the cores:
this measures contention and reuse, not a speed-up. Writes bench/results/tune-scaleout.json.
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
sys.path.insert(0, str(ROOT))

from tests import servers  # noqa: E402

RECIPE = HERE / "recipes" / "tune-small.yaml"
RESULTS = HERE / "results" / "tune-scaleout.json"


def recipe_command() -> list[str]:
    script = Path(sys.executable).parent / "recipe"
    return [str(script)] if script.exists() else [sys.executable, "-m", "compose.cli.main"]


def study(workers: int, url: str, out: Path, trials: int) -> dict:
    command = [*recipe_command(), "tune", str(RECIPE), "--output", str(out), "--storage", url]
    command += ["--trials", str(trials), "-q"]
    started = time.perf_counter()
    processes = [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(workers)]
    errors = [process.communicate()[1].decode()[-2000:] for process in processes]
    seconds = time.perf_counter() - started
    if any(process.returncode not in (0, 1) for process in processes):
        raise SystemExit(f"a worker failed: {errors}")
    records = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines() if line.strip()]
    report = json.loads((out / "tune-report.json").read_text())
    return {
        "workers": workers,
        "wall_seconds": round(seconds, 1),
        "trials_finished": len(records),
        "trials_per_hour": round(len(records) / seconds * 3600, 1),
        "trial_numbers": sorted(r["number"] for r in records),
        "repeated_trials": len(records) - len({r["number"] for r in records}),
        "stage_runs": sum(len(r["stage_runs"]) for r in records),
        "reused_stage_runs": sum(len(r["reused_stages"]) for r in records),
        "seconds_saved_by_reuse": round(sum(r["seconds_saved"] for r in records), 1),
        "winner": (report.get("winner") or {}).get("params"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--out", type=Path, default=HERE / "runs" / "tune-scaleout")
    args = parser.parse_args()
    reason = servers.why_not()
    if reason:
        raise SystemExit(f"cannot start PostgreSQL here: {reason}")
    import torch

    server = servers.start()
    try:
        runs = []
        for workers in (1, 2):
            url = server.create_database(f"scaleout_{workers}")
            runs.append(study(workers, url, args.out / f"workers-{workers}", args.trials))
            print(json.dumps(runs[-1], indent=2))
    finally:
        server.stop()
    results = {
        "command": f"python bench/tune_scaleout.py --trials {args.trials}",
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cores": torch.get_num_threads(),
        },
        "recipe": str(RECIPE.relative_to(ROOT)),
        "storage": "PostgreSQL (a throwaway local server)",
        "runs": runs,
    }
    RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
