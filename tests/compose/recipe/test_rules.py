"""Rules between stages come from declared facts, not from plugins testing each other's names."""

from types import SimpleNamespace

import pytest

from compose import hookimpl
from compose.errors import RecipeError
from compose.plugin_host import create_host
from compose.recipe.load import load_recipe
from compose.run.training import train_model
from compose.stage import StageType


class Reshaper:
    """A third-party stage that changes the model's structure, declared only through facts."""

    @hookimpl
    def compose_register_stages(self, register):
        register(
            StageType(
                "reshape",
                lambda ctx: None,
                {"type": "object"},
                "restructures the layers",
                needs={"task_trained": True},
                leaves={"structure_changed": True},
                compresses=True,
            )
        )


@pytest.fixture
def host_with_reshaper():
    host = create_host()
    host.register(Reshaper())
    return host


def test_distilling_from_a_restructured_teachers_layers_is_refused_by_fact(write_recipe, host_with_reshaper):
    stages = (
        "- {name: ft, uses: train, with: {max_steps: 1}}\n"
        "- {name: squeeze, uses: reshape}\n"
        "- {name: distill, uses: distill, with: {student: {from_teacher: {layers: [0]}}, training: {max_steps: 1}}}\n"
    )
    with pytest.raises(RecipeError) as info:
        load_recipe(write_recipe(stages), (), host_with_reshaper)
    [problem] = info.value.problems
    assert "$.stages[2].with.student.from_teacher" in problem.path
    assert "stage 'squeeze' before it changes their structure; put distill before 'squeeze'" in problem.message


def test_distilling_before_the_restructuring_stage_is_fine(write_recipe, host_with_reshaper):
    stages = (
        "- {name: ft, uses: train, with: {max_steps: 1}}\n"
        "- {name: distill, uses: distill, with: {student: {from_teacher: {layers: [0]}}, training: {max_steps: 1}}}\n"
        "- {name: squeeze, uses: reshape}\n"
    )
    load_recipe(write_recipe(stages), (), host_with_reshaper)


def test_a_stage_that_did_not_declare_trains_may_not_run_the_training_loop(host_with_reshaper):
    ctx = SimpleNamespace(plugin="reshape", plugin_host=host_with_reshaper, name="squeeze")
    with pytest.raises(TypeError, match="registered with trains=False; register it with StageType"):
        train_model(ctx)
