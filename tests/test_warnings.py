"""Upgrades fail loudly: a deprecation that our own code triggers is an error in the suite, a library's
internal one is not (pyproject.toml's filterwarnings), and the CLI hides only the libraries' own."""

from __future__ import annotations

import warnings

import pytest

from compose.quiet import quiet_libraries


def warn_from(module: str, category, stacklevel: int = 1) -> None:
    """Raise ``category`` from code that runs as module ``module`` (as a call in that module would)."""
    code = f"import warnings\nwarnings.warn('old API', {category.__name__}, stacklevel={stacklevel})\n"
    exec(compile(code, f"<{module}>", "exec"), {"__name__": module})


@pytest.mark.parametrize("category", [DeprecationWarning, FutureWarning])
@pytest.mark.parametrize("module", ["compose.tune.study", "compose.plugins.qad.stage"])
def test_a_deprecation_raised_by_a_call_in_our_code_fails_the_suite(module, category):
    with pytest.raises(category, match="old API"):
        warn_from(module, category)


def test_optunas_deprecations_of_its_arguments_fail_it_too():
    """Optuna attributes a deprecated argument's warning to itself (as NSGAIISampler's constraints_func did)."""
    with pytest.raises(FutureWarning):
        warn_from("optuna.samplers.nsgaii._sampler", FutureWarning)


def test_a_librarys_internal_deprecation_does_not():
    with warnings.catch_warnings(record=True) as caught:  # the suite's own filters stay in force
        warn_from("transformers.modeling_utils", FutureWarning)
    assert [type(w.message) for w in caught] == [FutureWarning]


def test_the_cli_silences_the_libraries_own_deprecations_but_not_those_our_calls_trigger(monkeypatch):
    monkeypatch.delenv("RECIPE_COMPOSE_VERBOSE", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_libraries()
        warn_from("transformers.modeling_utils", FutureWarning)
        warn_from("compose.tune.study", FutureWarning)
    assert [str(w.message) for w in caught] == ["old API"]
    assert caught[0].filename == "<compose.tune.study>"
