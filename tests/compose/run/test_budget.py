"""compose.run.budget: a training budget in passes, tokens or minutes means the same on any split."""

from __future__ import annotations

import copy

import pytest

from compose.errors import RecipeError
from compose.recipe.load import load_recipe
from compose.run.budget import Budget, after_timing, budget_problems, planned, unit_of
from compose.run.training import train_model

DEFAULTS = {"epochs": 1, "max_steps": None, "tokens": None, "minutes": None, "split": "train"}


def settings(**chosen) -> dict:
    return {**DEFAULTS, **chosen}


@pytest.mark.parametrize(
    ("chosen", "unit", "steps"),
    [
        ({}, "epochs", 16),
        ({"epochs": 2.5}, "epochs", 40),
        ({"epochs": 0.01}, "epochs", 1),
        ({"max_steps": 7, "epochs": 3}, "max_steps", 7),
        ({"tokens": 1500}, "tokens", 8),  # 3000 tokens a pass of 16 steps: half a pass
        ({"minutes": 5, "epochs": 2}, "minutes", 32),  # before timing: the epochs cap
    ],
)
def test_the_planned_steps_follow_the_unit(chosen, unit, steps):
    budget = planned(settings(**chosen), steps_per_pass=16, tokens_per_pass=3000)
    assert (unit_of(settings(**chosen)), budget.unit, budget.steps) == (unit, unit, steps)
    assert budget.passes == pytest.approx(steps / 16)
    assert budget.tokens == round(steps / 16 * 3000)


def test_a_minutes_budget_takes_the_steps_that_fit_within_the_cap():
    capped = Budget("minutes", 100, 10, None)
    # 12 s spent on 10 steps, of which 8 steady steps took 8 s: 1 s a step; 60 s left -> 48 more
    assert after_timing(capped, 1.0, seconds=12.0, steps_done=10, timed_seconds=8.0, timed_steps=8).steps == 58
    assert after_timing(capped, 10.0, 12.0, 10, 8.0, 8).steps == 100  # the cap
    decided = after_timing(capped, 0.01, 12.0, 10, 8.0, 8)
    assert (decided.steps, decided.decided_after) == (10, 10)  # out of time: what is done


def test_two_budgets_are_refused_with_the_one_that_would_win():
    assert budget_problems(settings(max_steps=3, tokens=5.0)) == [
        "give one training budget, not max_steps and tokens: max_steps would win and tokens would be ignored "
        "(epochs stays the cap of a minutes budget); remove all but one (on the command line: ~key.path)"
    ]
    assert budget_problems(settings(epochs=3, minutes=2)) == []


def test_validation_names_the_stage_and_line_of_two_budgets(write_recipe, host):
    path = write_recipe("- {name: ft, uses: train, with: {max_steps: 4, minutes: 2}}\n")
    with pytest.raises(RecipeError) as caught:
        load_recipe(path, [], host)
    [problem] = caught.value.problems
    assert problem.message.startswith("stage 'ft': give one training budget, not max_steps and minutes")
    assert problem.line is not None


def _trained(make_context, tiny_bert, with_settings: str):
    model, tokenizer = tiny_bert
    ctx = make_context(f"- {{name: ft, uses: train, with: {with_settings}}}", copy.deepcopy(model), tokenizer)
    _, summary = train_model(ctx)
    return ctx, summary


def test_passes_and_tokens_carry_to_the_splits_size(make_context, tiny_bert):
    common = "batch_size: 16, eval_every_epoch: false, group_by_length: false"
    ctx, by_passes = _trained(make_context, tiny_bert, f"{{epochs: 0.5, {common}}}")
    per_pass = ctx.task.tokens_per_pass("train", ctx.tokenizer)
    assert by_passes.budget == {
        "unit": "epochs",
        "steps": 8,  # 256 rows in batches of 16: 16 steps a pass
        "passes": 0.5,
        "tokens": round(per_pass / 2),
        "steps_per_pass": 16,
        "tokens_per_pass": per_pass,
    }
    _, by_tokens = _trained(make_context, tiny_bert, f"{{tokens: {per_pass // 4}, {common}}}")
    assert (by_tokens.budget["unit"], by_tokens.steps, by_tokens.budget["passes"]) == ("tokens", 4, 0.25)


def test_a_minutes_budget_is_decided_after_timing_and_reported(make_context, tiny_bert):
    ctx, summary = _trained(
        make_context, tiny_bert, "{minutes: 0.0001, epochs: 3, batch_size: 16, eval_every_epoch: false}"
    )
    assert summary.budget["unit"] == "minutes" and summary.budget["decided_after_steps"] == 10
    assert summary.steps == 10  # out of time as soon as the steps were timed: the cap (48) would be far more


def test_early_stopping_judges_held_out_training_rows_and_keeps_the_best_pass(make_context, tiny_bert):
    ctx, summary = _trained(
        make_context,
        tiny_bert,
        "{epochs: 12, batch_size: 16, learning_rate: 3.0e-3, eval_every_epoch: false, "
        "early_stopping: {patience: 1, held_out: 0.25, min_delta: 1.0}}",  # no change can count: stops after 2
    )
    stopping = summary.early_stopping
    assert [entry["pass"] for entry in stopping["history"]] == [1, 2]
    assert stopping["best_pass"] == 1 and stopping["stopped_after_pass"] == 2 and stopping["restored_best"]
    fit, held = ctx.task.rows("train:fit"), ctx.task.rows("train:early-stop")
    assert len(fit) + len(held) == 256 and 30 <= len(held) <= 100
    assert summary.budget["steps_per_pass"] == -(-len(fit) // 16)  # only the rest is trained on
    assert summary.steps == 2 * summary.budget["steps_per_pass"]  # of a 12-pass cap
