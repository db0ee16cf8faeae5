"""The executor with plugins that misbehave, and models that cannot be loaded."""

import json

from compose import hookimpl
from compose.api import StageType
from compose.cli.main import main
from compose.plugin_host import create_host
from compose.recipe.load import load_recipe
from compose.run.executor import Executor, RunOptions


class Exploding:
    @hookimpl
    def compose_register_stages(self, register):
        def run(ctx):
            raise RuntimeError("the plugin broke half-way")

        register(StageType("explode", run, {"type": "object"}, "raises mid-stage"))


def test_a_plugin_raising_mid_stage_fails_that_stage_and_keeps_earlier_ones(write_recipe, tmp_path):
    host = create_host()
    host.register(Exploding())
    stages = "- {name: ft, uses: train, with: {max_steps: 2}}\n- {name: boom, uses: explode}\n"
    recipe = load_recipe(write_recipe(stages), host=host)
    report = Executor(recipe, host, RunOptions(output_dir=tmp_path / "run")).run()
    assert report.exit_code == 3 and report.status == "stage_failed"
    assert report.error == {"stage": "boom", "type": "RuntimeError", "message": "the plugin broke half-way"}
    assert (tmp_path / "run" / "stages" / "01-ft" / "model" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "run" / "report.json").read_text())["stages"][1]["name"] == "ft"


def test_a_model_folder_that_does_not_exist_exits_3_with_the_cause(write_recipe, tmp_path, capsys):
    recipe = write_recipe("- {name: ft, uses: train, with: {max_steps: 2}}\n")
    overrides = [f"model.path={tmp_path / 'no-such-model'}", "~model.config", "~model.tokenizer"]
    assert main(["apply", str(recipe), *overrides, "--output", str(tmp_path / "run"), "-q"]) == 3
    err = capsys.readouterr().err
    assert "no-such-model does not exist" in err and "Traceback" not in err


def test_a_hub_model_while_offline_exits_3_naming_the_cause(write_recipe, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = write_recipe("- {name: ft, uses: train, with: {max_steps: 2}}\n")
    overrides = ["model.hub=someone/a-model-that-is-not-cached", "~model.config", "~model.tokenizer"]
    assert main(["apply", str(recipe), *overrides, "--output", str(tmp_path / "run"), "-q"]) == 3
    err = capsys.readouterr().err
    assert "someone/a-model-that-is-not-cached" in err and "Traceback" not in err
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["error"]["stage"] == "input"


def test_an_evaluation_change_reruns_every_stage_as_compose_fingerprint_says(write_recipe, tmp_path):
    """The stage fingerprints are unchanged, but no row of an earlier evaluation is reused."""
    host = create_host()
    recipe = write_recipe("- {name: ft, uses: train, with: {max_steps: 2, eval_every_epoch: false}}\n")
    fast = ["evaluate.latency.enabled=false"]

    def run(overrides):
        options = RunOptions(output_dir=tmp_path / "run")
        return Executor(load_recipe(recipe, fast + overrides, host), host, options).run()

    first = run([])
    assert first.status == "passed" and not any(row.reused for row in first.rows)
    assert [row.reused for row in run([]).rows] == [True, True]
    changed = run(["evaluate.limit=16"])
    assert [row.reused for row in changed.rows] == [False, False]
    assert [row.reused for row in run(["evaluate.limit=16"]).rows] == [True, True]
