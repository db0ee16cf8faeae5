"""Validation of whole recipes: every problem at once, located, with a fix."""

from pathlib import Path

import pytest

from compose import hookimpl
from compose.errors import RecipeError
from compose.plugin_host import PluginHost
from compose.recipe.load import load_recipe
from compose.stage import Check, StageType

SETTINGS = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"bits": {"enum": [2, 3, 4, 8], "default": 4}, "group_size": {"type": "integer", "default": 128}},
}


class FakeStages:
    """Stage types with real declared rules but trivial work, to test validation alone."""

    @hookimpl
    def compose_register_stages(self, register):
        noop = lambda ctx: None  # noqa: E731
        register(
            StageType(
                "learn", noop, {"type": "object"}, "trains", needs={"quantized": False}, leaves={"task_trained": True}
            )
        )
        register(
            StageType(
                "squash",
                noop,
                SETTINGS,
                "quantizes",
                needs={"task_trained": True, "quantized": False},
                leaves={"quantized": True},
                compresses=True,
                check=lambda s, plan: (
                    [Check("bits=8 keeps almost everything", "warning", ("bits",))] if s["bits"] == 8 else []
                ),
            )
        )
        register(
            StageType(
                "snip",
                noop,
                {"type": "object"},
                "prunes",
                needs={"quantized": False, "task_trained": True},
                leaves={"heads_pruned": True},
                compresses=True,
                families=("encoder",),
            )
        )


@pytest.fixture
def fake_host():
    host = PluginHost()
    host.register(FakeStages())
    return host


def problems(write_recipe, stages, host, overrides=(), extra=""):
    with pytest.raises(RecipeError) as info:
        load_recipe(write_recipe(stages, extra), overrides, host)
    return info.value.problems


def test_valid_recipe_gets_defaults_and_absolute_paths(write_recipe, fake_host):
    recipe = load_recipe(write_recipe("- {name: a, uses: learn}\n- {name: q, uses: squash}\n"), host=fake_host)
    assert recipe.stages[1]["with"] == {"bits": 4, "group_size": 128}
    assert recipe.data["evaluate"]["split"] == "dev"
    assert recipe.data["output"]["dir"] == "runs/recipe"
    assert recipe.data["task"]["data"]["train"]["path"].startswith("/")
    assert recipe.family == "encoder"


def test_all_problems_are_reported_at_once_with_lines_and_suggestions(write_recipe, fake_host):
    found = problems(
        write_recipe,
        "- {name: a, uses: lern}\n- name: q\n  uses: squash\n  with: {bitz: 4, group_size: big}\n",
        fake_host,
        extra="gates:\n  - {stage: qq, min_retained: 0.9}\n",
    )
    text = "\n".join(p.format() for p in found)
    assert "no installed plugin provides stage 'lern' (did you mean 'learn'?)" in text
    assert "unknown key 'bitz' (did you mean 'bits'?)" in text
    assert "$.stages[1].with.group_size: expected an integer, got a string 'big'" in text
    assert "gate refers to stage 'qq'" in text
    bitz = next(p for p in found if "bitz" in p.message)
    lines = Path(bitz.file).read_text(encoding="utf-8").splitlines()
    assert bitz.path == "$.stages[1].with.bitz"
    assert lines[bitz.line - 1][bitz.column - 1 :].startswith("bitz: 4")


def test_misspelt_top_level_key(write_recipe, fake_host):
    found = problems(write_recipe, "- {name: a, uses: learn}\n", fake_host, extra="evalute: {batch_size: 8}\n")
    assert [p.message for p in found] == ["unknown key 'evalute' (did you mean 'evaluate'?)"]


def test_wrong_stage_order_says_which_order_works(write_recipe, fake_host):
    found = problems(write_recipe, "- {name: q, uses: squash}\n- {name: a, uses: learn}\n", fake_host)
    messages = [p.message for p in found]
    assert "stage 'q' (squash) needs a model that is trained on the task" in messages[0]
    assert "stage 'a' (learn) needs a model that is not quantized ('q' left it quantized)" in messages[1]
    assert messages[-1] == "an order that works: a -> q"


def test_missing_stage_kind_is_named(write_recipe, fake_host):
    found = problems(write_recipe, "- {name: q, uses: squash}\n", fake_host)
    assert "provided by: learn" in found[-1].message
    assert "model.fine_tuned: true" in found[-1].message


def test_fine_tuned_checkpoint_may_be_compressed_directly(write_recipe, fake_host):
    recipe = load_recipe(write_recipe("- {name: q, uses: squash}\n"), ["model.fine_tuned=true"], fake_host)
    assert [s["name"] for s in recipe.stages] == ["q"]


def test_stage_checks_give_warnings_without_blocking(write_recipe, fake_host):
    recipe = load_recipe(
        write_recipe("- {name: a, uses: learn}\n- {name: q, uses: squash, with: {bits: 8}}\n"), host=fake_host
    )
    assert [(w.path, w.severity) for w in recipe.warnings] == [("$.stages[1].with.bits", "warning")]


def test_family_mismatch_is_rejected_before_anything_runs(write_recipe, fake_host):
    found = problems(
        write_recipe,
        "- {name: a, uses: learn}\n- {name: p, uses: snip}\n",
        fake_host,
        overrides=["model.config.model_type=gpt2"],
    )
    assert any("does not work on decoder models" in p.message for p in found)


def test_duplicate_stage_names_and_missing_splits(write_recipe, fake_host):
    found = problems(
        write_recipe,
        "- {name: a, uses: learn}\n- {name: a, uses: learn}\n",
        fake_host,
        overrides=["evaluate.split=test"],
    )
    text = " | ".join(p.message for p in found)
    assert "is used twice" in text and "split 'test' is not in task.data" in text


def test_model_needs_exactly_one_source(write_recipe, fake_host):
    found = problems(write_recipe, "- {name: a, uses: learn}\n", fake_host, overrides=["model.hub=bert-base-uncased"])
    assert any("exactly one model source" in p.message for p in found)


# -- values YAML reads as comments, and run folders of recipes that extend others --------------


def _with_task_line(path, line: str):
    text = path.read_text(encoding="utf-8").replace("  max_length: 16\n", f"  max_length: 16\n  {line}\n")
    path.write_text(text, encoding="utf-8")
    return path


def test_an_unquoted_hash_value_that_yaml_drops_is_a_warning_with_the_quoted_fix(write_recipe, host):
    path = _with_task_line(write_recipe("- {name: ft, uses: train}\n"), "text_pair_column: #2 String")
    recipe = load_recipe(path, [], host)
    assert recipe.data["task"]["text_pair_column"] is None  # what YAML read
    [warning] = [w for w in recipe.warnings if "comment" in w.message]
    assert warning.severity == "warning" and warning.path == "$.task.text_pair_column"
    assert warning.message == (
        "YAML read `#2 String` as a comment, so 'text_pair_column' is empty (null); "
        "quote it: text_pair_column: '#2 String'"
    )
    assert warning.line == path.read_text().splitlines().index("  text_pair_column: #2 String") + 1


def test_where_the_schema_needs_a_string_the_error_carries_the_same_fix(write_recipe, host):
    path = write_recipe("- {name: ft, uses: train}\n")
    _with_task_line(path, "text_column: #1 String")
    with pytest.raises(RecipeError) as caught:
        load_recipe(path, [], host)
    [problem] = [p for p in caught.value.problems if p.path == "$.task.text_column"]
    assert problem.message.endswith(
        "YAML read `#1 String` as a comment, so 'text_column' is empty (null); quote it: text_column: '#1 String'"
    )


def test_quoted_hash_values_and_comments_after_values_are_left_alone(write_recipe, host, tiny_data_dir, tmp_path):
    path = write_recipe("- {name: ft, uses: train}\n")
    for split in ("train", "dev"):  # a pair task whose columns are named like MRPC's
        rows = (tiny_data_dir / f"{split}.tsv").read_text(encoding="utf-8").splitlines()[1:]
        pairs = [f"{row.split(chr(9))[0]}\t{row.split(chr(9))[0]}\t{row.split(chr(9))[1]}" for row in rows]
        (tmp_path / f"{split}.tsv").write_text("\n".join(["#1 String\t#2 String\tlabel", *pairs]) + "\n")
    text = path.read_text(encoding="utf-8").replace(str(tiny_data_dir), str(tmp_path))
    path.write_text(text, encoding="utf-8")
    _with_task_line(path, "text_column: '#1 String'  # the first sentence\n  text_pair_column: \"#2 String\"")
    recipe = load_recipe(path, [], host)
    assert (recipe.data["task"]["text_column"], recipe.data["task"]["text_pair_column"]) == ("#1 String", "#2 String")
    assert not [w for w in recipe.warnings if "comment" in w.message]


def test_a_recipe_that_extends_another_gets_its_own_run_folder(write_recipe, host, tmp_path):
    base = write_recipe("- {name: ft, uses: train}\n", extra="output: {dir: runs/base-folder}\n", name="base.yaml")
    child = tmp_path / "my-variant.yaml"
    child.write_text(f"extends: {base.name}\nseed: 3\n", encoding="utf-8")
    assert load_recipe(base, [], host).data["output"]["dir"] == "runs/base-folder"
    assert load_recipe(child, [], host).data["output"]["dir"] == str(Path("runs") / "my-variant")
    child.write_text(f"extends: {base.name}\noutput: {{dir: runs/mine}}\n", encoding="utf-8")
    assert load_recipe(child, [], host).data["output"]["dir"] == "runs/mine"
