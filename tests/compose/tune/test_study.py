"""compose.tune.study on a tiny BERT: trials share their stages, infeasible and failed trials are recorded,
and best.yaml reproduces the winner from its run folder."""

import json
from pathlib import Path

import pytest
import yaml

from compose.testing import run_recipe
from compose.tune.front import ranked
from compose.tune.study import BEST_RECIPE, REPORT_FILE, TRIALS_FILE, Study, TuneOptions

STAGES = """\
- {name: ft, uses: train, with: {max_steps: 4, batch_size: 16, eval_every_epoch: false}}
- {name: prune, uses: prune-ffn, with: {ratio: 0.25, importance: magnitude}}
- {name: heads, uses: prune-heads, with: {heads_per_layer: 1, importance: magnitude}}
"""


def tune(write_recipe, host, tmp_path, space: str, more: str = "", trials: int = 3) -> tuple[Study, dict]:
    recipe = write_recipe(STAGES, f"search:\n  space:\n{space}{more}")
    study = Study(TuneOptions(recipe=recipe, output=tmp_path / "tune", trials=trials), host)
    return study, study.run()


def records(study) -> list[dict]:
    return records_in(study.dir)


def records_in(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / TRIALS_FILE).read_text().splitlines()]


def test_trials_share_the_fine_tune_and_the_winner_reapplies_from_its_folder(write_recipe, host, tmp_path, capsys):
    space = "    - {path: stages.prune.with.ratio, choices: [0.25, 0.5]}\n    - {path: stages.heads, optional: true}\n"
    study, report = tune(write_recipe, host, tmp_path, space, "  min_retained: 0.05\n  judged_on: point\n", trials=3)
    found = records(study)
    assert len(found) == 3 and report["trials"]["complete"] == 3
    runs = [name for record in found for name in record["stage_runs"]]
    assert runs.count("input") == 1 and runs.count("ft") == 1  # the shared prefix ran once in the whole study
    assert report["reused_stage_runs"] == sum(len(r["reused_stages"]) for r in found) >= 4
    assert report["seconds_saved_by_reuse"] > 0
    assert all(r["feasible"] and r["objectives"] for r in found)
    assert report["front"] and report["winner"]["number"] in [r["number"] for r in found]
    assert report["selected_on_evaluation_split"] is True
    saved = json.loads((study.dir / REPORT_FILE).read_text())
    assert saved["winner"] == report["winner"]
    assert report["plot"] == str(study.dir / "tune.png") and (study.dir / "tune.png").stat().st_size > 10_000

    best = study.dir / BEST_RECIPE
    plain = yaml.safe_load(best.read_text())
    assert "search" not in plain and all(
        g.get("min_metric") is not None or g.get("stage") == "final" for g in plain["gates"]
    )
    assert run_recipe("apply", str(best), "--json", "-q") == 0
    again = json.loads(capsys.readouterr().out)
    winner = next(r for r in found if r["number"] == report["winner"]["number"])
    assert again["reused_stages"] == winner["stages"]  # every stage of the trial, none run again
    assert again["stages"][-1]["metric"]["value"] == pytest.approx(winner["metric"])
    assert again["stages"][-1]["size_bytes"] == winner["size_bytes"]


def test_trials_below_the_floor_stop_early_and_the_study_says_none_was_feasible(write_recipe, host, tmp_path):
    space = "    - {path: stages.prune.with.ratio, choices: [0.25, 0.5]}\n"
    study, report = tune(write_recipe, host, tmp_path, space, "  min_retained: 5.0\n", trials=2)
    found = records(study)
    assert [r["status"] for r in found] == ["gate_failed", "gate_failed"]
    assert all(r["final_stage"] == "prune" and not r["feasible"] for r in found)  # stopped before 'heads'
    assert report["trials"]["pruned"] == 2 and report["front"] == [] and report["winner"] is None
    assert not (study.dir / BEST_RECIPE).exists()


def test_a_failing_trial_is_recorded_and_the_study_goes_on(write_recipe, host, tmp_path):
    # hidden size 30 is not a multiple of the 4 attention heads: the model cannot be built
    space = "    - {path: model.config.hidden_size, choices: [32, 30]}\n"
    study, report = tune(
        write_recipe, host, tmp_path, space, "  min_retained: 0.05\n  judged_on: point\n  seed: 0\n", trials=3
    )
    found = records(study)
    failed = [r for r in found if r["status"] == "stage_failed"]
    assert failed and all(r["params"]["model.config.hidden_size"] == 30 and r["error"]["message"] for r in failed)
    assert report["trials"]["fail"] == len(failed) and report["trials"]["complete"] == len(found) - len(failed) >= 1


def test_a_selection_split_carved_from_train_is_what_trials_are_compared_on(write_recipe, host, tmp_path):
    from compose.recipe.data import read_split

    # a stepped range: Optuna stores low + k * step (0.30000000000000004); the trial and its final
    # evaluation must both use the value as written, or the final evaluation would retrain
    space = "    - {path: stages.prune.with.ratio, low: 0.1, high: 0.5, step: 0.1}\n"
    more = "  min_retained: 0.05\n  judged_on: point\n  selection_share: 0.25\n  selection_seed: 1\n"
    study, report = tune(write_recipe, host, tmp_path, space, more, trials=1)
    assert report["selection_split"] == "selection" and report["selected_on_evaluation_split"] is False
    (record,) = records(study)
    assert record["selection_split"] == "selection" and record["status"] == "passed"
    _, recipe = study.trial_recipe(record["params"])
    data = recipe.data["task"]["data"]
    assert data["train"]["holdout"] == {
        "share": 0.25,
        "seed": 1,
        "whole_texts": False,
        "group_by": None,
        "part": "rest",
    }
    assert data["selection"]["holdout"]["part"] == "held" and recipe.data["evaluate"]["split"] == "selection"
    columns = ["sentence", "label"]
    trained = read_split("train", data["train"], columns, 0)
    selected = read_split("selection", data["selection"], columns, 0)
    assert selected and len(trained) + len(selected) == 256  # the tiny train file, split in two
    final = report["winner"]["final"]  # the winner on dev, which no trial was compared on: measured, not retrained
    assert final["status"] == "passed" and final["split"] == "dev"
    assert final["remeasured_stages"] == ["input", "ft", "prune", "heads"]
    assert final["size_bytes"] == record["size_bytes"] and final["retained"] is not None
    best = yaml.safe_load((study.dir / "best.yaml").read_text())
    assert best["task"]["data"]["train"]["holdout"]["part"] == "rest"  # the winner trains on the same rows
    assert best["evaluate"]["split"] == "dev" and best["output"]["dir"] == final["run_dir"]
    assert run_recipe("apply", str(study.dir / "best.yaml"), "-q") == 0
    again = json.loads((Path(final["run_dir"]) / "report.json").read_text())
    assert again["reused_stages"] == ["input", "ft", "prune", "heads"] and again["remeasured_stages"] == []
    assert again["stages"][-1]["metric"]["value"] == pytest.approx(final["metric"])


def test_a_hand_written_run_is_drawn_reported_and_measured_beside_the_winner(write_recipe, host, tmp_path):
    recipe = write_recipe(STAGES)
    assert run_recipe("apply", str(recipe), "--output", str(tmp_path / "hand"), "-q") == 0
    space = "    - {path: stages.prune.with.ratio, choices: [0.25, 0.5]}\n"
    more = "  min_retained: 0.05\n  judged_on: point\n  selection_share: 0.25\n"
    searched = write_recipe(STAGES, f"search:\n  space:\n{space}{more}", name="t.yaml")
    options = TuneOptions(recipe=searched, output=tmp_path / "tune", trials=1, reference=tmp_path / "hand")
    report = Study(options, host).run()
    reference = report["reference"]
    assert reference["label"] == "hand-written: recipe" and reference["size_bytes"] > 0
    assert reference["retained"] is not None and (tmp_path / "tune" / "tune.png").is_file()
    # the winner on dev beside the hand-written run's final model: reports' numbers, speed side by side
    against, final = report["against_reference"], report["winner"]["final"]
    hand = json.loads((tmp_path / "hand" / "report.json").read_text())["stages"][-1]
    assert against["split"] == "dev" and against["rounds"] == 3
    assert against["winner"]["size_bytes"] == final["size_bytes"] and against["winner"]["retained"] == final["retained"]
    assert against["reference"]["size_bytes"] == hand["size_bytes"] == reference["size_bytes"]
    assert against["reference"]["smaller_than_baseline"] == pytest.approx(hand["size_ratio"])
    assert against["smaller_by"] == pytest.approx(hand["size_bytes"] / final["size_bytes"])
    speeds = [against[side]["side_by_side"]["throughput_per_s"] for side in ("winner", "reference")]
    assert all(v > 0 for v in speeds) and against["faster_by"] == pytest.approx(speeds[0] / speeds[1])
    assert against["dominates"] == (
        against["smaller_by"] > 1 and against["faster_by"] > 1 and final["retained"] >= hand["retained"]
    )
    # --report-only on the study: the comparison again, no trial run whatever the budget says
    options = TuneOptions(
        recipe=searched, output=tmp_path / "tune", trials=5, reference=tmp_path / "hand", report_only=True
    )
    again = Study(options, host).run()
    assert sum(again["trials"].values()) == 1 and len(records_in(tmp_path / "tune")) == 1
    assert again["against_reference"]["smaller_by"] == pytest.approx(against["smaller_by"])


def test_the_front_is_measured_again_side_by_side_before_the_winner_is_named(write_recipe, host, tmp_path):
    from optuna.trial import TrialState

    stages = STAGES + "- {name: deploy, uses: export}\n"  # the final models are ONNX folders, read back by export
    space = "    - {path: stages.prune.with.ratio, choices: [0.25, 0.5]}\n"
    recipe = write_recipe(stages, f"search:\n  space:\n{space}  min_retained: 0.05\n  judged_on: point\n")
    study = Study(TuneOptions(recipe=recipe, output=tmp_path / "tune", trials=2), host)
    for ratio in (0.25, 0.5):  # both settings, whatever the sampler would draw
        study.optuna_study().enqueue_trial({"stages.prune.with.ratio": ratio})
    study.run()
    trials = study.optuna_study().get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    assert len({tuple(t.params.items()) for t in trials}) == 2  # both settings ran
    again = study.speed.front(trials, records(study), study.objectives, study.recipes.selection_split)
    assert set(again) == {t.number for t in trials}
    assert all(m["throughput_per_s"] > 0 and m["batch1_p50_ms"] > 0 and m["threads"] >= 1 for m in again.values())
    fastest = max(trials, key=lambda t: again[t.number]["throughput_per_s"])
    assert ranked(trials, ["throughput"], again)[0] is fastest  # the winner is named on the side-by-side numbers


def test_list_choices_reach_the_report_the_final_evaluation_and_best_yaml_as_lists(write_recipe, host, tmp_path):
    stages = (
        "- {name: ft, uses: train, with: {max_steps: 4, batch_size: 16, eval_every_epoch: false}}\n"
        "- {name: d, uses: distill, with: {student: {from_teacher: {layers: [0]}}, "
        "training: {max_steps: 2, batch_size: 16, eval_every_epoch: false}}}\n"
    )
    space = "    - {path: stages.d.with.student.from_teacher.layers, choices: [[0], [1]]}\n"
    more = "  min_retained: 0.05\n  judged_on: point\n  selection_share: 0.25\n"
    recipe = write_recipe(stages, f"search:\n  space:\n{space}{more}")
    study = Study(TuneOptions(recipe=recipe, output=tmp_path / "tune", trials=1), host)
    report = study.run()  # Optuna keeps [0] as the text "[0]": the report's steps must read it back as a list
    (record,) = records(study)
    layers = record["params"]["stages.d.with.student.from_teacher.layers"]
    assert layers in ([0], [1]) and report["winner"]["params"] == record["params"]
    assert report["winner"]["final"]["status"] == "passed"
    best = yaml.safe_load((study.dir / BEST_RECIPE).read_text())
    assert best["stages"][1]["with"]["student"]["from_teacher"]["layers"] == layers


def test_every_split_that_reads_trains_rows_loses_the_selection_rows(write_recipe, host, tmp_path):
    from compose.recipe.data import read_split

    recipe = write_recipe(STAGES, "search:\n  space:\n    - {path: stages.prune.with.ratio, choices: [0.25]}\n")
    train = yaml.safe_load(recipe.read_text())["task"]["data"]["train"]
    whole_file = json.dumps({"path": train["path"]})  # e.g. a distillation split without train's limit
    options = TuneOptions(
        recipe=recipe,
        output=tmp_path / "tune",
        overrides=[f"task.data.distill_text={whole_file}", "search.selection_share=0.25"],
    )
    _, trial = Study(options, host).trial_recipe({"stages.prune.with.ratio": 0.25})
    data = trial.data["task"]["data"]
    columns = ["sentence", "label"]
    selected = {row["sentence"] for row in read_split("selection", data["selection"], columns, 0)}
    distilled = {row["sentence"] for row in read_split("distill_text", data["distill_text"], columns, 0)}
    assert selected and distilled and not selected & distilled
    assert data["distill_text"]["holdout"]["part"] == "rest" and data["dev"].get("holdout") is None
    assert not data["selection"]["holdout"]["whole_texts"]

    options.overrides.append("search.selection_whole_texts=true")  # sentences, none of their phrases trained on
    _, trial = Study(options, host).trial_recipe({"stages.prune.with.ratio": 0.25})
    carved = trial.data["task"]["data"]
    assert all(carved[name]["holdout"]["whole_texts"] for name in ("train", "distill_text", "selection"))


def test_a_second_study_given_the_first_ones_store_reuses_its_stages(write_recipe, host, tmp_path):
    space = "    - {path: stages.prune.with.ratio, choices: [0.25, 0.5]}\n"
    first, _ = tune(write_recipe, host, tmp_path, space, "  min_retained: 0.05\n  judged_on: point\n", trials=1)
    narrower = write_recipe(STAGES, f"search:\n  space:\n{space}  min_retained: 0.05\n  judged_on: point\n")
    options = TuneOptions(recipe=narrower, output=tmp_path / "narrower", trials=2, store=first.dir / "stages")
    second = Study(options, host)
    second.run()
    found = records(second)
    assert len(found) == 2 and all("ft" in r["reused_stages"] and "ft" not in r["stage_runs"] for r in found)
    assert not (second.dir / "stages").exists()  # its own stages went into the store it was given
