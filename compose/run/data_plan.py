"""What a recipe will do with its data, known before anything trains: lengths, truncation, training budgets.

``recipe plan`` reads the data and the recipe's tokenizer (no model) to show, per split, the
token lengths and the share of rows ``max_length`` truncates (and what ``auto`` picks), and
per training stage the steps, passes over its split and tokens its budget means here.
"""

from __future__ import annotations

import math

from compose.recipe.schema import training_settings_paths
from compose.run.budget import planned
from compose.run.data_notes import length_facts


def _blocks(settings, paths):
    for at in paths:
        block = settings
        for key in at:
            block = block.get(key) if isinstance(block, dict) else None
        if isinstance(block, dict):
            yield at, block


def data_plan(recipe, host=None, estimate_time: bool = False) -> dict:
    from compose.run.modeling import load_tokenizer
    from compose.tasks import build_task

    data = recipe.data
    task = build_task(data["task"], data["seed"])
    tokenizer = load_tokenizer(data["model"], task)
    facts, warnings = length_facts(task, tokenizer)
    budgets = []
    for stage, stage_type in zip(recipe.stages, recipe.stage_types):
        for at, block in _blocks(stage["with"], training_settings_paths(stage_type.schema)):
            split = block["split"]
            items = len(task.examples(split, tokenizer))
            steps_per_pass = max(
                1, math.ceil(math.ceil(items / block["batch_size"]) / block["gradient_accumulation_steps"])
            )
            budget = planned(block, steps_per_pass, task.tokens_per_pass(split, tokenizer))
            budgets.append(
                {
                    "stage": stage["name"],
                    "settings": ".".join(("with", *at)) if at else "with",
                    "split": split,
                    "rows": items,
                    "batch_size": block["batch_size"],
                    "group_by_length": block["group_by_length"],
                    **budget.to_json(),
                    "describe": ("up to " if budget.unit == "minutes" else "") + budget.describe(),
                }
            )
    timing = None
    if estimate_time and budgets:
        from compose.run.estimate import calibrate, estimate

        first = next(s for s, t in zip(recipe.stages, recipe.stage_types) if s["name"] == budgets[0]["stage"])
        block = next(b for _, b in _blocks(first["with"], training_settings_paths(host.stage(first["uses"]).schema)))
        calibration = calibrate(recipe, host, task, tokenizer, first, block)
        stages = estimate(recipe, host, task, budgets, calibration)
        timing = {
            "calibration": calibration,
            "stages": stages,
            "total_seconds": round(sum(s["seconds"] for s in stages), 3),
        }
    return {
        "time": timing,
        "max_length": facts["max_length"],
        "max_length_written": data["task"].get("max_length"),
        "lengths": facts["lengths"],
        "warnings": warnings,
        "training": budgets,
    }
