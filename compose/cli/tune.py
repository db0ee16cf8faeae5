"""recipe tune: search a recipe's settings for the smallest, fastest pipeline that keeps the accuracy asked for."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from compose.cli._common import CommandError, dump_json, host_or_exit, print_problems, stderr
from compose.errors import RecipeError
from compose.exit_codes import EXIT_GATE_FAILED, EXIT_INTERRUPTED, EXIT_INVALID, EXIT_OK
from compose.recipe.load import load_recipe

HELP = "search the recipe's `search:` space with Optuna for pipelines that meet its accuracy floor"
EXAMPLE = """\
example:
  recipe tune recipes/minilm-sst2-tune.yaml
  recipe tune recipes/minilm-sst2-tune.yaml --trials 40 --output runs/tune1
  recipe tune recipe.yaml --storage sqlite:////shared/studies.db --study minilm   (one worker of several)
  recipe tune recipes/minilm-sst2-tune.yaml --report-only --compare-with runs/minilm-sst2
  recipe tune recipes/minilm-sst2-tune-refine.yaml --output runs/minilm-sst2-tune-refine \
      --store runs/minilm-sst2-tune/stages   (a narrower search, reusing the broad one's stages)

A recipe's search section names what may change (each entry a recipe path as overrides
spell it, with a range, a list of choices, or optional: true for a stage a trial may
leave out), the objectives (size, throughput, latency: one, or two for a Pareto front),
the floor (min_retained, judged on the retained interval's lower end by default) and the
budget (trials, minutes, seed). `recipe plan` shows the space; `recipe validate` tries
every edge of it before anything runs.

Each trial is the recipe with the trial's overrides, run by the same executor as
`recipe apply`, in its own run folder under TUNE_DIR/trials/. Trials share finished
stages through TUNE_DIR/stages/ (by fingerprint; --store names another): a stage several
trials have in common runs once. A trial whose compressing stage falls below the floor stops there (pruned);
one that fails is recorded and the study goes on.

Writes into the tune folder (--output, default: the recipe's output.dir + "-tune"):
  study.db          the Optuna study (kill and rerun to continue it; another process
                    given the same --storage and --study adds trials to it; a trial
                    whose worker died is retried after --stale-after seconds)
  trials.jsonl      one line per trial: settings, metrics with intervals, size, speed,
                    status, seconds, reused stages
  tune-report.json  the front, the winner, trial counts, reuse and the time it saved
  best.yaml         a plain recipe that reproduces the winner: `recipe apply best.yaml`
  tune.png          retained against size and against throughput, the front marked
                    (and --compare-with's run as a star)

exit codes: 0 a feasible pipeline was found, 1 none met the floor, 2 the recipe or its
search is invalid, 130 interrupted (run again to continue the study).
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "tune", help=HELP, description=HELP, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("recipe", help="the recipe file (YAML) with a search: section")
    p.add_argument("overrides", nargs="*", help="key.path=value or ~key.path, applied before the search")
    p.add_argument("--output", "-o", type=Path, help="the tune folder (default: the recipe's output.dir + '-tune')")
    p.add_argument("--storage", help="Optuna storage: a database URL, or journal:PATH (default: TUNE_DIR/study.db)")
    p.add_argument("--study", dest="study_name", help="the study's name in the storage (default: the recipe's name)")
    p.add_argument(
        "--trials", type=int, metavar="N", help="finish when the study has N trials (default: search.trials)"
    )
    p.add_argument(
        "--minutes", type=float, metavar="M", help="stop this process after M minutes (default: search.minutes)"
    )
    p.add_argument(
        "--compare-with",
        type=Path,
        metavar="RUN",
        help="a hand-written recipe's run folder (or report.json): its final model is drawn beside the trials",
    )
    p.add_argument(
        "--stale-after",
        type=float,
        default=300.0,
        metavar="S",
        help="a running trial whose worker sent no heartbeat for S seconds (killed, machine lost) is failed and "
        "retried with the same settings, by whichever worker starts a trial next; give every worker the same "
        "value (default: %(default)s)",
    )
    p.add_argument(
        "--store",
        type=Path,
        metavar="DIR",
        help="the store of finished stages that trials share (default: TUNE_DIR/stages); give an earlier study's "
        "(OTHER_TUNE_DIR/stages) to reuse the fine-tune and students it ran, e.g. for a narrower search after a "
        "broad one",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="run no trial: write the report of the study as it stands (the front measured again, the winner "
        "evaluated, --compare-with's run measured beside it)",
    )
    p.add_argument("--json", action="store_true", help="print the tune report on stdout")
    p.add_argument("--quiet", "-q", action="store_true", help="no live progress view")
    p.set_defaults(handler=run)


def run(args) -> int:
    from compose.progress import Progress, interval_from_env
    from compose.tune.driver import StorageError
    from compose.tune.store import StoreError
    from compose.tune.study import Study, TuneOptions

    host = host_or_exit()
    try:
        recipe = load_recipe(args.recipe, args.overrides, host)
    except RecipeError as exc:
        print_problems(exc.problems + exc.warnings)
        stderr.print(f"[red]{len(exc.problems)} problem(s); nothing ran.[/]")
        return EXIT_INVALID
    if "search" not in recipe.data:
        raise CommandError(f"{args.recipe} has no search: section; `recipe tune --help` shows how to write one")
    progress = Progress(console=Console(stderr=True), enabled=not args.quiet, interval=interval_from_env())
    options = TuneOptions(
        recipe=Path(args.recipe),
        overrides=list(args.overrides),
        output=args.output,
        storage=args.storage,
        study_name=args.study_name,
        trials=args.trials,
        minutes=args.minutes,
        progress=progress,
        reference=args.compare_with,
        stale_after=args.stale_after,
        report_only=args.report_only,
        store=args.store,
    )
    if args.compare_with is not None:
        from compose.tune.reference import mismatches

        differ = mismatches(Path(args.compare_with), recipe.data)
        if differ:
            raise CommandError(
                f"--compare-with {args.compare_with} is not a run of this recipe's task, so its numbers do not "
                f"compare with the trials': {'; '.join(differ)}. Nothing ran: give a run of the same task, data and "
                "metric (recipe apply of the hand-written recipe)"
            )
    study = Study(options, host, recipe=recipe)
    try:
        with progress:
            report = study.run()
    except (StorageError, StoreError) as exc:
        raise CommandError(str(exc)) from None
    except KeyboardInterrupt:
        stderr.print("[yellow]interrupted:[/] the study is kept; run the same command again to continue it")
        return EXIT_INTERRUPTED
    render(report, Console(stderr=args.json))
    if args.json:
        dump_json(report)
    return EXIT_OK if report["winner"] else EXIT_GATE_FAILED


def render(report: dict, console: Console) -> None:
    names = [o["name"] for o in report["objectives"]]
    table = Table(title=f"the front of study '{report['study']}' (feasible trials no other beats on every objective)")
    for column in ("trial", "settings", "retained (judged)", *names):
        table.add_column(column, justify="left" if column == "settings" else "right", overflow="fold")
    for member in report["front"]:
        settings = "\n".join(f"{k}={v}" for k, v in member["params"].items())
        judged = member["judged_retained"]
        cells = [_format(name, member["values"][name]) for name in names]
        table.add_row(str(member["number"]), settings, f"{judged:.1%}" if judged is not None else "-", *cells)
    console.print(table)
    if report.get("side_by_side"):
        console.print(
            f"the front's speed was measured again side by side in this process ({report['side_by_side']['rounds']} "
            "interleaved rounds, medians); the winner is named on those numbers"
        )
        for member in report["front"]:
            again = member.get("side_by_side") or {}
            if again:
                beats = " - beats the hand-written run on every objective" if member.get("beats_reference") else ""
                console.print(
                    f"  trial {member['number']}: {_format('throughput', again['throughput_per_s'])}, "
                    f"batch-1 p50 {_format('latency', again['batch1_p50_ms'])} at {again['threads']} thread(s){beats}"
                )
        theirs = (report.get("reference") or {}).get("side_by_side")
        if theirs:
            console.print(
                f"  hand-written: {_format('throughput', theirs['throughput_per_s'])}, batch-1 p50 "
                f"{_format('latency', theirs['batch1_p50_ms'])}, {_format('size', report['reference']['size_bytes'])}"
            )
    counts = ", ".join(f"{n} {state}" for state, n in report["trials"].items() if n)
    console.print(
        f"trials: {counts or 'none'}; stage runs: {report['stage_runs']}, reused: {report['reused_stage_runs']} "
        f"(saved {report['seconds_saved_by_reuse']:.0f} s)"
    )
    if report["selected_on_evaluation_split"]:
        console.print(
            f"[yellow]note:[/] trials were compared on '{report['selection_split']}', the split they are reported "
            "on; set search.selection_share (or selection_split) to keep the final evaluation unseen"
        )
    if report["winner"]:
        console.print(
            f"winner: trial {report['winner']['number']}; reproduce it with `recipe apply {report['best_recipe']}`"
        )
        final = report["winner"].get("final") or {}
        if final.get("retained") is not None:
            ci = final.get("retained_ci")
            interval = f" ({ci[0]:.1%}-{ci[1]:.1%})" if ci else ""
            console.print(
                f"on the evaluation split '{final['split']}', which no trial was compared on: retained "
                f"{final['retained']:.1%}{interval}, {_format('size', final['size_bytes'])}, "
                f"{_format('throughput', final['throughput_per_s'])}"
            )
        _render_against_reference(report.get("against_reference"), console)
    else:
        console.print("[red]no trial met the floor[/] (min_retained); widen the space or lower the floor")


def _render_against_reference(against: dict | None, console: Console) -> None:
    """The winner beside --compare-with's hand-written run, on the evaluation split."""
    if not against:
        return
    for key, label in (("winner", "winner"), ("reference", "hand-written")):
        side = against[key]
        ci = side["retained_ci"]
        interval = f" ({ci[0]:.1%}-{ci[1]:.1%})" if ci else ""
        smaller = side["smaller_than_baseline"]
        speed = (side["side_by_side"] or {}).get("throughput_per_s")
        console.print(
            f"  {label}: retained {side['retained']:.1%}{interval}, {_format('size', side['size_bytes'])}"
            + (f" ({smaller:.2f}x smaller than its baseline)" if smaller else "")
            + f", {_format('throughput', speed)} side by side"
        )
    verdict = "dominates" if against["dominates"] else "does not dominate"
    faster = f"{against['faster_by']:.2f}x" if against["faster_by"] else "-"
    console.print(
        f"the winner {verdict} the hand-written recipe on '{against['split']}': {against['smaller_by']:.2f}x "
        f"smaller, {faster} its throughput ({against['rounds']} interleaved rounds in this process)"
    )


def _format(name: str, value) -> str:
    if value is None:
        return "-"
    if name == "size":
        return f"{value / 1e6:.1f} MB"
    if name == "throughput":
        return f"{value:.0f}/s"
    return f"{value:.2f} ms"
