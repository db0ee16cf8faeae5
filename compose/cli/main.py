"""The `recipe` command."""

from __future__ import annotations

import argparse
import os
import sys

from compose import __version__
from compose.cli import apply, compare, plan, plugins, schema, tune, validate, verify
from compose.cli._common import CommandError, stderr
from compose.errors import file_fault_message, os_error_in
from compose.exit_codes import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_STAGE_FAILED, help_text
from compose.quiet import VERBOSE_ENV, quiet_libraries

DESCRIPTION = """\
recipe-compose: declarative 'train large, then compress' recipes for transformers.

A recipe (YAML) names a model, a task with its data and metric, and an ordered list
of stages (train, distill, prune-heads, prune-ffn, prune-vocab, qad, gptq, export, or a third-party
plugin's; `recipe plugins` lists them). `apply`
validates the whole recipe first, then runs the stages in order and, after each,
reports the metric, the metric retained against the baseline, parameters, size
on disk, batch-1 latency and throughput (x faster, x smaller than the baseline)
and time.
"""

EPILOG = f"""\
start here:
  recipe plugins                              what stages are installed
  recipe validate recipes/minilm-sst2.yaml    check a recipe, run nothing
  recipe plan recipes/minilm-sst2.yaml        the recipe with every default, stage by stage
  recipe apply recipes/minilm-sst2.yaml       run it
  recipe tune RECIPE                          search its search: space for the best pipeline that keeps the accuracy
  recipe compare runs/a runs/b                two finished runs side by side, and a plot
  recipe verify runs/minilm-sst2              check a run folder's files against their recorded hashes

exit codes:
{help_text()}

environment:
  RECIPE_COMPOSE_PLUGINS  comma-separated plugin names to load (empty: none)
  RECIPE_COMPOSE_DEBUG=1  show Python tracebacks for failures
  RECIPE_COMPOSE_VERBOSE=1  as -v: the libraries print their own logs and bars
  RECIPE_COMPOSE_PAUSE_AT, RECIPE_COMPOSE_PAUSE_FILE  pause a run at named points (tests; see README)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recipe",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"recipe-compose {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="let the libraries (transformers, ONNX Runtime, GPTQModel...) print their own logs and bars, "
        "which recipe-compose otherwise keeps off the terminal",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (apply, tune, validate, plan, plugins, schema, compare, verify):
        module.add_parser(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Overrides (key=value, ~key) may also come after options: `recipe apply r.yaml -q a.b=1`.
    target = "overrides" if hasattr(args, "overrides") else "recipes" if hasattr(args, "recipes") else None
    if extra and target and all("=" in e or e.startswith("~") for e in extra):
        getattr(args, target).extend(extra)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    if args.verbose:
        os.environ[VERBOSE_ENV] = "1"  # inherited by every process of the run
    if args.command in ("apply", "tune"):
        quiet_libraries()
    try:
        return args.handler(args)
    except CommandError as exc:
        stderr.print("[red]error:[/] ", end="")
        stderr.print(str(exc), markup=False, soft_wrap=True)
        return exc.code
    except KeyboardInterrupt:
        stderr.print("[yellow]interrupted[/]")
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - a bug of ours: say so briefly unless debugging
        found = os_error_in(exc)
        message = file_fault_message(found) if found is not None else None
        if message is not None:  # the machine's fault (a full disk, a read-only folder ...), not ours
            stderr.print("[red]error:[/] ", end="")
            stderr.print(message, markup=False, soft_wrap=True)
            return EXIT_STAGE_FAILED
        if os.environ.get("RECIPE_COMPOSE_DEBUG"):
            raise
        stderr.print("[red]internal error:[/] ", end="")
        stderr.print(
            f"{type(exc).__name__}: {exc}\n(set RECIPE_COMPOSE_DEBUG=1 for the traceback, and please report it)",
            markup=False,
            soft_wrap=True,
        )
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
