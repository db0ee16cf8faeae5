"""The built-in plugins reach the core only as a third party would: through ``compose.api`` and ``compose.hookimpl``.

Nor does one built-in plugin reach into another: a module of ``compose.plugins.X`` imports
only its own package ``X`` and the shared library ``compose.plugins.shared`` (which imports
only itself); what one stage learns of another goes through ``compose.api``. The example
third-party plugin is held to the same rules, and its tests to the public testing module
besides. A private module imported across that line would be a contract nothing keeps:
these tests fail on the first such import, naming its line.
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
#: The library package every plugin may import; it declares no stage.
SHARED = "compose.plugins.shared"


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
    return found


def own_package(path: Path, plugins_root: Path) -> str:
    """``compose.plugins.X`` for a module under ``plugins_root/X/``."""
    return "compose.plugins." + path.relative_to(plugins_root).parts[0]


def cross_plugin_imports(paths, plugins_root: Path = BUILT_IN, root: Path = ROOT) -> list[str]:
    """Imports of another built-in plugin's modules: anything under ``compose.plugins`` other than the
    module's own package and the shared library (a module of the shared library: only the library)."""
    problems = []
    for path in paths:
        own = own_package(path, plugins_root)
        allowed = (own,) if own == SHARED else (own, SHARED)
        for line, module, names in _imports(path):
            targets = [module] if module != "compose.plugins" else [f"compose.plugins.{name}" for name in names]
            for target in targets:
                if not target.startswith("compose.plugins."):
                    continue
                if not any(target == ok or target.startswith(ok + ".") for ok in allowed):
                    problems.append(f"{path.relative_to(root)}:{line}: imports {target} (another plugin's module)")
    return problems


def core_imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) of every import of ``compose`` or a ``compose.*`` module outside compose.plugins."""
    return [
        (line, module, names)
        for line, module, names in _imports(path)
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


def test_no_built_in_plugin_imports_another_plugins_modules():
    paths = [path for path in sorted(BUILT_IN.rglob("*.py")) if path.parent != BUILT_IN]
    assert {own_package(path, BUILT_IN) for path in paths} >= {"compose.plugins.qad", SHARED}
    assert cross_plugin_imports(paths) == []


@pytest.mark.parametrize(
    "where, source, expected",
    [
        # what qad/stage.py imported before the contract had a quantization declaration
        (
            "qad/stage.py",
            "def run(ctx):\n    from compose.plugins.export.stage import SIMULATED_EXPORT\n",
            ["compose.plugins.export.stage"],
        ),
        (
            "qad/stage.py",
            "from compose.plugins.distill.loss import DistillationLoss\n",
            ["compose.plugins.distill.loss"],
        ),
        ("qad/fake_quant.py", "from compose.plugins import gptq\n", ["compose.plugins.gptq"]),
        ("shared/distillation/loss.py", "from compose.plugins.distill import stage\n", ["compose.plugins.distill"]),
        (
            "qad/stage.py",
            "from compose.plugins.qad.scheme import scheme_of\nfrom compose.plugins.shared.distillation.loss import DistillationLoss\n",
            [],
        ),
    ],
    ids=[
        "lazy import of export",
        "distill's loss",
        "a sibling package",
        "the library importing a plugin",
        "own package and library",
    ],
)
def test_the_check_finds_imports_across_plugins(tmp_path, where, source, expected):
    path = tmp_path / "plugins" / where
    path.parent.mkdir(parents=True)
    path.write_text(source, encoding="utf-8")
    found = cross_plugin_imports([path], tmp_path / "plugins", tmp_path)
    assert [problem.split(": imports ")[1].split(" ")[0] for problem in found] == expected


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
