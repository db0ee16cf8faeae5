"""`recipe compare`: two real runs side by side, the plot, and what it refuses."""

import json

import pytest

from compose.cli.main import main

SHORT = "- {{name: t, uses: train, with: {{max_steps: {steps}, learning_rate: 3.0e-3, batch_size: 16}}}}\n"


@pytest.fixture
def two_runs(write_recipe, tmp_path):
    runs = []
    for steps in (2, 12):
        recipe = write_recipe(SHORT.format(steps=steps), name=f"steps{steps}.yaml", family="decoder")
        out = tmp_path / f"run{steps}"
        assert main(["apply", str(recipe), "--output", str(out), "-q"]) == 0
        runs.append(out)
    return runs


def test_compare_prints_both_runs_draws_the_plot_and_says_which_is_better(two_runs, capsys):
    short, longer = two_runs
    assert main(["compare", str(short), str(longer / "report.json"), "--label", "short", "--label", "longer"]) == 0
    out = capsys.readouterr().out
    assert "short" in out and "longer" in out and "perplexity" in out and "training steps" in out
    assert "best final perplexity: longer" in out  # more training, lower perplexity
    png = short / "compare.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_compare_json_has_every_stage_and_the_training_steps(two_runs, capsys, tmp_path):
    target = tmp_path / "plots" / "cmp.png"
    assert main(["compare", *map(str, two_runs), "--json", "--plot", str(target)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["metric"] == {"name": "perplexity", "higher_is_better": False}
    assert [r["training_steps"] for r in data["runs"]] == [2, 12]
    assert [len(r["stages"]) for r in data["runs"]] == [2, 2]  # input + t
    assert data["runs"][1]["final"]["metric"] < data["runs"][0]["final"]["metric"]
    assert data["plot"] == str(target) and target.is_file()


def test_compare_refuses_what_it_cannot_read_and_runs_of_different_tasks(two_runs, write_recipe, tmp_path, capsys):
    assert main(["compare", str(tmp_path / "nowhere"), "--no-plot"]) == 2
    assert "no report.json there" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{", encoding="utf-8")
    assert main(["compare", str(tmp_path / "bad.json"), "--no-plot"]) == 2
    assert "not a recipe-compose report" in capsys.readouterr().err
    recipe = write_recipe(SHORT.format(steps=1), name="cls.yaml")
    assert main(["apply", str(recipe), "--output", str(tmp_path / "cls"), "-q"]) == 0
    assert main(["compare", str(two_runs[0]), str(tmp_path / "cls"), "--no-plot"]) == 2
    assert "different metrics" in capsys.readouterr().err
