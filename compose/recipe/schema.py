"""The JSON Schemas: loading, combining the recipe schema with every plugin's, defaults."""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Mapping
from importlib import resources
from typing import Any

#: ``{"$ref": "compose:training"}`` in a plugin schema inlines the shared training
#: settings (schemas/training.schema.json), so stages that train take the same keys.
#: In a stage's settings schema, ``{"$ref": TRAINING_SETTINGS_REF}`` stands for the shared training settings.
TRAINING_SETTINGS_REF = "compose:training"
SHARED_REFS = {TRAINING_SETTINGS_REF: "training.schema.json"}
#: Marks the inlined training settings, so that the core can find them in any stage's settings.
TRAINING_MARKER = "x-compose-training"


def load_core_schema(filename: str) -> dict:
    """A schema file shipped in schemas/ (installed as ``compose.schemas``); a fresh copy each call."""
    return inline_shared_refs(copy.deepcopy(_read_schema(filename)))


@functools.cache
def _read_schema(filename: str) -> dict:
    text = resources.files("compose.schemas").joinpath(filename).read_text(encoding="utf-8")
    return json.loads(text)


def recipe_schema() -> dict:
    return load_core_schema("recipe.schema.json")


def inline_shared_refs(schema, training_extensions: Mapping[str, Mapping] | None = None):
    """Replace ``{"$ref": "compose:..."}`` with the shared schema it names.

    ``training_extensions`` (name -> value schema) are added to the inlined
    training settings as further properties.
    """
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref in SHARED_REFS:
            shared = load_core_schema(SHARED_REFS[ref])
            shared.pop("$schema", None)
            shared.pop("$id", None)
            if ref == TRAINING_SETTINGS_REF:
                shared[TRAINING_MARKER] = True
                for name, sub in (training_extensions or {}).items():
                    shared["properties"][name] = {
                        k: copy.deepcopy(v) for k, v in sub.items() if k not in ("$schema", "$id")
                    }
            rest = {k: inline_shared_refs(v, training_extensions) for k, v in schema.items() if k != "$ref"}
            return {**shared, **rest}
        return {k: inline_shared_refs(v, training_extensions) for k, v in schema.items()}
    if isinstance(schema, list):
        return [inline_shared_refs(v, training_extensions) for v in schema]
    return schema


def training_settings_paths(schema, prefix: tuple = ()) -> list[tuple]:
    """Where in settings of this schema the shared training settings sit (() = at the top)."""
    if not isinstance(schema, dict):
        return []
    if schema.get(TRAINING_MARKER):
        return [prefix]
    found = []
    for key, sub in schema.get("properties", {}).items():
        found += training_settings_paths(sub, prefix + (key,))
    for keyword in ("anyOf", "oneOf"):
        for sub in schema.get(keyword, []):
            found += [p for p in training_settings_paths(sub, prefix) if p not in found]
    return found


def combined_schema(stage_schemas: Mapping[str, Mapping[str, Any]]) -> dict:
    """The recipe schema with every stage plugin's settings schema wired in.

    Editors (the YAML language server) use this to complete and check recipes:
    each stage's ``with:`` is checked against the schema of the plugin it ``uses``.
    """
    schema = recipe_schema()
    stage = schema["properties"]["stages"]["items"]
    names = sorted(stage_schemas)
    stage["properties"]["uses"]["enum"] = names
    defs = schema.setdefault("$defs", {})
    conditions = []
    for name in names:
        key = f"stage:{name}"
        plugin_schema = copy.deepcopy(dict(stage_schemas[name]))
        plugin_schema.pop("$schema", None)
        plugin_schema.pop("$id", None)
        defs[key] = plugin_schema
        conditions.append(
            {
                "if": {"properties": {"uses": {"const": name}}, "required": ["uses"]},
                "then": {"properties": {"with": {"$ref": f"#/$defs/{key}"}}},
            }
        )
    stage["allOf"] = conditions
    return schema


def fill_defaults(instance, schema):
    """Fill in every ``default`` the schema declares, in place; returns the instance.

    A missing property whose schema has a default gets a deep copy of it; present
    objects are descended into (also through ``additionalProperties`` schemas and
    array ``items``), so nested defaults appear too.
    """
    if not isinstance(schema, dict):
        return instance
    if isinstance(instance, dict):
        properties = schema.get("properties", {})
        for key, sub in properties.items():
            if key not in instance and isinstance(sub, dict) and "default" in sub:
                instance[key] = copy.deepcopy(sub["default"])
        for key, value in instance.items():
            if key in properties:
                fill_defaults(value, properties[key])
            elif isinstance(schema.get("additionalProperties"), dict):
                fill_defaults(value, schema["additionalProperties"])
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for item in instance:
            fill_defaults(item, schema["items"])
    return instance


def fill_recipe_defaults(recipe: dict, schema: dict) -> dict:
    """Defaults of the recipe schema, resolving its local ``$defs`` references."""
    return fill_defaults(recipe, _deref(schema, schema))


def _deref(node, root, seen=()):
    """A copy of ``node`` with local ``#/$defs/...`` and ``#/properties/...`` refs inlined."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/") and ref not in seen:
            target = root
            for part in ref[2:].split("/"):
                target = target[part]
            merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
            return _deref(merged, root, seen + (ref,))
        return {k: _deref(v, root, seen) for k, v in node.items()}
    if isinstance(node, list):
        return [_deref(v, root, seen) for v in node]
    return node
