"""The code style is checked, not hoped for: ruff's linter and formatter (configured in pyproject.toml) pass."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from compose.testing import HANG_S

ROOT = Path(__file__).resolve().parents[1]
RUFF = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")


@pytest.mark.parametrize("command", [["check", "."], ["format", "--check", "."]], ids=["lint", "format"])
def test_ruff_passes(command):
    assert RUFF, "ruff is not installed: `pip install -e '.[test]'` installs it"
    done = subprocess.run([RUFF, *command], cwd=ROOT, capture_output=True, text=True, timeout=HANG_S)
    assert done.returncode == 0, f"ruff {' '.join(command)}:\n{done.stdout[-4000:]}{done.stderr[-2000:]}"
