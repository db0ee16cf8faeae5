"""Peak memory of one training stage, in a fresh process (used by bench/training.py).

    python bench/_memory_probe.py RECIPE [overrides...]

Prints one JSON line: the peak resident memory during training above the resident
memory just before it (VmHWM is reset through /proc/self/clear_refs), and the mean
step time.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from compose.plugin_host import create_host
from compose.progress import Progress
from compose.quiet import quiet_libraries
from compose.recipe.load import load_recipe
from compose.run.modeling import load_model, load_tokenizer
from compose.run.training import train_model
from compose.stage import StageContext
from compose.tasks import build_task


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def main() -> None:
    quiet_libraries()
    host = create_host()
    recipe = load_recipe(sys.argv[1], sys.argv[2:], host)
    data = recipe.data
    task = build_task(data["task"], data["seed"])
    tokenizer = load_tokenizer(data["model"])
    model = load_model(data["model"], task)
    stage = data["stages"][0]
    ctx = StageContext(
        stage["name"],
        stage["uses"],
        stage["with"],
        model,
        tokenizer,
        task,
        recipe.family,
        Path("/tmp"),
        data["seed"],
        torch.device("cpu"),
        Progress(enabled=False),
        data,
        host,
    )
    task.rows(stage["with"]["split"])  # read the data before measuring
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    before = status_kb("VmRSS")
    _, summary = train_model(ctx)
    peak = status_kb("VmHWM")
    print(json.dumps({"training_peak_mb": (peak - before) / 1024, "step_s": summary.seconds / summary.steps}))


if __name__ == "__main__":
    main()
