"""Every recipe shipped in recipes/ is valid and says what it does and how to run it.

Discovered, not listed: a new recipe is checked the day it is added.
"""

from pathlib import Path

import pytest

from compose.recipe.load import load_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))


def test_there_are_recipes():
    assert RECIPES


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(ROOT / "recipes")) for p in RECIPES])
def test_recipe_header_and_validity(path, host):
    command = f"recipe apply {path.relative_to(ROOT).as_posix()}"
    lines = path.read_text(encoding="utf-8").splitlines()
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(line)
    assert len(header) >= 2, f"{path.name} must start with comments saying what it does"
    assert any(command in line for line in header), f"{path.name}'s header must give the exact command: {command}"
    load_recipe(path, host=host)  # raises RecipeError with every problem
