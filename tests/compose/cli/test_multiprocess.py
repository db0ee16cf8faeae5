"""`recipe apply --nproc 2`: real processes, DDP over gloo on CPU."""

import json
import subprocess
import sys
from pathlib import Path

from compose.recipe.data_check import SAMPLE_LINES
from compose.testing import HANG_S

RECIPE_BIN = str(Path(sys.executable).parent / "recipe")


def test_two_process_ddp_train_has_identical_replicas_and_one_report(write_recipe, tmp_path):
    recipe = write_recipe("- {name: ft, uses: train, with: {epochs: 5, learning_rate: 3.0e-3, batch_size: 16}}\n")
    out = tmp_path / "run"
    done = subprocess.run(
        [RECIPE_BIN, "apply", "--nproc", "2", str(recipe), "--output", str(out), "--json", "-q"],
        capture_output=True,
        text=True,
        timeout=HANG_S,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report == json.loads((out / "report.json").read_text())
    training = report["stages"][1]["details"]["training"]
    assert training["processes"] == 2 and training["parameters_in_sync"] is True
    # 256 rows, batch 16 per process, 2 processes: 8 steps per epoch
    assert training["steps"] == 40
    assert report["stages"][1]["metric"]["value"] > 0.8
    # one set of artifacts, written once
    assert sorted(p.name for p in (out / "stages").iterdir()) == ["00-input", "01-ft"]
    assert not list(out.rglob("*.partial"))


def test_a_failing_rank_fails_the_run_with_its_error(write_recipe, tmp_path):
    # a bad label past the rows validation samples: only the stage that reads it can fail
    bad = tmp_path / "bad.tsv"
    good = "".join(f"good film {i}\t1\n" for i in range(SAMPLE_LINES))
    bad.write_text("sentence\tlabel\n" + good + "odd film\t7\n", encoding="utf-8")
    recipe = write_recipe("- {name: ft, uses: train, with: {split: extra, max_steps: 1}}\n")
    out = tmp_path / "run"
    done = subprocess.run(
        [RECIPE_BIN, "apply", "--nproc", "2", str(recipe), f"task.data.extra.path={bad}", "--output", str(out), "-q"],
        capture_output=True,
        text=True,
        timeout=HANG_S,
    )
    assert done.returncode == 3
    assert "label '7'" in done.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "stage_failed" and report["error"]["stage"] == "ft"
