"""recipe apply: validate a recipe, then run its stages and report."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from compose.cli._common import CommandError, dump_json, host_or_exit, print_problems, stderr
from compose.errors import RecipeError
from compose.recipe import load_recipe
from compose.report import EXIT_INVALID

HELP = "validate a recipe, then run its stages in order and report each one"
EXAMPLE = """\
example:
  recipe apply recipes/minilm-sst2.yaml
  recipe apply recipes/minilm-sst2.yaml stages.finetune.with.max_steps=50 ~gates
  recipe apply recipes/minilm-sst2.yaml --output runs/try2 --json > report.json

Overrides: key.path=value sets a value (parsed as YAML), ~key.path deletes one;
stages are addressed by name or index (stages.gptq.with.bits=3, stages.0.with.epochs=2).

Writes into the run folder (output.dir, or --output): recipe.resolved.yaml,
report.json (rewritten after every stage) and stages/NN-NAME/model/ for each stage.

exit codes: 0 success, 1 a gate failed, 2 the recipe is invalid (nothing ran),
            3 a stage failed at run time
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("apply", help=HELP, description=HELP, epilog=EXAMPLE,
                              formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("recipe", help="the recipe file (YAML)")
    p.add_argument("overrides", nargs="*", help="key.path=value or ~key.path")
    p.add_argument("--output", "-o", type=Path, help="run folder (default: the recipe's output.dir)")
    p.add_argument("--json", action="store_true", help="print report.json on stdout (progress goes to stderr)")
    p.add_argument("--quiet", "-q", action="store_true", help="no live progress view")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow model code from the hub to run, if the recipe also sets model.trust_remote_code")  # fmt: skip
    p.set_defaults(handler=run)


def run(args) -> int:
    from compose.executor import Executor, RunOptions
    from compose.progress import Progress
    from compose.report import render_table

    host = host_or_exit()
    try:
        recipe = load_recipe(args.recipe, args.overrides, host)
    except RecipeError as exc:
        print_problems(exc.problems + exc.warnings)
        if args.json:
            dump_json({"passed": False, "exit_code": EXIT_INVALID, "status": "invalid",
                       "problems": [p.to_json() for p in exc.problems]})  # fmt: skip
        stderr.print(f"[red]{len(exc.problems)} problem(s); nothing ran.[/]")
        return EXIT_INVALID
    print_problems(recipe.warnings)
    if recipe.data["model"].get("trust_remote_code") and not args.trust_remote_code:
        raise CommandError(
            f"{args.recipe}: the recipe sets model.trust_remote_code, which also needs --trust-remote-code "
            "on the command line; nothing ran"
        )
    progress = Progress(console=Console(stderr=True), enabled=not args.quiet)
    options = RunOptions(output_dir=args.output, allow_remote_code=args.trust_remote_code, progress=progress)
    with progress:
        report = Executor(recipe, host, options).run()
    render_table(report, Console(stderr=args.json))
    if report.error:
        stderr.print(f"[red]error:[/] stage '{report.error['stage']}' failed: ", end="")
        stderr.print(f"{report.error['type']}: {report.error['message']}", markup=False)
        stderr.print("Earlier stages' artifacts and the report are kept.")
    if args.json:
        dump_json(report.to_json())
    return report.exit_code
