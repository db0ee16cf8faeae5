"""`recipe apply` end to end on a tiny real model: report, artifacts, exit codes."""

import json

from compose.cli.main import main
from compose.recipe.data_check import SAMPLE_LINES
from compose.run.artifacts import load_artifact

TRAIN = "- {name: ft, uses: train, with: {epochs: 3, learning_rate: 3.0e-3, batch_size: 16}}\n"


def test_apply_trains_reports_and_saves_reloadable_artifacts(write_recipe, tmp_path, capsys):
    recipe = write_recipe(TRAIN, extra="gates:\n  - {min_metric: 0.8}\n")
    out = tmp_path / "run"
    assert main(["apply", str(recipe), "--output", str(out), "--json", "-q"]) == 0
    printed = json.loads(capsys.readouterr().out)
    report = json.loads((out / "report.json").read_text())
    assert printed == report
    assert report["passed"] is True and report["exit_code"] == 0
    assert [s["name"] for s in report["stages"]] == ["input", "ft"]
    ft = report["stages"][1]
    assert ft["plugin"] == "train" and ft["metric"]["name"] == "accuracy" and ft["metric"]["value"] >= 0.8
    assert ft["retained"] == 1.0 and report["baseline"]["stage"] == "ft"  # no compressing stage: the final model
    assert ft["params"] > 0 and ft["size_bytes"] > ft["weights_bytes"] > 0 and ft["latency_ms"] > 0
    assert ft["details"]["training"]["steps"] == 48
    assert report["gates"][0]["passed"] is True
    assert (out / "recipe.resolved.yaml").read_text().startswith("# The fully resolved recipe")
    model, tokenizer = load_artifact(ft["artifact"])
    assert type(model).__name__ == "BertForSequenceClassification" and tokenizer is not None


def test_failed_gate_exits_1_after_writing_the_report(write_recipe, tmp_path):
    recipe = write_recipe(TRAIN, extra="gates:\n  - {stage: ft, min_metric: 1.01}\n")
    out = tmp_path / "run"
    assert main(["apply", str(recipe), "--output", str(out), "-q"]) == 1
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "gate_failed" and report["passed"] is False
    assert report["gates"][0]["passed"] is False


def test_invalid_recipe_exits_2_and_writes_nothing(write_recipe, tmp_path, capsys):
    recipe = write_recipe("- {name: ft, uses: train, with: {epocks: 1}}\n")
    out = tmp_path / "run"
    assert main(["apply", str(recipe), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'epocks' (did you mean 'epochs'?)" in err and "nothing ran" in err
    assert not out.exists()


def test_stage_failure_exits_3_and_keeps_earlier_results(write_recipe, tmp_path, capsys):
    # A bad label past the rows that validation samples: only the stage that reads it can fail.
    bad = tmp_path / "bad.tsv"
    good = "".join(f"good film {i}\t1\n" for i in range(SAMPLE_LINES))
    bad.write_text("sentence\tlabel\n" + good + "odd film\t7\n", encoding="utf-8")
    recipe = write_recipe(TRAIN + "- {name: more, uses: train, with: {split: extra, max_steps: 1}}\n")
    out = tmp_path / "run"
    code = main(["apply", str(recipe), f"task.data.extra.path={bad}", "--output", str(out), "-q"])
    assert code == 3
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "stage_failed" and report["error"]["stage"] == "more"
    assert "label '7'" in report["error"]["message"]
    assert [s["name"] for s in report["stages"]] == ["input", "ft"]
    assert "stage 'more'" in capsys.readouterr().err


def test_validate_and_plan(write_recipe, capsys):
    recipe = write_recipe(TRAIN)
    assert main(["validate", str(recipe)]) == 0
    assert main(["plan", str(recipe), "stages.ft.with.epochs=2"]) == 0
    out = capsys.readouterr().out
    assert "epochs: 2" in out and "learning_rate" in out and "1. ft [train]: train on split 'train' for 2 passes" in out


def test_validate_json_lists_problems(write_recipe, capsys):
    recipe = write_recipe("- {name: ft, uses: trian}\n")
    assert main(["validate", str(recipe), "--json"]) == 2
    result = json.loads(capsys.readouterr().out)
    problem = result["recipes"][0]["problems"][0]
    assert problem["path"] == "$.stages[0].uses" and "did you mean 'train'" in problem["message"]
    assert problem["line"] == 13


def test_schema_command(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "train" in schema["properties"]["stages"]["items"]["properties"]["uses"]["enum"]
    assert main(["schema", "train"]) == 0
    train = json.loads(capsys.readouterr().out)
    assert train["properties"]["epochs"]["default"] == 1
    assert main(["schema", "trian"]) == 2
    assert "did you mean 'train'" in capsys.readouterr().err


def test_a_folder_with_other_files_is_never_used_as_run_folder(write_recipe, tmp_path, capsys):
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work", encoding="utf-8")
    assert main(["apply", str(write_recipe(TRAIN)), "--output", str(precious), "-q"]) == 2
    assert "holds files that recipe-compose did not write (thesis.tex)" in capsys.readouterr().err
    assert [p.name for p in precious.iterdir()] == ["thesis.tex"]


def test_out_of_memory_in_a_stage_says_what_to_do(write_recipe, tmp_path, monkeypatch, capsys):
    from compose.run import training

    def no_memory(*args, **kwargs):
        raise MemoryError("cannot allocate 64 GiB")

    monkeypatch.setattr(training, "optimizer_for", no_memory)
    out = tmp_path / "run"
    assert main(["apply", str(write_recipe(TRAIN)), "--output", str(out), "-q"]) == 3
    report = json.loads((out / "report.json").read_text())
    assert report["error"]["type"] == "OutOfMemory" and "lower the stage's batch_size" in report["error"]["message"]
    capsys.readouterr()


def test_remote_code_needs_the_recipe_and_the_command_line(write_recipe, tmp_path, capsys):
    recipe = write_recipe(TRAIN)
    out = tmp_path / "run"
    assert main(["apply", str(recipe), "model.trust_remote_code=true", "--output", str(out), "-q"]) == 2
    assert "also needs --trust-remote-code" in capsys.readouterr().err
    assert not out.exists()
