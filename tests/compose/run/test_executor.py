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


def test_an_evaluation_change_measures_every_stage_again_without_running_it(write_recipe, tmp_path):
    """The stage fingerprints are unchanged: the artifacts are reused and measured again, nothing retrains."""
    from compose.run.integrity import digest

    host = create_host()
    recipe = write_recipe("- {name: ft, uses: train, with: {max_steps: 2, eval_every_epoch: false}}\n")
    fast = ["evaluate.latency.enabled=false"]

    def run(overrides, folder="run", fresh=False):
        options = RunOptions(output_dir=tmp_path / folder, fresh=fresh)
        return Executor(load_recipe(recipe, fast + overrides, host), host, options).run()

    first = run([])
    assert first.status == "passed" and not any(row.reused for row in first.rows)
    assert [row.reused for row in run([]).rows] == [True, True]
    weights = digest(tmp_path / "run", [tmp_path / "run" / "stages" / "01-ft" / "model"])
    changed = run(["evaluate.limit=16"])
    assert [(row.reused, row.remeasured) for row in changed.rows] == [(True, True), (True, True)]
    assert changed.rows[1].details == first.rows[1].details  # the training summary of the run that trained
    assert digest(tmp_path / "run", [tmp_path / "run" / "stages" / "01-ft" / "model"]) == weights
    fresh = run(["evaluate.limit=16"], folder="fresh", fresh=True)  # the same evaluation on a fresh run
    assert [row.value for row in changed.rows] == [row.value for row in fresh.rows]
    assert [(row.reused, row.remeasured) for row in run(["evaluate.limit=16"]).rows] == [(True, False)] * 2


def test_a_stage_whose_artifact_its_plugin_loads_is_measured_again_through_its_load(write_recipe, tmp_path):
    host = create_host()
    stages = (
        "- {name: ft, uses: train, with: {max_steps: 2, eval_every_epoch: false}}\n"
        "- {name: deploy, uses: export, with: {weights: fp32, embeddings: fp32}}\n"
    )
    recipe = write_recipe(stages)

    def run(overrides):
        options = RunOptions(output_dir=tmp_path / "run")
        return Executor(load_recipe(recipe, ["evaluate.latency.enabled=false", *overrides], host), host, options).run()

    assert run([]).status == "passed"
    changed = run(["evaluate.limit=16"])
    assert changed.status == "passed"
    assert [(row.name, row.reused, row.remeasured) for row in changed.rows] == [
        ("input", True, True),
        ("ft", True, True),
        ("deploy", True, True),  # an ONNX folder, read back by the export stage's load
    ]
    assert changed.rows[-1].size_bytes == run(["evaluate.limit=16"]).rows[-1].size_bytes


def test_a_stage_seed_reruns_that_stage_alone_with_another_order(write_recipe, tmp_path):
    from safetensors.torch import load_file

    stages = """\
    - {name: a, uses: train, with: {max_steps: 6, batch_size: 16, eval_every_epoch: false}}
    - {name: b, uses: train, with: {max_steps: 6, batch_size: 16, learning_rate: 1.0e-3, eval_every_epoch: false}}
    """
    recipe, out = str(write_recipe(stages)), tmp_path / "run"

    def b_weights():
        return load_file(next((out / "stages").glob("*-b")) / "model" / "model.safetensors")

    assert main(["apply", recipe, "--output", str(out), "-q"]) == 0
    default = b_weights()  # stage b's seed: the recipe's (0) + its position (2)
    assert main(["apply", recipe, "stages.b.seed=2", "--output", str(out), "-q"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["reused_stages"] == ["input", "a"]  # the seed is part of b's fingerprint, not a's
    assert all((b_weights()[k] == default[k]).all() for k in default)  # the seed it had: the same result
    assert main(["apply", recipe, "stages.b.seed=7", "--output", str(out), "-q"]) == 0
    assert json.loads((out / "report.json").read_text())["reused_stages"] == ["input", "a"]
    assert any(not (b_weights()[k] == default[k]).all() for k in default)
