"""`recipe validate` stays light: it reads the recipe and the data, and does not import torch."""

import subprocess
import sys
from pathlib import Path

from compose.testing import HANG_S

ROOT = Path(__file__).resolve().parents[3]

PROBE = """
import sys
from compose.cli.main import main
code = main(["validate", "recipes/minilm-sst2.yaml"])
heavy = sorted(name for name in ("torch", "transformers", "accelerate") if name in sys.modules)
print("heavy:", ",".join(heavy) or "none")
sys.exit(code)
"""


def test_validation_with_every_installed_plugin_does_not_import_torch():
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=HANG_S)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "heavy: none" in done.stdout, done.stdout
