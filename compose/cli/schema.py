"""recipe schema: print the JSON Schema of recipes, or of one plugin's settings."""

from __future__ import annotations

import argparse

from compose.cli._common import CommandError, dump_json, host_or_exit
from compose.exit_codes import EXIT_OK
from compose.recipe.schema import combined_schema
from compose.recipe.validation import did_you_mean

HELP = "print the JSON Schema of recipes (with every plugin's settings) or of one stage plugin"
EXAMPLE = """\
example:
  recipe schema > recipe.schema.json      # for editors: the YAML language server
  recipe schema gptq                      # the settings `uses: gptq` takes, with defaults

In VS Code (YAML extension), put this first line in a recipe:
  # yaml-language-server: $schema=./recipe.schema.json
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "schema", help=HELP, description=HELP, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("stage", nargs="?", help="a stage name (from `recipe plugins`)")
    p.set_defaults(handler=run)


def run(args) -> int:
    host = host_or_exit()
    if args.stage is None:
        dump_json(combined_schema(host.stage_schemas()))
        return EXIT_OK
    if args.stage not in host.stages:
        raise CommandError(
            f"no installed plugin provides stage '{args.stage}'{did_you_mean(args.stage, host.stages)}; "
            f"installed: {', '.join(sorted(host.stages)) or 'none'}"
        )
    dump_json(host.stage(args.stage).schema)
    return EXIT_OK
