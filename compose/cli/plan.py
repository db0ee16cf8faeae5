"""recipe plan: show the resolved recipe and what each stage will do."""

from __future__ import annotations

import argparse

import yaml

from compose.cli._common import dump_json, host_or_exit, print_problems
from compose.errors import RecipeError
from compose.exit_codes import EXIT_INVALID, EXIT_OK
from compose.recipe.load import load_recipe
from compose.recipe.schema import training_settings_paths
from compose.stage import describe_fact

HELP = "show the resolved recipe (defaults filled in) and what each stage will do"
EXAMPLE = """\
example:
  recipe plan recipes/minilm-sst2.yaml
  recipe plan recipes/minilm-sst2.yaml stages.gptq.with.bits=3 --json

Nothing runs and nothing is written. Exit code 2 if the recipe is invalid.
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "plan", help=HELP, description=HELP, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", help="key.path=value or ~key.path")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument(
        "--time",
        action="store_true",
        help="estimate each stage's time on this machine: loads the recipe's model and times a few training "
        "steps on the real data (seconds to a minute)",
    )
    p.add_argument(
        "--no-data",
        action="store_true",
        help="do not read the data and the tokenizer (no token lengths, truncation or training steps)",
    )
    p.set_defaults(handler=run)


def _extension_lines(host, stage_type, settings) -> list[str]:
    """What the training extensions a stage sets will do here (``amp auto -> bf16: ...``)."""
    lines = []
    for at in training_settings_paths(stage_type.schema):
        training = settings
        for key in at:
            training = training.get(key) if isinstance(training, dict) else None
        if not isinstance(training, dict):
            continue
        for name, registered in host.training_extensions.items():
            ext = registered.extension
            value = training.get(name, ext.schema.get("default"))
            if ext.describe is not None and value != ext.schema.get("default"):
                lines.append(ext.describe(value))
    return lines


def run(args) -> int:
    from compose.run.executor import baseline_stage

    host = host_or_exit()
    try:
        recipe = load_recipe(args.recipe, args.overrides, host)
    except RecipeError as exc:
        print_problems(exc.problems + exc.warnings)
        return EXIT_INVALID
    print_problems(recipe.warnings)
    steps = []
    for index, (stage, stage_type) in enumerate(zip(recipe.stages, recipe.stage_types), start=1):
        what = stage_type.describe(stage["with"]) if stage_type.describe else stage_type.description
        what += "".join(f"; {line}" for line in _extension_lines(host, stage_type, stage["with"]))
        leaves = ", ".join(describe_fact(f, v) for f, v in stage_type.leaves.items())
        steps.append(
            {
                "index": index,
                "name": stage["name"],
                "uses": stage_type.name,
                "does": what,
                "leaves": leaves,
                "compresses": stage_type.compresses,
            }
        )
    plan = {
        "recipe": recipe.data,
        "family": recipe.family,
        "baseline": baseline_stage(recipe),
        "steps": steps,
    }
    if "search" in recipe.data:
        plan["search"] = _search_plan(recipe)
    if not args.no_data:
        from compose.run.data_plan import data_plan

        plan["data"] = data_plan(recipe, host, estimate_time=args.time)
        if "search" in plan:
            plan["search"]["floor"] = _floor(args, recipe, host)
            if plan["data"].get("time"):
                plan["search"]["trial_cost"] = _trial_cost(recipe, plan["data"]["time"])
    if args.json:
        dump_json(plan)
        return EXIT_OK
    print(f"# recipe plan for {args.recipe}: model family {recipe.family}")
    print(yaml.safe_dump(recipe.data, sort_keys=False), end="")
    print("\n# what will run, in order:")
    print(f"#  0. input: load the model and evaluate it on split '{recipe.data['evaluate']['split']}'")
    for step in steps:
        tail = f" (leaves the model {step['leaves']})" if step["leaves"] else ""
        print(f"# {step['index']:2d}. {step['name']} [{step['uses']}]: {step['does']}{tail}")
    print(f"# retained is measured against: {plan['baseline']}")
    if "data" in plan:
        _print_data(plan["data"])
    if "search" in plan:
        search = plan["search"]
        print(f"\n# recipe tune searches {len(search['space'])} setting(s):")
        for line in search["space"]:
            print(f"#   {line}")
        print(f"# each trial runs the stages above with its settings, evaluated on split {search['selection_split']}")
        print(f"# {search['goal']}")
        floor = search.get("floor")
        if floor:
            print(
                f"# on {floor['rows']:,} selection rows, retained's interval is about ±{floor['half_width']:.1%}: "
                f"a trial qualifies with a point estimate of about {floor['point_needed']:.1%} or more"
            )
            if floor["warning"]:
                print(f"# warning: {floor['warning']}")
        cost = search.get("trial_cost")
        if cost:
            print(
                f"# a trial: ~{cost['first_trial_seconds'] / 60:.1f} min the first time, ~{cost['later_trial_seconds'] / 60:.1f} "
                f"min once {', '.join(cost['shared_stages']) or 'no stage'} is shared"
                + (f"; {cost['minutes']} minutes buy ~{cost['trials_in_minutes']} trials" if cost["minutes"] else "")
            )
    return EXIT_OK


def _print_data(data: dict) -> None:
    if data["max_length"] is not None:
        auto = " (auto: 99% of the training split's rows fit whole)" if data["max_length_written"] == "auto" else ""
        print(f"\n# the data under the recipe's tokenizer; max_length {data['max_length']}{auto}:")
        for split, s in data["lengths"].items():
            print(
                f"#   {split}: {s['rows']:,} rows, tokens mean {s['mean']} p95 {s['p95']} max {s['max']}; "
                f"truncated {s['truncated_share']:.1%}"
            )
    for warning in data["warnings"]:
        print(f"# warning: {warning}")
    if data["training"]:
        print("# training budgets here:")
    for item in data["training"]:
        where = "" if item["settings"] == "with" else f" ({item['settings']})"
        print(f"#   {item['stage']}{where}: {item['describe']} on '{item['split']}' ({item['rows']:,} rows)")
    if data.get("time"):
        time = data["time"]
        print(
            f"# estimated time on this machine (the recipe's model measured here: a training step "
            f"{time['calibration']['fixed_seconds']:.3f} s + {time['calibration']['seconds_per_token'] * 1e3:.3f} ms "
            "a token):"
        )
        for item in time["stages"]:
            print(f"#   {item['stage']}: ~{item['seconds']:.0f} s (training ~{item['training_seconds']:.0f} s)")
        print(f"#   in all: ~{time['total_seconds'] / 60:.1f} min, besides loading and the input's evaluation")


def _floor(args, recipe, host) -> dict:
    """Whether the search's floor can be met on its selection split (``compose.tune.floor``)."""
    from pathlib import Path

    from compose.tasks import build_task
    from compose.tune.floor import floor_check
    from compose.tune.study import Study, TuneOptions

    study = Study(TuneOptions(recipe=Path(args.recipe), overrides=list(args.overrides)), host, recipe=recipe)
    trial = study.trial_recipe({})[1]
    task = build_task(trial.data["task"], trial.data["seed"])
    rows = len(task.rows(study.recipes.selection_split))
    train_rows = (
        len(build_task(recipe.data["task"], recipe.data["seed"]).rows("train")) if study.recipes.carved else None
    )
    return floor_check(recipe.data["search"], rows, task.metric_name, train_rows)


def _trial_cost(recipe, timing: dict) -> dict:
    """A trial's estimated time: the first runs every stage, later ones reuse the stages before the first one
    the search changes (the store); and how many trials search.minutes buys."""
    from compose.recipe.search_space import dimensions

    search = recipe.data["search"]
    searched = {d.path.split(".")[1] for d in dimensions(search) if d.path.startswith("stages.")}
    names = [s["name"] for s in recipe.stages]
    first = min((names.index(n) for n in searched if n in names), default=len(names))
    seconds = {s["stage"]: s["seconds"] for s in timing["stages"]}
    full = sum(seconds.values())
    later = sum(seconds[n] for n in names[first:])
    minutes = search["minutes"]
    trials = 0
    if minutes:
        left = minutes * 60 - full
        trials = 0 if left < 0 else 1 + int(left // max(later, 1e-6))
    return {
        "first_trial_seconds": round(full, 3),
        "later_trial_seconds": round(later, 3),
        "shared_stages": names[:first],
        "minutes": minutes,
        "trials_in_minutes": trials,
    }


def _search_plan(recipe) -> dict:
    from compose.recipe.search_space import dimensions

    search = recipe.data["search"]
    objectives = " and ".join(search["objectives"])
    judged = "the lower end of its interval" if search["judged_on"] == "interval_low" else "its point estimate"
    budget = " or ".join(
        part
        for part in (
            f"{search['trials']} trials" if search["trials"] else "",
            f"{search['minutes']} minutes" if search["minutes"] else "",
        )
        if part
    )
    return {
        "space": [d.describe() for d in dimensions(search)],
        "selection_split": (f"'{search['selection_split']}'" if search["selection_split"] else None)
        or (
            f"'selection' ({search['selection_share']:.0%} of train's "
            + (
                "whole texts, held out of training with every phrase inside them)"
                if search["selection_whole_texts"]
                else "rows, held out of training)"
            )
            if search["selection_share"]
            else f"'{recipe.data['evaluate']['split']}'"
        ),
        "goal": f"optimizing {objectives} with retained >= {search['min_retained']:.1%} (judged on {judged}); "
        f"budget {budget}, seed {search['seed']}",
    }
