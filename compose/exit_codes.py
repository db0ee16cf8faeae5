"""The exit codes of ``recipe``, defined once: the CLI, the report and the help text read them here."""

from __future__ import annotations

EXIT_OK = 0
EXIT_GATE_FAILED = 1
EXIT_INVALID = 2
EXIT_STAGE_FAILED = 3
EXIT_INTERNAL = 4
EXIT_INTERRUPTED = 130

#: (code, meaning) for ``--help``, the README and the tests that keep them in step.
MEANINGS = (
    (EXIT_OK, "success (every stage ran and every gate passed)"),
    (EXIT_GATE_FAILED, "a gate failed (the report is written; stages after the failing gate did not run)"),
    (
        EXIT_INVALID,
        "the recipe is invalid, a plugin failed to load, or the run folder cannot be used "
        "(nothing ran, nothing was written)",
    ),
    (
        EXIT_STAGE_FAILED,
        "a stage failed at run time, or the machine refused a file operation (the message names "
        "the path and the fix; earlier stages' artifacts are kept)",
    ),
    (EXIT_INTERNAL, "an internal error of recipe-compose (a bug: set RECIPE_COMPOSE_DEBUG=1 and report it)"),
    (EXIT_INTERRUPTED, "interrupted by SIGINT/SIGTERM (finished stages are kept; apply again to resume)"),
)


def help_text(indent: str = "  ") -> str:
    """The exit codes as lines for a ``--help`` epilog."""
    return "\n".join(f"{indent}{code:<3} {meaning}" for code, meaning in MEANINGS)
