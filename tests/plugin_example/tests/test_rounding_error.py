"""The rounding-error stage: a third-party stage that reads a later stage's declared quantization through compose.api.

Self-contained like test_magnitude.py: it runs from this package's folder as well as in
recipe-compose's suite.
"""

from __future__ import annotations

import json

import pytest
import torch

from compose.testing import run_recipe
from recipe_compose_magnitude.rounding_error import rounded

FINETUNE = (
    "  - {name: finetune, uses: train, with: {max_steps: 4, batch_size: 16, learning_rate: 3.0e-3, "
    "eval_every_epoch: false}}\n"
)


@pytest.mark.parametrize(("bits", "group_size"), [(8, -1), (8, 0), (4, 16)])
def test_the_grid_has_the_declared_levels(bits, group_size):
    torch.manual_seed(0)
    weight = torch.randn(8, 48)
    q = rounded(weight, bits, group_size)
    groups = q.reshape(-1) if group_size == 0 else q.reshape(8, -1, 48 if group_size == -1 else group_size)
    top = 2 ** (bits - 1) - 1
    for group in groups.reshape(-1, groups.shape[-1]) if group_size else [groups]:
        scale = group.abs().max() / top
        assert torch.allclose(group / scale, torch.round(group / scale), atol=1e-4)
    assert (q - weight).abs().max() > 0


@pytest.mark.parametrize(
    ("export", "bits", "group_size"),
    [("{weights: int8, per_channel: true}", 8, -1), ("{weights: int4, block_size: 16}", 4, 16)],
    ids=["int8 per channel", "4-bit blocks"],
)
def test_it_measures_against_the_scheme_the_export_declares(
    tmp_path, monkeypatch, example_recipe, export, bits, group_size
):
    stages = "  - {name: check, uses: rounding-error}\n" + f"  - {{name: deploy, uses: export, with: {export}}}\n"
    recipe = example_recipe(FINETUNE + stages)
    monkeypatch.setenv("RECIPE_COMPOSE_PLUGINS", "train,export,rounding-error")
    assert run_recipe("apply", str(recipe), "--quiet") == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    details = {row["name"]: row for row in report["stages"]}["check"]["details"]
    assert details["target"] == "deploy" and details["runtime"] == "onnxruntime"
    assert details["weights"] == {"bits": bits, "group_size": group_size, "symmetric": True}
    assert details["layers"] == 2 * 6  # q, k, v, attention output, intermediate, output per layer
    assert 0 < details["mean_relative_error"] < (0.05 if bits == 8 else 0.4)


def test_without_a_quantizing_stage_after_it_the_recipe_is_refused(monkeypatch, capsys, example_recipe):
    recipe = example_recipe(FINETUNE + "  - {name: check, uses: rounding-error}\n")
    monkeypatch.setenv("RECIPE_COMPOSE_PLUGINS", "train,export,rounding-error")
    assert run_recipe("validate", str(recipe)) == 2
    assert "no later stage declares one" in capsys.readouterr().err
