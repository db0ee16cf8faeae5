"""compose.recipe.search_space: a search section's errors are found before anything runs, at the line of their entry."""

import pytest

from compose.errors import RecipeError
from compose.recipe.load import load_recipe
from compose.recipe.search_space import Dimension, dimensions, trial_overrides

STAGES = """\
- {name: ft, uses: train, with: {max_steps: 4, batch_size: 16}}
- {name: prune, uses: prune-ffn, with: {ratio: 0.25, importance: magnitude}}
- {name: prune-heads, uses: prune-heads, with: {heads_per_layer: 1, importance: magnitude}}
"""


def search(space: str, more: str = "") -> str:
    return f"search:\n  space:\n{space}{more}"


def problems(write_recipe, host, text: str) -> list[str]:
    with pytest.raises(RecipeError) as caught:
        load_recipe(write_recipe(STAGES, text), host=host)
    return [f"{p.line}: {p.message}" for p in caught.value.problems]


def test_a_valid_search_gets_its_defaults_and_its_dimensions(write_recipe, host):
    recipe = load_recipe(
        write_recipe(
            STAGES,
            search(
                "    - {path: stages.prune.with.ratio, low: 0.1, high: 0.6, step: 0.05}\n"
                "    - {path: stages.prune-heads, optional: true}\n"
                "    - {path: stages.prune.with.multiple_of, choices: [8, 16]}\n"
            ),
        ),
        host=host,
    )
    found = recipe.data["search"]
    assert found["objectives"] == ["size", "throughput"] and found["min_retained"] == 0.97
    assert found["judged_on"] == "interval_low" and found["trials"] == 20 and found["stop_below_floor"] is True
    ratio, heads, multiple = dimensions(found)
    assert (ratio.low, ratio.high, ratio.step, ratio.integer) == (0.1, 0.6, 0.05, False)
    assert heads.optional and multiple.choices == (8, 16)


def test_an_unknown_path_is_named_at_its_line(write_recipe, host):
    path = write_recipe(STAGES, search("    - {path: stages.prune.with.ratoi, low: 0.1, high: 0.5}\n"))
    with pytest.raises(RecipeError) as caught:
        load_recipe(path, host=host)
    (problem,) = caught.value.problems
    line = next(i for i, text in enumerate(path.read_text().splitlines(), start=1) if "ratoi" in text)
    assert problem.line == line and problem.file == str(path)
    assert "stages.prune.with.ratoi" in problem.message and "unknown key 'ratoi'" in problem.message


def test_a_value_the_stage_refuses_is_named(write_recipe, host):
    found = problems(write_recipe, host, search("    - {path: stages.prune.with.ratio, low: 0.2, high: 1.5}\n"))
    assert len(found) == 1 and "stages.prune.with.ratio=1.5" in found[0]
    found = problems(
        write_recipe, host, search("    - {path: stages.prune.with.importance, choices: [taylor, loud]}\n")
    )
    assert 'stages.prune.with.importance="loud"' in found[0]


def test_leaving_out_a_stage_the_order_needs_is_refused(write_recipe, host):
    found = problems(write_recipe, host, search("    - {path: stages.ft, optional: true}\n"))
    assert "~stages.ft" in found[0] and "task" in found[0]  # pruning needs a model trained on the task


@pytest.mark.parametrize(
    "entry, message",
    [
        ("{path: stages.prune.with.ratio, low: 0.5, high: 0.1}", "low (0.5) must be below high (0.1)"),
        ("{path: stages.prune.with.ratio, low: 0.1}", "a range needs both low and high"),
        ("{path: stages.prune.with.ratio, low: 0.1, high: 0.5, choices: [0.2]}", "one of them"),
        ("{path: stages.prune.with.ratio, low: 0.1, high: 0.5, step: 0.3}", "does not divide"),
        ("{path: stages.prune.with.ratio, optional: true}", "path stages.NAME"),
        ("{path: stages.prune.with.ratio, low: 0, high: 0.5, log: true}", "log-scale range needs low > 0"),
    ],
)
def test_malformed_entries_say_what_to_write(write_recipe, host, entry, message):
    found = problems(write_recipe, host, search(f"    - {entry}\n"))
    assert len(found) == 1 and message in found[0]


def test_an_unknown_selection_split_is_refused_like_every_split_setting(write_recipe, host):
    text = search("    - {path: stages.prune.with.ratio, low: 0.1, high: 0.5}\n", "  selection_split: held\n")
    found = problems(write_recipe, host, text)
    assert len(found) == 1 and "'held'" in found[0] and "train, dev" in found[0]


def test_an_endless_budget_is_refused(write_recipe, host):
    text = search("    - {path: stages.prune.with.ratio, low: 0.1, high: 0.5}\n", "  trials: null\n")
    found = problems(write_recipe, host, text)
    assert len(found) == 1 and "would never end" in found[0]


def test_overrides_of_a_trial_drop_the_settings_of_a_stage_it_leaves_out():
    space = [
        Dimension("stages.prune", optional=True),
        Dimension("stages.prune.with.ratio", low=0.1, high=0.5),
        Dimension("stages.q.with.bits", choices=(4, 8)),
    ]
    assert trial_overrides(space, {"stages.prune": True, "stages.prune.with.ratio": 0.3, "stages.q.with.bits": 4}) == [
        "stages.prune.with.ratio=0.3",
        "stages.q.with.bits=4",
    ]
    assert trial_overrides(space, {"stages.prune": False, "stages.prune.with.ratio": 0.3, "stages.q.with.bits": 8}) == [
        "~stages.prune",
        "stages.q.with.bits=8",
    ]


def test_plan_shows_the_space_and_what_a_trial_runs(write_recipe, capsys):
    from compose.testing import run_recipe

    text = search(
        "    - {path: stages.prune.with.ratio, low: 0.3, high: 0.7, step: 0.05}\n"
        "    - {path: stages.prune-heads, optional: true}\n",
        "  objectives: [size]\n  judged_on: point\n",
    )
    assert run_recipe("plan", str(write_recipe(STAGES, text))) == 0
    out = capsys.readouterr().out
    assert "# recipe tune searches 2 setting(s):" in out
    assert "#   stages.prune.with.ratio: 0.3 to 0.7, step 0.05" in out and "stages.prune-heads: kept or left out" in out
    assert "optimizing size with retained >= 97.0% (judged on its point estimate); budget 20 trials, seed 0" in out


def test_a_selection_is_either_a_split_or_a_share(write_recipe, host):
    text = search(
        "    - {path: stages.prune.with.ratio, low: 0.1, high: 0.5}\n",
        "  selection_split: dev\n  selection_share: 0.1\n",
    )
    found = problems(write_recipe, host, text)
    assert len(found) == 1 and "not both" in found[0]
