"""The plugin host: finds stage plugins through entry points and keeps their stage types.

Every plugin, built-in or third-party, is a module named by an entry point in the
``recipe_compose`` group. Set ``RECIPE_COMPOSE_PLUGINS`` to a comma-separated list of
entry-point names to load only those, or to the empty string to load none (tests
then register plugin objects themselves with ``PluginHost.register``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import metadata

import jsonschema
import pluggy

from compose import hookspecs
from compose.errors import PluginError
from compose.recipe.schema import inline_shared_refs, load_core_schema
from compose.stage import FAMILIES, StageType, TrainingExtension

ENTRY_POINT_GROUP = "recipe_compose"
ENV_PLUGINS = "RECIPE_COMPOSE_PLUGINS"


@dataclass(frozen=True)
class PluginInfo:
    """Where a plugin came from, for listings and error messages."""

    name: str
    package: str
    version: str
    module: str

    def label(self) -> str:
        return f'plugin "{self.name}" (package {self.package} {self.version})'


@dataclass(frozen=True)
class RegisteredStage:
    stage: StageType
    plugin: PluginInfo
    raw_schema: dict  # as the plugin declared it, before shared settings are inlined


@dataclass(frozen=True)
class RegisteredExtension:
    extension: TrainingExtension
    plugin: PluginInfo


class PluginHost:
    """Owns the pluggy manager and the registry of stage types."""

    def __init__(self):
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.stages: dict[str, RegisteredStage] = {}
        self.training_extensions: dict[str, RegisteredExtension] = {}

    # -- loading -----------------------------------------------------------

    def load_entry_points(self, only: set[str] | None = None) -> None:
        """Load and register every plugin of the entry-point group (or only the named ones)."""
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            if only is not None and ep.name not in only:
                continue
            dist = getattr(ep, "dist", None)
            info = PluginInfo(
                name=ep.name,
                package=dist.metadata["Name"] if dist else "unknown package",
                version=dist.version if dist else "?",
                module=ep.value,
            )
            if ep.name in self.plugins:
                other = self.plugins[ep.name]
                raise PluginError(
                    f'two plugins are named "{ep.name}": one in package {other.package}, '
                    f"one in package {info.package}; uninstall one of them"
                )
            try:
                module = ep.load()
            except Exception as exc:  # noqa: BLE001 - any import failure is reported, never swallowed
                raise PluginError(
                    f"Error importing {info.label()} from {ep.value}: {type(exc).__name__}: {exc}. "
                    f"Fix or uninstall the package, or set {ENV_PLUGINS} to the plugins you need."
                ) from exc
            self.register(module, info)

    def register(self, plugin, info: PluginInfo | None = None) -> None:
        """Register a plugin object (module or instance) and collect its stage types."""
        if info is None:
            name = getattr(plugin, "__name__", type(plugin).__name__)
            info = PluginInfo(name=name, package="(registered directly)", version="?", module=name)
        try:
            self.pm.register(plugin, name=info.name)
            self.pm.check_pending()  # a misspelt hook name is an error, not silently ignored
        except (pluggy.PluginValidationError, ValueError) as exc:
            if self.pm.is_registered(plugin):
                self.pm.unregister(plugin)
            raise PluginError(f"{info.label()} cannot be registered: {exc}") from exc
        self.plugins[info.name] = info
        try:
            self._collect(plugin, info)
        except PluginError:
            self.unregister(info.name)  # all or nothing: no half-registered plugin stays
            raise

    def _collect(self, plugin, info: PluginInfo) -> None:
        # Each plugin's registrations are collected separately, so that the host
        # knows (and can say in errors) which plugin provides which stage.
        for hook, add in (
            (self.pm.hook.compose_register_stages, self._add_stage),
            (self.pm.hook.compose_register_training_extensions, self._add_extension),
        ):
            for impl in [i for i in hook.get_hookimpls() if i.plugin is plugin]:
                try:
                    register = lambda item, _info=info, _add=add: _add(item, _info)  # noqa: E731
                    impl.function(**({"register": register} if "register" in impl.argnames else {}))
                except PluginError:
                    raise
                except Exception as exc:  # noqa: BLE001
                    raise PluginError(f"{info.label()} failed in {hook.name}: {type(exc).__name__}: {exc}") from exc

    def unregister(self, name: str) -> None:
        """Remove a plugin and the stage types it registered (for tests)."""
        self.pm.unregister(name=name)
        self.plugins.pop(name, None)
        for stage_name in [k for k, v in self.stages.items() if v.plugin.name == name]:
            del self.stages[stage_name]
        for ext_name in [k for k, v in self.training_extensions.items() if v.plugin.name == name]:
            del self.training_extensions[ext_name]
        self._inline_all()

    def _add_stage(self, stage: StageType, info: PluginInfo) -> None:
        if not isinstance(stage, StageType):
            raise PluginError(f"{info.label()} registered {stage!r}, which is not a compose.api.StageType")
        if not stage.name or stage.name != stage.name.strip() or " " in stage.name:
            raise PluginError(f"{info.label()} registered a stage with an invalid name {stage.name!r}")
        if stage.name in self.stages:
            first = self.stages[stage.name].plugin
            raise PluginError(
                f"{info.label()} registers stage '{stage.name}', which {first.label()} already provides; "
                f"uninstall one of them or limit loading with {ENV_PLUGINS}"
            )
        bad_families = [f for f in stage.families if f not in FAMILIES]
        if bad_families:
            raise PluginError(
                f"{info.label()}: stage '{stage.name}' names unknown model families {bad_families} "
                f"(known: {', '.join(FAMILIES)})"
            )
        raw = dict(stage.schema)
        schema = self._inline(raw)
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
            raise PluginError(
                f"{info.label()}: stage '{stage.name}' declares an invalid settings schema at {where}: {exc.message}"
            ) from None
        if schema.get("type", "object") != "object":
            raise PluginError(f"{info.label()}: stage '{stage.name}' settings schema must describe an object")
        object.__setattr__(stage, "schema", schema)
        self.stages[stage.name] = RegisteredStage(stage, info, raw)

    def _add_extension(self, extension: TrainingExtension, info: PluginInfo) -> None:
        if not isinstance(extension, TrainingExtension):
            raise PluginError(f"{info.label()} registered {extension!r}, which is not a compose.api.TrainingExtension")
        own = load_core_schema("training.schema.json")["properties"]
        if extension.name in own:
            raise PluginError(
                f"{info.label()} registers training setting '{extension.name}', which the training loop itself uses"
            )
        if extension.name in self.training_extensions:
            first = self.training_extensions[extension.name].plugin
            raise PluginError(
                f"{info.label()} registers training setting '{extension.name}', which {first.label()} already "
                f"provides; uninstall one of them or limit loading with {ENV_PLUGINS}"
            )
        try:
            jsonschema.Draft202012Validator.check_schema(dict(extension.schema))
        except jsonschema.SchemaError as exc:
            raise PluginError(
                f"{info.label()}: training setting '{extension.name}' declares an invalid schema: {exc.message}"
            ) from None
        if "default" not in extension.schema:
            raise PluginError(
                f"{info.label()}: training setting '{extension.name}' needs a `default` (the value meaning 'off')"
            )
        self.training_extensions[extension.name] = RegisteredExtension(extension, info)
        self._inline_all()

    def _inline(self, raw: dict) -> dict:
        return inline_shared_refs(raw, {n: r.extension.schema for n, r in self.training_extensions.items()})

    def _inline_all(self) -> None:
        """Re-inline every stage's shared settings (a training extension was added or removed)."""
        for registered in self.stages.values():
            object.__setattr__(registered.stage, "schema", self._inline(registered.raw_schema))

    # -- queries -----------------------------------------------------------

    def stage(self, name: str) -> StageType:
        return self.stages[name].stage

    def stage_schemas(self) -> dict:
        return {name: reg.stage.schema for name, reg in self.stages.items()}

    @property
    def hook(self):
        return self.pm.hook


def env_plugin_filter() -> set[str] | None:
    """The plugins ``RECIPE_COMPOSE_PLUGINS`` allows (None: all of them)."""
    raw = os.environ.get(ENV_PLUGINS)
    if raw is None:
        return None
    return {name.strip() for name in raw.split(",") if name.strip()}


def create_host() -> PluginHost:
    """A host with the installed plugins loaded, as ``RECIPE_COMPOSE_PLUGINS`` allows."""
    host = PluginHost()
    host.load_entry_points(env_plugin_filter())
    return host


__all__ = ["ENTRY_POINT_GROUP", "ENV_PLUGINS", "PluginHost", "PluginInfo", "create_host"]
