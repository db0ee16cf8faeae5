"""The plugin host: loading plugins through entry points, and the errors a plugin author sees.

Entry-point loading is tested for real: each test writes a fake installed
distribution (a ``*.dist-info`` folder with METADATA and entry_points.txt, plus
the plugin module) into tmp_path and puts it on sys.path, where
importlib.metadata finds it as it finds any installed package.
"""

from __future__ import annotations

import sys
import textwrap

import pytest

from compose import hookimpl
from compose.api import StageType
from compose.cli.main import main
from compose.errors import PluginError
from compose.plugin_host import ENV_PLUGINS, PluginHost, PluginInfo, create_host

OBJECT = {"type": "object", "additionalProperties": False, "properties": {}}


def fake_distribution(root, monkeypatch, package: str, version: str, entry_points: dict, modules: dict):
    """Install (on sys.path) a distribution named ``package`` with entry points in the recipe_compose group."""
    info = root / f"{package.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n")
    lines = "".join(f"{name} = {module}\n" for name, module in entry_points.items())
    (info / "entry_points.txt").write_text("[recipe_compose]\n" + lines)
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))
        monkeypatch.delitem(sys.modules, module, raising=False)  # and again at teardown
    monkeypatch.syspath_prepend(str(root))


@pytest.fixture
def host():
    """A bare host; every plugin a test registers is unregistered afterwards."""
    host = PluginHost()
    yield host
    for name in list(host.plugins):
        host.unregister(name)
    assert not host.stages and not host.pm.get_plugins()


def stage_plugin(stage_name: str, schema=OBJECT, **fields):
    class Plugin:
        @hookimpl
        def compose_register_stages(self, register):
            register(StageType(name=stage_name, run=lambda ctx: None, schema=schema, description="test", **fields))

    return Plugin()


# -- loading through entry points --------------------------------------------------


def test_a_plugin_whose_import_fails_is_reported_with_its_name_and_package(tmp_path, monkeypatch):
    fake_distribution(
        tmp_path,
        monkeypatch,
        "acme-sparsify",
        "1.2.0",
        {"sparsify": "acme_sparsify_plugin"},
        {"acme_sparsify_plugin": "import acme_native_kernels_that_are_not_installed\n"},
    )
    with pytest.raises(PluginError) as caught:
        PluginHost().load_entry_points(only={"sparsify"})
    message = str(caught.value)
    assert message.startswith(
        'Error importing plugin "sparsify" (package acme-sparsify 1.2.0) from acme_sparsify_plugin'
    )
    assert "ModuleNotFoundError: No module named 'acme_native_kernels_that_are_not_installed'" in message
    assert f"set {ENV_PLUGINS}" in message
    assert isinstance(caught.value.__cause__, ImportError)  # the traceback is kept


def test_the_cli_exits_2_on_a_broken_plugin_and_the_env_variable_works_around_it(tmp_path, monkeypatch, capsys):
    fake_distribution(
        tmp_path,
        monkeypatch,
        "acme-broken",
        "0.3",
        {"broken": "acme_broken_plugin"},
        {"acme_broken_plugin": "raise ImportError('acme-broken needs libfoo 2')\n"},
    )
    monkeypatch.setenv(ENV_PLUGINS, "broken,train")
    assert main(["plugins"]) == 2
    err = capsys.readouterr().err
    assert 'plugin error: Error importing plugin "broken" (package acme-broken 0.3)' in err
    assert "ImportError: acme-broken needs libfoo 2" in err
    monkeypatch.setenv(ENV_PLUGINS, "train")
    assert main(["plugins", "--json"]) == 0
    assert '"name": "broken"' not in capsys.readouterr().out


def test_plugins_loaded_from_entry_points_carry_their_package_and_version(tmp_path, monkeypatch):
    fake_distribution(
        tmp_path,
        monkeypatch,
        "acme-noop",
        "4.5.6",
        {"acme-noop": "acme_noop_plugin"},
        {
            "acme_noop_plugin": """\
                          from compose import hookimpl
                          from compose.api import StageType

                          @hookimpl
                          def compose_register_stages(register):
                              register(StageType(name="noop", run=lambda ctx: None, description="does nothing",
                                                 schema={"type": "object", "additionalProperties": False}))
                          """
        },
    )
    host = PluginHost()
    host.load_entry_points(only={"acme-noop"})
    assert host.plugins["acme-noop"] == PluginInfo("acme-noop", "acme-noop", "4.5.6", "acme_noop_plugin")
    assert host.stages["noop"].plugin.package == "acme-noop"
    host.unregister("acme-noop")
    assert "noop" not in host.stages


def test_an_invalid_settings_schema_names_the_plugin_its_package_and_where(tmp_path, monkeypatch):
    fake_distribution(
        tmp_path,
        monkeypatch,
        "acme-typo",
        "0.1.0",
        {"typo": "acme_typo_plugin"},
        {
            "acme_typo_plugin": """\
                          from compose import hookimpl
                          from compose.api import StageType

                          SCHEMA = {"type": "object", "properties": {"bits": {"type": "integr", "default": 4}}}

                          @hookimpl
                          def compose_register_stages(register):
                              register(StageType(name="typo-stage", run=lambda ctx: None, schema=SCHEMA,
                                                 description="a stage with a broken schema"))
                          """
        },
    )
    with pytest.raises(PluginError) as caught:
        PluginHost().load_entry_points(only={"typo"})
    assert str(caught.value) == (
        "plugin \"typo\" (package acme-typo 0.1.0): stage 'typo-stage' declares an invalid settings schema "
        "at properties/bits/type: 'integr' is not valid under any of the given schemas"
    )


# -- RECIPE_COMPOSE_PLUGINS ------------------------------------------------------


def test_the_env_variable_limits_loading_to_the_named_plugins(monkeypatch):
    monkeypatch.setenv(ENV_PLUGINS, " train , magnitude ")
    host = create_host()
    assert set(host.plugins) == {"train", "magnitude"}
    assert {"train", "magnitude-prune"} <= set(host.stages)
    assert all(reg.plugin.name in {"train", "magnitude"} for reg in host.stages.values())


def test_the_env_variable_set_but_empty_loads_no_plugin(monkeypatch, tmp_path, capsys):
    fake_distribution(
        tmp_path,
        monkeypatch,
        "acme-broken2",
        "1.0",
        {"broken2": "acme_broken2_plugin"},
        {"acme_broken2_plugin": "raise ImportError('never imported')\n"},
    )
    monkeypatch.setenv(ENV_PLUGINS, "")
    host = create_host()
    assert host.plugins == {} and host.stages == {}
    assert main(["plugins", "--json"]) == 0
    assert '"plugins": []' in capsys.readouterr().out


def test_without_the_env_variable_every_installed_plugin_loads(monkeypatch):
    monkeypatch.delenv(ENV_PLUGINS, raising=False)
    host = create_host()
    assert {"train", "magnitude"} <= set(host.plugins)
    assert host.plugins["magnitude"].package == "recipe-compose-magnitude"
    assert host.plugins["train"].package == "recipe-compose"


# -- registration ---------------------------------------------------------------


def test_a_duplicate_stage_name_names_both_plugins(host):
    host.register(stage_plugin("shrink"), PluginInfo("acme-one", "acme-one", "1.0", "acme_one"))
    with pytest.raises(PluginError) as caught:
        host.register(stage_plugin("shrink"), PluginInfo("acme-two", "acme-two", "2.0", "acme_two"))
    message = str(caught.value)
    assert "plugin \"acme-two\" (package acme-two 2.0) registers stage 'shrink'" in message
    assert 'which plugin "acme-one" (package acme-one 1.0) already provides' in message
    assert f"limit loading with {ENV_PLUGINS}" in message
    assert host.stages["shrink"].plugin.name == "acme-one"  # the first keeps it
    host.unregister("acme-one")
    host.unregister("acme-two")
    host.register(stage_plugin("shrink"), PluginInfo("acme-two", "acme-two", "2.0", "acme_two"))
    assert host.stages["shrink"].plugin.name == "acme-two"  # unregistering freed the name


def test_a_hookimpl_asking_for_an_argument_the_hook_lacks_is_rejected_at_registration(host):
    class Plugin:
        @hookimpl
        def compose_register_stages(self, register, config):  # there is no `config`
            raise AssertionError("never called")

    with pytest.raises(PluginError) as caught:
        host.register(Plugin(), PluginInfo("acme-args", "acme-args", "1.0", "acme_args"))
    message = str(caught.value)
    assert message.startswith('plugin "acme-args" (package acme-args 1.0) cannot be registered')
    assert "Argument(s) {'config'} are declared in the hookimpl but can not be found in the hookspec" in message


def test_a_hookimpl_may_take_a_subset_of_the_arguments(host):
    calls = []

    class Plugin:
        @hookimpl
        def compose_register_stages(self):
            calls.append("register")

        @hookimpl
        def compose_training_setup(self, setup):
            calls.append(setup)

    host.register(Plugin(), PluginInfo("acme-subset", "acme-subset", "1.0", "acme_subset"))
    host.hook.compose_training_setup(setup="the setup")
    assert calls == ["register", "the setup"]


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda: stage_plugin("bad name"), "registered a stage with an invalid name 'bad name'"),
        (lambda: stage_plugin("s", families=("encoder", "vision")), "names unknown model families ['vision']"),
        (lambda: stage_plugin("s", schema={"type": "array"}), "stage 's' settings schema must describe an object"),
    ],
)
def test_invalid_stage_declarations_name_the_plugin(host, make, expected):
    with pytest.raises(PluginError) as caught:
        host.register(make(), PluginInfo("acme-bad", "acme-bad", "0.9", "acme_bad"))
    assert str(caught.value).startswith('plugin "acme-bad" (package acme-bad 0.9)')
    assert expected in str(caught.value)


def test_registering_something_that_is_not_a_stage_type_is_an_error(host):
    class Plugin:
        @hookimpl
        def compose_register_stages(self, register):
            register({"name": "dict-stage"})

    with pytest.raises(PluginError, match=r"registered \{'name': 'dict-stage'\}, which is not a compose.api.StageType"):
        host.register(Plugin(), PluginInfo("acme-dict", "acme-dict", "1.0", "acme_dict"))


def test_an_exception_while_registering_names_the_plugin(host):
    class Plugin:
        @hookimpl
        def compose_register_stages(self, register):
            raise FileNotFoundError("settings.schema.json")

    with pytest.raises(PluginError) as caught:
        host.register(Plugin(), PluginInfo("acme-io", "acme-io", "1.0", "acme_io"))
    message = str(caught.value)
    assert message.startswith('plugin "acme-io" (package acme-io 1.0) failed in compose_register_stages')
    assert message.endswith("FileNotFoundError: settings.schema.json")
