"""A third-party plugin, installed as a separate package, through the real `recipe` command.

The package is tests/plugin_example (recipe-compose-magnitude), installed into the
environment with `pip install -e tests/plugin_example`: recipe-compose finds it
through its `recipe_compose` entry point, like any plugin on PyPI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from compose.cli.main import main
from compose.testing import HANG_S

RECIPE = Path(sys.executable).parent / "recipe"
PRUNE_STAGE = "- {name: prune, uses: magnitude-prune, with: {sparsity: 0.5, granulrity: global}}\n"


def recipe(*args, plugins: str | None = None, cwd=None) -> subprocess.CompletedProcess:
    """Run the installed `recipe` command; ``plugins`` sets RECIPE_COMPOSE_PLUGINS."""
    env = {**os.environ, "COLUMNS": "250"}  # one message per line on stderr; the timeout only stops a hang
    env.pop("RECIPE_COMPOSE_PLUGINS", None)
    if plugins is not None:
        env["RECIPE_COMPOSE_PLUGINS"] = plugins
    return subprocess.run([str(RECIPE), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=HANG_S)


def test_the_installed_plugin_is_listed_with_its_package_and_version():
    version = metadata.version("recipe-compose-magnitude")
    listed = recipe("plugins", "--json")
    assert listed.returncode == 0, listed.stderr
    plugins = {p["name"]: p for p in json.loads(listed.stdout)["plugins"]}
    magnitude = plugins["magnitude"]
    assert (magnitude["package"], magnitude["version"]) == ("recipe-compose-magnitude", version)
    assert magnitude["module"] == "recipe_compose_magnitude.plugin"
    assert [s["name"] for s in magnitude["stages"]] == ["magnitude-prune"]
    assert magnitude["stages"][0]["families"] == ["encoder", "decoder", "encoder-decoder"]
    assert plugins["train"]["package"] == "recipe-compose"  # built-ins come through the same group


def test_the_plugin_table_shows_it(monkeypatch, capsys):
    monkeypatch.delenv("RECIPE_COMPOSE_PLUGINS", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["plugins"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if "magnitude" in line)
    assert "recipe-compose-magnitude" in row and metadata.version("recipe-compose-magnitude") in row
    assert "magnitude-prune" in row


def test_recipe_schema_prints_the_plugin_settings_schema(monkeypatch, capsys):
    monkeypatch.setenv("RECIPE_COMPOSE_PLUGINS", "train,magnitude")
    assert main(["schema", "magnitude-prune"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["additionalProperties"] is False
    assert {k: v["default"] for k, v in schema["properties"].items()} == {
        "sparsity": 0.5,
        "granularity": "per-layer",
        "scope": ["attention", "feed-forward"],
        "hold_in_training": True,
    }
    assert main(["schema"]) == 0
    combined = json.loads(capsys.readouterr().out)  # the schema for editors wires it in too
    assert "magnitude-prune" in combined["properties"]["stages"]["items"]["properties"]["uses"]["enum"]


def test_validate_names_a_misspelt_key_its_line_and_the_right_spelling(write_recipe, monkeypatch, capsys):
    path = write_recipe("- {name: finetune, uses: train}\n" + PRUNE_STAGE)
    line = 1 + path.read_text().splitlines().index("  " + PRUNE_STAGE.rstrip())
    checked = recipe("validate", str(path), plugins="train,magnitude")
    assert checked.returncode == 2
    assert (
        f"{path}:{line}:" in checked.stderr
        and "$.stages[1].with.granulrity: unknown key 'granulrity' (did you mean 'granularity'?)" in checked.stderr
    ), checked.stderr
    monkeypatch.setenv("RECIPE_COMPOSE_PLUGINS", "train,magnitude")
    assert main(["validate", str(path), "--json"]) == 2
    as_json = json.loads(capsys.readouterr().out)
    [problem] = as_json["recipes"][0]["problems"]
    assert (problem["line"], problem["path"]) == (line, "$.stages[1].with.granulrity")


def test_validate_shows_the_plugin_check_and_plan_its_description(write_recipe, monkeypatch, capsys):
    monkeypatch.setenv("RECIPE_COMPOSE_PLUGINS", "train,magnitude")
    path = write_recipe(
        "- {name: finetune, uses: train}\n- {name: prune, uses: magnitude-prune, with: {sparsity: 0}}\n"
    )
    assert main(["validate", str(path)]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "warning: " in err and "stage 'prune': sparsity is 0: this stage will prune nothing" in err
    assert main(["plan", str(path), "stages.prune.with.sparsity=0.3"]) == 0
    out = capsys.readouterr().out
    assert "prune [magnitude-prune]: zero the 30% smallest-magnitude weights of the attention + feed-forward" in out


def test_apply_runs_the_plugin_stage_and_reports_its_sparsity(write_recipe, tmp_path):
    path = write_recipe(
        "- {name: finetune, uses: train, with: {max_steps: 4, batch_size: 32, learning_rate: 3.0e-3, "
        "eval_every_epoch: false}}\n"
        "- {name: prune, uses: magnitude-prune, with: {sparsity: 0.4}}\n"
    )
    run_dir = tmp_path / "run"
    done = recipe("apply", str(path), "--output", str(run_dir), "--quiet", plugins="train,magnitude")
    assert done.returncode == 0, done.stderr
    report = json.loads((run_dir / "report.json").read_text())
    assert report["status"] == "passed"
    assert [(s["name"], s["plugin"]) for s in report["stages"]] == [
        ("input", None),
        ("finetune", "train"),
        ("prune", "magnitude-prune"),
    ]
    assert report["baseline"]["stage"] == "finetune"  # magnitude-prune compresses
    prune = report["stages"][2]
    details = prune["details"]
    assert details["sparsity"] == pytest.approx(0.4, abs=1e-3)
    assert details["sparsity_by_scope"] == {
        "attention": pytest.approx(0.4, abs=1e-3),
        "feed-forward": pytest.approx(0.4, abs=1e-3),
    }
    assert details["sparsity_by_layer_type"]["intermediate.dense"] == pytest.approx(0.4, abs=1e-3)
    assert prune["params"] == report["stages"][1]["params"]  # unstructured: same shapes, zeros inside
    assert prune["retained"] is not None
    assert "magnitude-prune" in done.stdout  # the summary table

    from compose.api import load_artifact

    model, _ = load_artifact(prune["artifact"])
    weight = model.bert.encoder.layer[1].attention.self.key.weight
    assert (weight == 0).float().mean().item() == pytest.approx(0.4, abs=1 / weight.numel())
