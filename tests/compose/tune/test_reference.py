"""recipe tune --compare-with refuses a run of another task, data or metric (exit 2, nothing run)."""

from __future__ import annotations

import yaml

from compose.cli.main import main
from compose.recipe.load import load_recipe
from compose.tune.reference import mismatches

SEARCH = (
    "search:\n  space:\n    - {path: stages.ft.with.learning_rate, choices: [1.0e-3, 3.0e-3]}\n  min_retained: 0.5\n"
)
TRAIN = "- {name: ft, uses: train, with: {epochs: 0.25, batch_size: 16, eval_every_epoch: false}}\n"


def reference_run(folder, recipe) -> object:
    folder.mkdir(parents=True)
    (folder / "recipe.resolved.yaml").write_text(yaml.safe_dump(recipe.data), encoding="utf-8")
    (folder / "report.json").write_text("{}", encoding="utf-8")
    return folder


def test_a_run_of_the_same_task_and_rows_matches(write_recipe, host, tmp_path):
    recipe = load_recipe(write_recipe(TRAIN, SEARCH), [], host)
    assert mismatches(reference_run(tmp_path / "ref", recipe), recipe.data) == []


def test_another_metric_or_other_rows_are_named(write_recipe, host, tmp_path, tiny_data_dir):
    recipe = load_recipe(write_recipe(TRAIN, SEARCH), [], host)
    other = tmp_path / "dev-other.tsv"
    other.write_text((tiny_data_dir / "dev.tsv").read_text().replace("\t1\n", "\t0\n", 3), encoding="utf-8")
    theirs = load_recipe(write_recipe(TRAIN), ["task.metric=f1", f"task.data.dev.path={other}"], host)
    found = mismatches(reference_run(tmp_path / "ref", theirs), recipe.data)
    assert found[0] == "task.metric: 'f1' there, None here"
    assert found[1].startswith("the evaluation split ('dev' there, 'dev' here) does not hold the same rows")


def test_the_cli_refuses_before_anything_runs(write_recipe, host, tmp_path, capsys):
    path = write_recipe(TRAIN, SEARCH)
    theirs = load_recipe(write_recipe(TRAIN, name="other.yaml"), ["task.metric=f1"], host)
    reference = reference_run(tmp_path / "ref", theirs)
    code = main(["tune", str(path), "--output", str(tmp_path / "tune"), "--compare-with", str(reference), "-q"])
    assert code == 2
    assert "is not a run of this recipe's task" in capsys.readouterr().err
    assert not (tmp_path / "tune").exists()
