"""recipe plugins: list the installed stage plugins."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from compose.cli._common import dump_json, host_or_exit
from compose.exit_codes import EXIT_OK

HELP = "list installed plugins and the stages they provide"
EXAMPLE = """\
example:
  recipe plugins
  recipe plugins --json
  RECIPE_COMPOSE_PLUGINS=train,gptq recipe plugins     # load only these plugins

Plugins are found through the `recipe_compose` entry-point group (built-ins too).
RECIPE_COMPOSE_PLUGINS: a comma-separated list of plugin names to load; set but
empty, no plugin is loaded.
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "plugins", help=HELP, description=HELP, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.set_defaults(handler=run)


def listing(host) -> list[dict]:
    out = []
    for name, info in sorted(host.plugins.items()):
        stages = sorted(s for s, reg in host.stages.items() if reg.plugin.name == name)
        out.append(
            {
                "name": info.name,
                "package": info.package,
                "version": info.version,
                "module": info.module,
                "stages": [
                    {"name": s, "description": host.stage(s).description, "families": list(host.stage(s).families)}
                    for s in stages
                ],
                "training_settings": [
                    {"name": n, "description": r.extension.description}
                    for n, r in sorted(host.training_extensions.items())
                    if r.plugin.name == name
                ],
            }
        )
    return out


def run(args) -> int:
    host = host_or_exit()
    plugins = listing(host)
    if args.json:
        dump_json({"plugins": plugins})
        return EXIT_OK
    table = Table(title="installed recipe-compose plugins", title_justify="left")
    for column in ("plugin", "package", "version", "provides", "description"):
        table.add_column(column)
    for p in plugins:
        provided = [(f"stage {s['name']}", s["description"]) for s in p["stages"]]
        provided += [(f"training setting {t['name']}:", t["description"]) for t in p["training_settings"]]
        for i, (what, description) in enumerate(provided or [("-", "")]):
            first = i == 0
            table.add_row(
                p["name"] if first else "",
                p["package"] if first else "",
                p["version"] if first else "",
                what,
                description,
            )
    Console().print(table)
    return EXIT_OK
