"""What the subcommands share: the plugin host, and printing problems."""

from __future__ import annotations

import json
import sys

from rich.console import Console

from compose.errors import PluginError, Problem
from compose.exit_codes import EXIT_INVALID

stderr = Console(stderr=True, highlight=False)


class CommandError(Exception):
    """Ends a subcommand with a message and an exit code."""

    def __init__(self, message: str, code: int = EXIT_INVALID):
        self.code = code
        super().__init__(message)


def host_or_exit():
    from compose.plugin_host import create_host

    try:
        return create_host()
    except PluginError as exc:
        raise CommandError(f"plugin error: {exc}") from None


def print_problems(problems: list[Problem], *, as_json: bool = False) -> None:
    if as_json:
        return
    for p in problems:
        style = "red" if p.severity == "error" else "yellow"
        stderr.print(f"[{style}]{p.severity}[/]: ", end="")
        stderr.print(p.format(), markup=False, soft_wrap=True)


def dump_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
