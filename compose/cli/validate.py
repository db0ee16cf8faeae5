"""recipe validate: check recipes without running anything."""

from __future__ import annotations

import argparse

from compose.cli._common import dump_json, host_or_exit, print_problems, stderr
from compose.errors import RecipeError
from compose.exit_codes import EXIT_INVALID, EXIT_OK
from compose.recipe.load import load_recipe

HELP = "check recipes (schema, plugins, stage order) without running anything"
EXAMPLE = """\
example:
  recipe validate recipes/minilm-sst2.yaml
  recipe validate recipes/*.yaml --json     # machine-readable problems
  recipe validate recipes/minilm-sst2.yaml stages.gptq.with.bits=3

Every problem is reported, each with file:line:column, the path in the recipe
($.stages[2].with.bits), what was expected and, for misspellings, the right name.
Exit code 0 if every recipe is valid, 2 if any is not.
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "validate", help=HELP, description=HELP, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "recipes",
        nargs="+",
        metavar="RECIPE_OR_OVERRIDE",
        help="recipe files, then optional key.path=value / ~key.path overrides for all of them",
    )
    p.add_argument("--json", action="store_true", help="print the findings as JSON on stdout")
    p.set_defaults(handler=run)


def run(args) -> int:
    files = [r for r in args.recipes if "=" not in r and not r.startswith("~")]
    overrides = [r for r in args.recipes if r not in files]
    host = host_or_exit()
    results = []
    code = EXIT_OK
    for file in files:
        try:
            recipe = load_recipe(file, overrides, host)
        except RecipeError as exc:
            code = EXIT_INVALID
            print_problems(exc.problems + exc.warnings, as_json=args.json)
            results.append(
                {"recipe": file, "valid": False, "problems": [p.to_json() for p in exc.problems + exc.warnings]}
            )
            continue
        print_problems(recipe.warnings, as_json=args.json)
        results.append({"recipe": file, "valid": True, "problems": [p.to_json() for p in recipe.warnings]})
        if not args.json:
            stderr.print(f"[green]valid[/]: {file} ({len(recipe.stages)} stages)")
    if args.json:
        dump_json({"valid": code == EXIT_OK, "recipes": results})
    return code
