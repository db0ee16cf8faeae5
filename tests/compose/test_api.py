"""compose.api: every public name resolves, and loading it (as validation loads every plugin) imports no torch."""

import subprocess
import sys

import pytest

import compose.api as api
from compose.testing import HANG_S


def test_every_exported_name_resolves():
    assert len(api.__all__) >= 25
    for name in api.__all__:
        assert getattr(api, name) is not None, name


def test_the_lazy_names_are_the_core_objects():
    from compose.evaluation.evaluator import Evaluation, evaluate
    from compose.tasks import Task

    assert (api.Evaluation, api.evaluate, api.Task) == (Evaluation, evaluate, Task)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'train'"):
        api.train  # noqa: B018


def test_importing_the_api_imports_no_torch():
    code = "import sys, compose.api; assert 'torch' not in sys.modules, 'torch was imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_S)
    assert done.returncode == 0, done.stderr


def test_the_shared_training_reference_is_the_one_the_schemas_use():
    from compose.recipe.schema import SHARED_REFS

    assert api.TRAINING_SETTINGS_REF in SHARED_REFS
