"""What a study found, for the user: the report, the winner evaluated on the evaluation split, best.yaml.

The *reference* is the hand-written recipe's run given with ``--compare-with``: its final
row is drawn beside the trials, its model measured beside the front and beside the winner,
and the report says whether the winner dominates it.
"""

from __future__ import annotations

import yaml

from compose import atomic
from compose.recipe.yaml_source import to_plain
from compose.tune.driver import DIRECTIONS, TWIN_OF, params_of
from compose.tune.front import REFERENCE, REMEASURE_ROUNDS, beats_reference

#: Files a study writes into its tune folder.
REPORT_FILE, BEST_RECIPE = "tune-report.json", "best.yaml"
UNITS = {"size": "bytes", "throughput": "examples/s", "latency": "ms"}


def member(trial, objectives: list[str]) -> dict:
    return {
        "number": trial.number,
        "params": params_of(trial),
        "values": dict(zip(objectives, trial.values)),
        "judged_retained": trial.user_attrs.get("judged_retained"),
        "retained_ci": trial.user_attrs.get("retained_ci"),
        "run_dir": trial.user_attrs.get("run_dir"),
    }


def reference_summary(run, side_by_side: dict) -> dict | None:
    """The reference run's final row, to compare the trials with, and its side-by-side speed."""
    if run is None:
        return None
    final = run.final
    return {
        "label": f"hand-written: {run.label}",
        "report": str(run.path),
        "retained": final.retained,
        "retained_ci": final.retained_ci,
        "size_bytes": final.size_bytes,
        "throughput_per_s": (final.latency or {}).get("throughput_per_s"),
        "batch1_p50_ms": (final.latency or {}).get("batch1_p50_ms"),
        "side_by_side": side_by_side.get(REFERENCE),
    }


def against_reference(final: dict | None, reference_run, side_by_side, split: str) -> dict | None:
    """The winner, as evaluated on the evaluation split, beside the reference run's final model: retained and
    size from both runs' reports, speed measured again here side by side (``side_by_side``: a
    ``front.SideBySide``); whether the winner dominates it (smaller, faster, retained no lower)."""
    if reference_run is None or not final or final.get("status") != "passed":
        return None
    from compose.evaluation.run_comparison import load_run

    runs = {"winner": load_run(final["run_dir"]), REFERENCE: reference_run}
    rows = {key: run.final for key, run in runs.items()}
    speed = side_by_side.measure(
        {key: {"artifact": row.artifact, "plugin": row.plugin} for key, row in rows.items()}, split
    )
    sides = {
        key: {
            "report": str(runs[key].path),
            "stage": row.name,
            "retained": row.retained,
            "retained_ci": row.retained_ci,
            "size_bytes": row.size_bytes,
            "smaller_than_baseline": row.size_ratio,
            "in_its_run": {"throughput_per_s": (row.latency or {}).get("throughput_per_s")},
            "side_by_side": speed.get(key),
        }
        for key, row in rows.items()
    }
    winner, theirs = sides["winner"], sides[REFERENCE]
    faster = speed["winner"]["throughput_per_s"] / speed[REFERENCE]["throughput_per_s"] if speed else None
    smaller = theirs["size_bytes"] / winner["size_bytes"] if winner["size_bytes"] else None
    return {
        **sides,
        "split": split,
        "rounds": REMEASURE_ROUNDS,
        "smaller_by": smaller,
        "faster_by": faster,
        "dominates": bool(
            smaller is not None
            and smaller > 1
            and faster is not None
            and faster > 1
            and winner["retained"] is not None
            and theirs["retained"] is not None
            and winner["retained"] >= theirs["retained"]
        ),
    }


def study_report(
    study, recipes, records: list[dict], front: list, side_by_side: dict, reference_run, recipe_path
) -> dict:
    """The report's body (the winner's final evaluation and the comparison are added by the caller)."""
    from optuna.trial import TrialState

    search = recipes.search
    objectives = list(search["objectives"])
    reference = reference_run.final if reference_run else None
    by_state = {state.name.lower(): len(study.get_trials(deepcopy=False, states=(state,))) for state in TrialState}
    pruned = study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
    by_state["skipped_twins"] = sum(1 for trial in pruned if TWIN_OF in trial.user_attrs)  # among the pruned
    winner = front[0] if front else None
    return {
        "recipe": str(recipe_path),
        "study": study.study_name,
        "objectives": [{"name": n, "direction": DIRECTIONS[n], "unit": UNITS[n]} for n in objectives],
        "constraint": {"min_retained": search["min_retained"], "judged_on": search["judged_on"]},
        "selection_split": recipes.selection_split,
        "evaluation_split": recipes.evaluation_split,
        "selected_on_evaluation_split": recipes.selection_split == recipes.evaluation_split,
        "trials": by_state,
        "stage_runs": sum(len(r["stage_runs"]) for r in records),
        "reused_stage_runs": sum(len(r["reused_stages"]) for r in records),
        "seconds_saved_by_reuse": round(sum(r["seconds_saved"] for r in records), 3),
        "front": [
            {
                **member(t, objectives),
                "side_by_side": side_by_side.get(t.number),
                "beats_reference": beats_reference(t, objectives, side_by_side, reference),
            }
            for t in front
        ],
        "side_by_side": {
            "rounds": REMEASURE_ROUNDS,
            "members": len(side_by_side),
            "note": "the front's speed (and --compare-with's model's) measured again in this process, members "
            "interleaved round by round; the winner is named on these numbers: the first by the first objective "
            "among the members that beat the hand-written run on every objective, when one does",
        }
        if side_by_side
        else None,
        "winner": member(winner, objectives) if winner else None,
        "reference": reference_summary(reference_run, side_by_side),
    }


def write_best(target, trial, overrides: list[str], recipe, folder: str, study_name: str, recipe_path) -> None:
    """A plain recipe (no search section) that reproduces ``trial`` with ``recipe apply`` in ``folder``."""
    data = to_plain(recipe.data)
    data.pop("search", None)
    data["output"]["dir"] = folder
    header = (
        f"# Trial {trial.number} of study '{study_name}' ({recipe_path}): "
        f"{', '.join(overrides) or 'the recipe as written'}.\n"
        f"# Reproduce it (every stage is reused from {folder}):\n"
        f"#   recipe apply {target}\n"
    )
    atomic.write_text(target, header + yaml.safe_dump(data, sort_keys=False))
