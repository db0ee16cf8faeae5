"""compose.testing, the plugin author's testing module: a host with one plugin, settings as a recipe gives them."""

import pytest

from compose import hookimpl
from compose.api import StageResult, StageType
from compose.errors import PluginError
from compose.testing import plugin_host, stage_context, stage_settings

SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "ratio": {"type": "number", "default": 0.5},
        "inner": {"type": "object", "default": {}, "properties": {"depth": {"type": "integer", "default": 2}}},
    },
}


class Plugin:
    @hookimpl
    def compose_register_stages(self, register):
        register(
            StageType(
                name="halve",
                run=lambda ctx: StageResult(model=ctx.model),
                schema=SCHEMA,
                description="a stage for the test",
            )
        )


def test_the_host_holds_only_the_given_plugin():
    host = plugin_host(Plugin())
    assert set(host.stages) == {"halve"}


def test_settings_get_every_default_a_recipe_would_get_nested_ones_too():
    host = plugin_host(Plugin())
    assert stage_settings(host, "halve") == {"ratio": 0.5, "inner": {"depth": 2}}
    assert stage_settings(host, "halve", inner={"depth": 5}) == {"ratio": 0.5, "inner": {"depth": 5}}


def test_a_context_runs_the_stage_on_the_cpu():
    host = plugin_host(Plugin())
    ctx = stage_context(host, "halve", model="a model", settings={"ratio": 0.25})
    assert ctx.settings["ratio"] == 0.25 and ctx.device.type == "cpu" and ctx.plugin_host is host
    assert host.stage("halve").run(ctx).model == "a model"


def test_a_plugin_with_an_invalid_schema_is_refused_as_at_install():
    class Broken:
        @hookimpl
        def compose_register_stages(self, register):
            register(StageType(name="bad", run=None, schema={"type": "integr"}, description="x"))

    with pytest.raises(PluginError, match="invalid settings schema"):
        plugin_host(Broken())
