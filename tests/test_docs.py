"""The README and docs/ stay true: listings are the files they show, snippets run, commands parse,
links resolve, and the built-in plugins they name are the ones pyproject.toml registers.

In docs/, a fenced block preceded by ``<!-- guide-check: same-as PATH -->`` must equal
the file PATH (relative to the repository root); ``<!-- guide-check: run-as NAME.py -->``
is written to NAME.py in a scratch folder; ``<!-- guide-check: run -->`` is run there
with Python (after every run-as block is written), and must succeed.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from compose.cli.main import DESCRIPTION, build_parser
from compose.testing import HANG_S

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"<!-- guide-check: (same-as|run-as|run) ?(\S*) -->\n```[a-z]*\n(.*?)```\n", re.S)
FENCE = re.compile(r"```(\w*)\n(.*?)```", re.S)
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")


def blocks(kind: str) -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        found += [(arg, body) for k, arg, body in BLOCK.findall(page.read_text(encoding="utf-8")) if k == kind]
    return found


def built_in_plugins() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return set(project["project"]["entry-points"]["recipe_compose"])


def commands() -> list[tuple[str, str]]:
    """(page, command line) of every `recipe ...` command in a shell block or a code span of the README and docs."""
    found = []
    for page in PAGES:
        for language, body in FENCE.findall(page.read_text(encoding="utf-8")):
            if language not in ("bash", "sh", "console"):
                continue
            for line in body.replace("\\\n", " ").splitlines():
                line = line.split(" #")[0].strip().removeprefix("$ ")
                for part in re.split(r"&&|;|\|", line):
                    part = part.strip()
                    if re.match(r"(\S*/)?recipe(\s|$)", part):
                        found.append((page.relative_to(ROOT).as_posix(), part))
        for span in re.findall(r"`((?:\.venv/bin/)?recipe [^`]+)`", page.read_text(encoding="utf-8")):
            if not re.search(r"\[|\b[A-Z]{2,}\b|\.\.\.|\|", span):  # a synopsis (RECIPE, [options]), not a command
                found.append((page.relative_to(ROOT).as_posix(), span))
    return found


def test_the_docs_have_checked_blocks():
    assert len(blocks("same-as")) == 3 and blocks("run-as") and blocks("run")


@pytest.mark.parametrize("path, body", blocks("same-as"), ids=[p for p, _ in blocks("same-as")])
def test_listings_are_the_example_files_word_for_word(path, body):
    assert body == (ROOT / path).read_text(encoding="utf-8")


def test_the_snippets_run(tmp_path):
    for name, body in blocks("run-as"):
        (tmp_path / name).write_text(body, encoding="utf-8")
    for index, (_, body) in enumerate(blocks("run")):
        script = tmp_path / f"snippet_{index}.py"
        script.write_text(body, encoding="utf-8")
        done = subprocess.run(
            [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=HANG_S
        )
        assert done.returncode == 0, f"snippet {index} failed:\n{body}\n{done.stderr[-3000:]}"


def test_every_recipe_command_shown_parses_and_names_files_that_exist():
    shown = commands()
    assert len(shown) >= 10  # the README's two commands and the docs' examples, not an empty scan
    parser = build_parser()
    subcommands = parser._subparsers._group_actions[0].choices
    for page, line in shown:
        words = shlex.split(line.split(" > ")[0])[1:]
        if words in (["--help"], ["-h"], ["--version"]):
            continue
        if words and words[0] in subcommands and all(w.startswith("-") for w in words[1:]):
            # prose naming a subcommand and its options: `recipe plan`, `recipe apply --json`
            options = subcommands[words[0]]._option_string_actions
            assert all(w in options for w in words[1:]), f"{page}: `{line}`: no such option of recipe {words[0]}"
            continue
        if len(words) == 1 and not words[0].startswith("-"):
            raise AssertionError(f"{page}: `{line}` names no subcommand of recipe")
        try:
            args, extra = parser.parse_known_args(words)
        except SystemExit as exc:
            raise AssertionError(f"{page}: `{line}` does not parse") from exc
        assert all("=" in e or e.startswith("~") for e in extra), f"{page}: `{line}`: unknown options {extra}"
        for word in words:
            if word.startswith("recipes/") and word.endswith(".yaml"):
                assert (ROOT / word).is_file(), f"{page}: `{line}` names {word}, which does not exist"


def test_bench_scripts_named_exist():
    for page in PAGES:
        for script in re.findall(r"bench/[\w/.-]+\.(?:py|sh)", page.read_text(encoding="utf-8")):
            assert (ROOT / script).is_file(), f"{page.relative_to(ROOT)} names {script}, which does not exist"


def test_relative_links_resolve():
    for page in PAGES:
        for target, _ in LINK.findall(page.read_text(encoding="utf-8")):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to {target}, which does not exist"


def test_the_built_in_plugins_named_are_the_registered_ones():
    registered = built_in_plugins()
    assert registered == {
        "train",
        "distill",
        "prune-heads",
        "prune-ffn",
        "prune-vocab",
        "qad",
        "gptq",
        "export",
        "amp",
        "checkpointing",
        "parallel",
    }
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    plugins_section = readme.split("## Plugins", 1)[1].split("\n## ", 1)[0]
    tutorial = (ROOT / "docs" / "plugins" / "tutorial.md").read_text(encoding="utf-8").split("\n## ", 1)[0]
    for where, text in (("README.md's Plugins section", plugins_section), ("docs/plugins/tutorial.md", tutorial)):
        named = set(re.findall(r"`([a-z-]+)`", text)) & (registered | {"magnitude-prune", "compose_training"})
        assert registered <= named, f"{where} does not name {sorted(registered - named)}"
    stages = {name for name in registered if name not in ("amp", "checkpointing", "parallel")}
    assert all(name in DESCRIPTION for name in stages), "recipe --help does not name every built-in stage"


def test_the_readme_stays_a_front_door():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250
    for stale in ("now ends with", "now also", "the issue's", "over 500"):
        for page in PAGES:
            assert stale not in page.read_text(encoding="utf-8"), f"{page.relative_to(ROOT)}: stale wording {stale!r}"
