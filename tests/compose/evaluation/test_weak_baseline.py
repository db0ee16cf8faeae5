"""A baseline close to what a constant prediction scores is warned about, with both numbers."""

from __future__ import annotations

import json

import pytest

from compose.evaluation.weak_baseline import MARGIN, constant_score, warning
from compose.recipe.load import load_recipe
from compose.tasks import build_task
from compose.testing import run_recipe


def skewed_dev(tiny_data_dir, folder, positive: int, negative: int):
    rows = [line for line in (tiny_data_dir / "dev.tsv").read_text().splitlines()[1:]]
    pos = [r for r in rows if r.endswith("\t1")][:positive]
    neg = [r for r in rows if r.endswith("\t0")][:negative]
    (folder / "dev.tsv").write_text("sentence\tlabel\n" + "\n".join(pos + neg) + "\n", encoding="utf-8")
    return folder / "dev.tsv"


@pytest.mark.parametrize(
    ("metric", "expected"),
    [("accuracy", ("1", 0.75)), ("f1", ("1", 2 * 0.75 / 1.75)), ("matthews", ("0", 0.0))],
)
def test_the_best_constant_prediction_under_each_metric(write_recipe, host, tiny_data_dir, tmp_path, metric, expected):
    dev = skewed_dev(tiny_data_dir, tmp_path, positive=24, negative=8)
    recipe = load_recipe(
        write_recipe("- {name: ft, uses: train}\n"), [f"task.metric={metric}", f"task.data.dev.path={dev}"], host
    )
    name, score = constant_score(build_task(recipe.data["task"], 0), "dev")
    assert (name, score) == (expected[0], pytest.approx(expected[1]))


def test_the_warning_gives_both_numbers_only_when_close(write_recipe, host, tiny_data_dir, tmp_path):
    dev = skewed_dev(tiny_data_dir, tmp_path, positive=24, negative=8)
    recipe = load_recipe(write_recipe("- {name: ft, uses: train}\n"), [f"task.data.dev.path={dev}"], host)
    task = build_task(recipe.data["task"], 0)
    found = warning(task, "dev", "ft", 0.78)
    assert found["constant_prediction"] == {"class": "1", "score": 0.75} and found["baseline"] == 0.78
    assert "scores accuracy 0.7800 on 'dev', less than 0.05 above always predicting '1' (0.7500)" in found["message"]
    assert warning(task, "dev", "ft", 0.75 + MARGIN) is None


def test_an_undertrained_baseline_is_reported(write_recipe, tiny_data_dir, tmp_path):
    dev = skewed_dev(tiny_data_dir, tmp_path, positive=30, negative=2)  # 94% positive: hard to beat by 5 points
    path = write_recipe(
        "- {name: ft, uses: train, with: {max_steps: 1, batch_size: 16, eval_every_epoch: false}}\n"
        "- {name: prune, uses: prune-heads, with: {ratio: 0.25}}\n",
        extra=f"output: {{dir: {tmp_path / 'run'}}}\n",
    )
    assert run_recipe("apply", str(path), f"task.data.dev.path={dev}", "--quiet") == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    [found] = report["warnings"]
    assert found["kind"] == "weak_baseline" and found["constant_prediction"]["class"] == "1"
