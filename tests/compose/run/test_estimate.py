"""compose.run.estimate: stage times from one calibration, scaled by what the stages before leave."""

from __future__ import annotations

import json

import pytest

from compose.recipe.load import load_recipe
from compose.run.estimate import GROUPED_PADDING, estimate, step_seconds, token_seconds
from compose.tasks import build_task
from compose.testing import run_recipe

STAGES = (
    "- {name: ft, uses: train, with: {epochs: 1, batch_size: 16, eval_every_epoch: false}}\n"
    "- {name: d, uses: distill, with: {student: {from_teacher: {layers: [0]}}, "
    "training: {epochs: 2, batch_size: 16, eval_every_epoch: false}}}\n"
    "- {name: ffn, uses: prune-ffn, with: {ratio: 0.5, importance: magnitude, recovery: {epochs: 0.5, batch_size: 16}}}\n"
)
CALIBRATION = {
    "fixed_seconds": 0.01,
    "seconds_per_token": 1e-4,
    "padding": 1.4,
    "eval_batch_seconds": 0.0,
    "single_example_seconds": 0.0,
    "step_seconds": 0.1,
    "batch_size": 16,
}


def block(stage, steps, tokens_per_pass=16_000, steps_per_pass=16, grouped=True):
    return {
        "stage": stage,
        "steps": steps,
        "tokens_per_pass": tokens_per_pass,
        "steps_per_pass": steps_per_pass,
        "group_by_length": grouped,
    }


def test_a_step_costs_a_fixed_part_and_its_tokens():
    assert step_seconds(CALIBRATION, block("ft", 16)) == pytest.approx(0.01 + 1e-4 * 1000 * GROUPED_PADDING)
    assert step_seconds(CALIBRATION, block("ft", 16, grouped=False)) == pytest.approx(0.01 + 1e-4 * 1000 * 1.4)


def test_later_stages_are_scaled_by_what_the_stages_before_leave(write_recipe, host):
    recipe = load_recipe(write_recipe(STAGES), [], host)
    task = build_task(recipe.data["task"], 0)
    fixed, tokens = CALIBRATION["fixed_seconds"], token_seconds(CALIBRATION, block("ft", 16))
    blocks = [block("ft", 16), block("d", 32), block("ffn", 8)]
    found = {s["stage"]: s["training_seconds"] for s in estimate(recipe, host, task, blocks, CALIBRATION)}
    config = recipe.data["model"]["config"]
    distill = host.stage("distill").cost(recipe.stages[1]["with"], config)
    prune = host.stage("prune-ffn").cost(recipe.stages[2]["with"], config)
    # the tiny BERT has 2 layers: the student keeps 1 (half the compute; its embedding table whole), and its
    # teacher's forward pass (a third of a step) runs once per example over 2 passes (teacher cache)
    assert (distill.leaves, distill.step) == (0.5, pytest.approx(0.5 + 1 / 3 / 2))
    assert 0.5 < distill.leaves_parameters < 1
    assert found["ft"] == pytest.approx(16 * (fixed + tokens), abs=1e-3)
    assert found["d"] == pytest.approx(32 * (fixed * distill.leaves_parameters + tokens * distill.step), abs=1e-3)
    # half of the FFN (its share of a block: 2 h i / (4 h^2 + 2 h i)) of the half-size student
    ffn = 2 * config["intermediate_size"] / (4 * config["hidden_size"] + 2 * config["intermediate_size"])
    assert prune.leaves == pytest.approx(1 - 0.5 * ffn)
    expected = 8 * (fixed * distill.leaves_parameters * prune.leaves_parameters + tokens * 0.5 * prune.step)
    assert found["ffn"] == pytest.approx(expected, abs=1e-3)


def test_plan_time_calibrates_on_this_machine_and_prints_every_stage(write_recipe, capsys):
    path = write_recipe(STAGES)
    assert run_recipe("plan", str(path), "--time", "--json") == 0
    timing = json.loads(capsys.readouterr().out)["data"]["time"]
    assert [s["stage"] for s in timing["stages"]] == ["ft", "d", "ffn"]
    assert timing["calibration"]["step_seconds"] > 0 and timing["calibration"]["seconds_per_token"] >= 0
    assert all(s["seconds"] > 0 for s in timing["stages"])
    assert timing["total_seconds"] == pytest.approx(sum(s["seconds"] for s in timing["stages"]), abs=0.5)


def test_a_tune_recipes_plan_says_what_a_trial_costs_and_what_the_budget_buys(write_recipe, capsys):
    search = "search:\n  space:\n    - {path: stages.ffn.with.ratio, choices: [0.25, 0.5]}\n  minutes: 30\n"
    assert run_recipe("plan", str(write_recipe(STAGES, search)), "--time", "--json") == 0
    plan = json.loads(capsys.readouterr().out)
    cost, stages = plan["search"]["trial_cost"], plan["data"]["time"]["stages"]
    assert cost["shared_stages"] == ["ft", "d"]  # before the first stage the search changes: run once, reused
    assert cost["later_trial_seconds"] == pytest.approx(stages[-1]["seconds"], abs=0.1)
    assert cost["trials_in_minutes"] == 1 + int((30 * 60 - cost["first_trial_seconds"]) // cost["later_trial_seconds"])
