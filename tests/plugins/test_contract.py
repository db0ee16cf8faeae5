"""The built-in plugins reach the core only as a third party would: through ``compose.api`` and ``compose.hookimpl``.

The example third-party plugin is held to the same rule, and its tests to the public
testing module besides. A core module a plugin imported directly would be a private
contract nothing keeps: these tests fail on the first such import, naming its line.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILT_IN = ROOT / "plugins"
EXAMPLE = ROOT / "tests" / "plugin_example"

#: What a plugin may import from the core: module -> the names it may take from it (None: any).
PLUGIN_API = {"compose": {"hookimpl"}, "compose.api": None}
#: What a plugin's tests may import besides.
TESTING_API = {**PLUGIN_API, "compose.testing": None}


def core_imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) of every import of ``compose`` or a ``compose.*`` module outside compose.plugins."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
    return [
        (line, module, names)
        for line, module, names in found
        if (module == "compose" or module.startswith("compose.")) and not module.startswith("compose.plugins")
    ]


def violations(paths, allowed, root=ROOT) -> list[str]:
    problems = []
    for path in paths:
        for line, module, names in core_imports(path):
            permitted = allowed.get(module, ())
            if permitted is None:
                continue
            where = f"{path.relative_to(root)}:{line}"
            if not names:
                problems.append(f"{where}: imports {module}")
            elif extra := [name for name in names if name not in permitted]:
                problems.append(f"{where}: imports {', '.join(extra)} from {module}")
    return problems


def test_built_in_plugins_import_only_the_plugin_api():
    paths = sorted(BUILT_IN.rglob("*.py"))
    assert len(paths) > 30  # every package of the tree, not an empty glob
    assert violations(paths, PLUGIN_API) == []


def test_the_example_plugin_and_its_tests_use_only_public_names():
    plugin = sorted((EXAMPLE / "recipe_compose_magnitude").glob("*.py"))
    tests = sorted((EXAMPLE / "tests").glob("*.py"))
    assert plugin and tests
    assert violations(plugin, PLUGIN_API) == []
    assert violations(tests, TESTING_API) == []


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from compose.api import StageType\nfrom compose import hookimpl\n", []),
        ("from compose.run.training import train_model\n", ["x.py:1: imports train_model from compose.run.training"]),
        ("from compose import atomic\n", ["x.py:1: imports atomic from compose"]),
        ("import compose.recipe.load\n", ["x.py:1: imports compose.recipe.load"]),
        ("def f():\n    from compose.errors import RecipeError\n", ["x.py:2: imports RecipeError from compose.errors"]),
    ],
)
def test_the_check_finds_every_kind_of_core_import(tmp_path, source, expected):
    (tmp_path / "x.py").write_text(source, encoding="utf-8")
    assert violations([tmp_path / "x.py"], PLUGIN_API, root=tmp_path) == expected
