"""Validation that opens the data: `recipe validate` catches MRPC-style mistakes with their fix."""

from __future__ import annotations

import json

import pytest

from compose.cli.main import main
from compose.errors import RecipeError
from compose.recipe.load import load_recipe

MRPC_HEADER = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
MRPC_ROWS = "".join(f"{i % 2}\t{i}\t{i + 1}\tThe cat sat {i}.\tA cat sat {i}.\n" for i in range(20))


def mrpc_recipe(tmp_path, tiny_tokenizer_dir, train_name="train.tsv", train_split="train") -> str:
    """A text-pair recipe over MRPC-shaped files (with GLUE's UTF-8 byte-order mark)."""
    for name in ("train.tsv", "dev.tsv"):
        (tmp_path / name).write_text(MRPC_HEADER + MRPC_ROWS, encoding="utf-8")
    recipe = tmp_path / "mrpc.yaml"
    recipe.write_text(
        f"""\
model:
  config: {{model_type: bert, hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 32}}
  tokenizer: {{path: {tiny_tokenizer_dir}}}
task:
  kind: sequence-classification
  data:
    {train_split}: {{path: {train_name}}}
    dev: {{path: dev.tsv}}
  text_column: "#1 String"
  text_pair_column: "#2 String"
  label_column: Quality
  labels: [0, 1]
stages:
  - name: ft
    uses: train
    with:
      max_steps: 1
""",
        encoding="utf-8",
    )
    return str(recipe)


def messages(recipe, host, overrides=()) -> list[str]:
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe, overrides, host)
    return [p.format() for p in info.value.problems]


def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path, tiny_tokenizer_dir, host):
    recipe = load_recipe(mrpc_recipe(tmp_path, tiny_tokenizer_dir), (), host)
    from compose.tasks import build_task

    rows = build_task(recipe.data["task"], 0).rows("train")
    assert "Quality" in rows[0] and rows[0]["Quality"] == "0"


def test_a_missing_data_file_is_named_with_its_place_and_fix(tmp_path, tiny_tokenizer_dir, host):
    found = messages(mrpc_recipe(tmp_path, tiny_tokenizer_dir, train_name="trian.tsv"), host)
    assert len(found) == 1
    assert "mrpc.yaml:" in found[0] and "$.task.data.train.path" in found[0]
    assert "no such data file" in found[0] and "trian.tsv" in found[0] and "fix the path" in found[0]


def test_a_misspelt_column_gets_did_you_mean_and_every_column_setting(tmp_path, tiny_tokenizer_dir, host):
    found = messages(mrpc_recipe(tmp_path, tiny_tokenizer_dir), host, ["task.label_column=Qualty"])
    assert len(found) == 2  # train and dev
    first = found[0]
    assert "$.task.label_column" in first and "no column 'Qualty'" in first
    assert "did you mean 'Quality'" in first  # the byte-order mark is not part of the name
    assert "text_column: #1 String, text_pair_column: #2 String, label_column: Qualty" in first
    assert "\ufeff" not in first


def test_labels_not_in_the_data_are_caught_from_a_sample(tmp_path, tiny_tokenizer_dir, host):
    found = messages(mrpc_recipe(tmp_path, tiny_tokenizer_dir), host, ["task.labels=[neg, pos]"])
    assert "$.task.labels" in found[0]
    assert "row 1 has label '0', which is not in task.labels (neg, pos)" in found[0]


def test_a_split_typo_in_a_nested_training_block_is_caught(tmp_path, tiny_tokenizer_dir, host):
    found = messages(mrpc_recipe(tmp_path, tiny_tokenizer_dir), host, ["stages.ft.with.split=trian"])
    assert len(found) == 1
    assert "$.stages[0].with.split" in found[0] and "did you mean 'train'" in found[0]


def test_a_default_split_the_data_lacks_is_caught_too(tmp_path, tiny_tokenizer_dir, host):
    recipe = mrpc_recipe(tmp_path, tiny_tokenizer_dir, train_split="training")
    found = messages(recipe, host)
    assert len(found) == 1
    assert "$.stages[0].with" in found[0] and "split 'train' (the default; set it) is not in task.data" in found[0]


def test_recipe_validate_reports_the_data_problems_as_json(tmp_path, tiny_tokenizer_dir, capsys):
    recipe = mrpc_recipe(tmp_path, tiny_tokenizer_dir, train_name="missing.tsv")
    assert main(["validate", recipe, "--json"]) == 2
    result = json.loads(capsys.readouterr().out)
    [problem] = result["recipes"][0]["problems"]
    assert problem["path"] == "$.task.data.train.path" and problem["line"] == 7


def test_a_holdout_by_group_needs_its_columns_and_not_whole_texts_too(write_recipe, host):
    path = write_recipe("- {name: ft, uses: train}\n")
    with pytest.raises(RecipeError) as caught:
        load_recipe(path, ["task.data.train.holdout={share: 0.2, part: rest, group_by: speaker}"], host)
    assert "holdout.group_by names column(s) ['speaker'] that" in str(caught.value)
    with pytest.raises(RecipeError) as caught:
        load_recipe(
            path, ["task.data.train.holdout={share: 0.2, part: rest, group_by: sentence, whole_texts: true}"], host
        )
    assert "a holdout draws by whole_texts or by group_by, not both; remove one" in str(caught.value)
