"""What a pipeline relies on: the user's files, the cache's bytes, the machine's faults, one run per folder."""

import errno
import json
import signal

import pytest

from compose.cli.main import main
from compose.testing import PausedRun

TWO_STAGES = """\
- {name: a, uses: train, with: {max_steps: 4, batch_size: 16, eval_every_epoch: false}}
- {name: b, uses: train, with: {max_steps: 4, batch_size: 16, eval_every_epoch: false}}
"""


def report_of(run):
    return json.loads((run / "report.json").read_text())


def test_a_folder_holding_the_users_files_is_refused_before_anything_runs(write_recipe, tmp_path, capsys):
    recipe, folder = write_recipe(TWO_STAGES), tmp_path / "mine"
    folder.mkdir()
    (folder / "report.json").write_bytes(b"the user's own report")
    (folder / "data.csv").write_bytes(b"1,2,3")
    assert main(["apply", str(recipe), "--output", str(folder), "-q"]) == 2
    assert "did not write" in capsys.readouterr().err
    assert (folder / "report.json").read_bytes() == b"the user's own report"
    assert sorted(p.name for p in folder.iterdir()) == ["data.csv", "report.json"]
    assert main(["apply", str(recipe), "--output", str(folder), "-q", "--use-output-folder"]) == 2  # would overwrite
    (folder / "report.json").unlink()
    assert main(["apply", str(recipe), "--output", str(folder), "-q", "--use-output-folder"]) == 0
    assert (folder / "data.csv").read_bytes() == b"1,2,3" and report_of(folder)["status"] == "passed"
    capsys.readouterr()


def test_a_corrupted_stage_is_not_reused_and_recipe_verify_names_it(write_recipe, tmp_path, capsys):
    recipe, run = write_recipe(TWO_STAGES), tmp_path / "run"
    assert main(["apply", str(recipe), "--output", str(run), "-q"]) == 0
    assert main(["verify", str(run)]) == 0
    weights = run / "stages" / "01-a" / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 4096] = bytes(4096)  # 4 KB overwritten in the middle
    weights.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["verify", str(run)]) == 1
    assert "01-a: model/model.safetensors changed" in capsys.readouterr().err
    assert main(["apply", str(recipe), "--output", str(run), "-q"]) == 0
    report = report_of(run)
    assert report["reused_stages"] == ["input"]  # a and every stage after it ran again
    assert report["reuse_refused"] == [{"stage": "a", "reason": "model/model.safetensors changed"}]
    assert main(["verify", str(run)]) == 0
    capsys.readouterr()


@pytest.mark.parametrize("code", ["ENOSPC", "EACCES", "EROFS", "ENOTDIR", "EDQUOT", "ENAMETOOLONG"])
def test_a_fault_of_the_machine_ends_with_exit_3_in_its_own_words(write_recipe, tmp_path, monkeypatch, capsys, code):
    """Stage b's artifact cannot be put in place: a's artifact and the report stay, and the message says what to do."""
    from compose import atomic

    recipe, run = write_recipe(TWO_STAGES), tmp_path / "run"
    real = atomic.replace_folder

    def failing(tmp, folder):
        if "02-b" in str(folder):
            raise OSError(getattr(errno, code), "injected", str(folder))
        return real(tmp, folder)

    monkeypatch.setattr(atomic, "replace_folder", failing)
    assert main(["apply", str(recipe), "--output", str(run), "-q"]) == 3
    err = capsys.readouterr().err
    assert "internal error" not in err and "Traceback" not in err and "02-b" in err
    report = report_of(run)
    assert report["status"] == "stage_failed" and report["error"]["stage"] == "b"
    assert str(run / "stages" / "02-b" / "model") in report["error"]["message"]
    assert [s["name"] for s in report["stages"]] == ["input", "a"]
    assert (run / "stages" / "01-a" / "model" / "model.safetensors").is_file()
    assert not list(run.rglob("*.partial"))


def test_an_output_path_under_a_regular_file_is_the_machines_fault_not_an_internal_error(
    write_recipe, tmp_path, capsys
):
    (tmp_path / "afile").write_text("x")
    recipe = write_recipe(TWO_STAGES)
    assert main(["apply", str(recipe), "--output", str(tmp_path / "afile" / "run"), "-q"]) == 3
    err = capsys.readouterr().err
    assert "not a folder" in err and "afile" in err and "internal error" not in err


def test_a_second_apply_on_a_folder_in_use_is_refused_and_the_first_runs_on(write_recipe, tmp_path, capsys):
    recipe, run = write_recipe(TWO_STAGES), tmp_path / "run"
    first = PausedRun([str(recipe), "--output", str(run), "-q"], at=["a/step 2"], folder=tmp_path / "pause")
    assert first.wait_paused() == "a/step 2"
    assert main(["apply", str(recipe), "--output", str(run), "-q"]) == 2
    assert "is in use by recipe apply (pid" in capsys.readouterr().err
    first.send(signal.SIGTERM)
    assert first.wait() == 130
    assert report_of(run)["status"] == "interrupted"  # the first run's report, whole
    assert main(["apply", str(recipe), "--output", str(run), "-q"]) == 0  # the lock went with it
    capsys.readouterr()
