"""docs/plugins.md stays true: its listings are the example package's files, its snippets run.

A fenced block preceded by ``<!-- guide-check: same-as PATH -->`` must equal the file
PATH (relative to the repository root); ``<!-- guide-check: run-as NAME.py -->`` is
written to NAME.py in a scratch folder; ``<!-- guide-check: run -->`` is run there
with Python (after every run-as block is written), and must succeed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "plugins.md"
BLOCK = re.compile(r"<!-- guide-check: (same-as|run-as|run) ?(\S*) -->\n```[a-z]*\n(.*?)```\n", re.S)


def blocks(kind: str) -> list[tuple[str, str]]:
    return [(arg, body) for k, arg, body in BLOCK.findall(GUIDE.read_text(encoding="utf-8")) if k == kind]


def test_the_guide_has_checked_blocks():
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
        done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=3600)
        assert done.returncode == 0, f"snippet {index} failed:\n{body}\n{done.stderr[-3000:]}"
