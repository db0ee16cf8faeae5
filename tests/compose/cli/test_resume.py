"""Resuming: finished stages are reused by fingerprint; killed runs resume to the same result."""

import json
import signal
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

from compose.cli.main import main
from compose.testing import HANG_S, PausedRun

RECIPE_BIN = str(Path(sys.executable).parent / "recipe")
STAGES = """\
- {name: a, uses: train, with: {max_steps: 150, batch_size: 16, learning_rate: 3.0e-3, eval_every_epoch: false}}
- {name: b, uses: train, with: {max_steps: 150, batch_size: 16, learning_rate: 1.0e-3, eval_every_epoch: false}}
- {name: c, uses: train, with: {max_steps: 150, batch_size: 16, learning_rate: 5.0e-4, eval_every_epoch: false}}
"""


def report_of(run: Path) -> dict:
    return json.loads((run / "report.json").read_text())


def weights(run: Path, stage: str) -> dict:
    folder = next((run / "stages").glob(f"*-{stage}")) / "model"
    return load_file(folder / "model.safetensors")


def comparable(report: dict) -> list:
    return [(s["name"], s["metric"]["value"], s["params"], s["weights_bytes"]) for s in report["stages"]]


def test_second_apply_reuses_everything_and_a_change_reruns_from_there(write_recipe, tmp_path, capsys):
    recipe, run = write_recipe(STAGES), tmp_path / "run"
    assert main(["apply", str(recipe), "--output", str(run), "-q"]) == 0
    first = report_of(run)
    assert first["reused_stages"] == []
    assert main(["apply", str(recipe), "--output", str(run), "-q"]) == 0
    second = report_of(run)
    assert second["reused_stages"] == ["input", "a", "b", "c"]
    assert comparable(second) == comparable(first)
    assert main(["apply", str(recipe), "stages.b.with.learning_rate=2.0e-3", "--output", str(run), "-q"]) == 0
    third = report_of(run)
    assert third["reused_stages"] == ["input", "a"]
    assert [s["seconds"] for s in third["stages"][:2]] == [s["seconds"] for s in first["stages"][:2]]
    assert main(["apply", str(recipe), "--output", str(run), "-q", "--fresh"]) == 0
    assert report_of(run)["reused_stages"] == []
    capsys.readouterr()


def test_a_run_folder_copied_elsewhere_reuses_its_stages_from_the_copy(write_recipe, tmp_path, capsys):
    """Copying a finished run to try a variant of its last stages: the copy's stages are reused (and the
    original's files are neither read nor changed)."""
    import shutil

    recipe, run = write_recipe(STAGES), tmp_path / "run"
    assert main(["apply", str(recipe), "--output", str(run), "-q"]) == 0
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    shutil.rmtree(run)  # the original is gone: only the copy's own files can be reused
    assert main(["apply", str(recipe), "stages.c.with.learning_rate=2.0e-3", "--output", str(copy), "-q"]) == 0
    report = report_of(copy)
    assert report["reused_stages"] == ["input", "a", "b"] and not report["reuse_refused"]
    assert all(str(copy) in stage["artifact"] for stage in report["stages"])
    assert main(["verify", str(copy)]) == 0  # and the copy verifies as intact
    capsys.readouterr()


def test_changed_data_reruns_everything(write_recipe, tmp_path, tiny_data_dir, capsys):
    data = tmp_path / "train.tsv"
    data.write_bytes((tiny_data_dir / "train.tsv").read_bytes())
    recipe, run = write_recipe(STAGES.splitlines()[0] + "\n"), tmp_path / "run"
    override = f"task.data.train.path={data}"
    assert main(["apply", str(recipe), override, "--output", str(run), "-q"]) == 0
    with open(data, "a", encoding="utf-8") as handle:
        handle.write("good great film\t1\n")
    assert main(["apply", str(recipe), override, "--output", str(run), "-q"]) == 0
    assert report_of(run)["reused_stages"] == []
    capsys.readouterr()


def test_a_long_stage_killed_mid_way_resumes_from_its_checkpoint(write_recipe, tmp_path):
    stage = (
        "- {name: long, uses: train, with: {max_steps: 60, batch_size: 16, learning_rate: 1.0e-3, "
        "checkpoint_every: 10, eval_every_epoch: false}}\n"
    )
    recipe = write_recipe(stage)
    reference, run = tmp_path / "reference", tmp_path / "run"
    subprocess.run([RECIPE_BIN, "apply", str(recipe), "--output", str(reference), "-q"], check=True, timeout=HANG_S)

    # Killed (no cleanup at all) at step 35, five steps past the checkpoint taken at step 30.
    paused = PausedRun([str(recipe), "--output", str(run), "-q"], at=["long/step 35"], folder=tmp_path / "pause")
    assert paused.wait_paused() == "long/step 35"
    paused.send(signal.SIGKILL)
    paused.wait()
    meta = run / "stages" / "01-long" / "work" / "checkpoint" / "meta.json"
    killed_at = json.loads(meta.read_text())["step"]
    assert killed_at == 30

    subprocess.run([RECIPE_BIN, "apply", str(recipe), "--output", str(run), "-q"], check=True, timeout=HANG_S)
    training = report_of(run)["stages"][1]["details"]["training"]
    assert training["resumed_from_step"] == killed_at and training["steps"] == 60
    assert not meta.parent.exists()  # removed once the stage finished
    got, want = weights(run, "long"), weights(reference, "long")
    assert all((got[k] == want[k]).all() for k in want)  # exactly the uninterrupted result
