"""compose.recipe.schema: shipped schemas, the shared training settings, the combined schema, defaults."""

import jsonschema
import pytest

from compose.recipe.load import load_recipe
from compose.recipe.schema import (
    TRAINING_MARKER,
    combined_schema,
    fill_defaults,
    fill_recipe_defaults,
    inline_shared_refs,
    load_core_schema,
    recipe_schema,
    training_settings_paths,
)


def test_each_load_is_a_fresh_copy():
    first = load_core_schema("training.schema.json")
    first["properties"]["epochs"]["default"] = 99
    first["properties"].pop("split")
    second = load_core_schema("training.schema.json")
    assert second["properties"]["epochs"]["default"] == 1
    assert "split" in second["properties"]


def test_the_shared_training_ref_is_inlined_and_marked():
    schema = inline_shared_refs(
        {"type": "object", "properties": {"training": {"$ref": "compose:training", "description": "mine"}}}
    )
    training = schema["properties"]["training"]
    assert "$ref" not in training and "$id" not in training and "$schema" not in training
    assert training[TRAINING_MARKER] is True
    assert training["description"] == "mine"  # keys beside the $ref win over the shared schema's
    assert training["properties"]["learning_rate"]["default"] == 5e-05
    assert training["additionalProperties"] is False


def test_training_extensions_become_properties_of_the_inlined_settings():
    extension = {"$schema": "x", "type": "boolean", "default": False}
    schema = inline_shared_refs({"$ref": "compose:training"}, {"amp_like": extension})
    assert schema["properties"]["amp_like"] == {"type": "boolean", "default": False}
    jsonschema.validate({"amp_like": True}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"amp_likee": True}, schema)
    assert "amp_like" not in load_core_schema("training.schema.json")["properties"]  # the shipped one is untouched


def test_other_refs_and_lists_pass_through():
    schema = {"anyOf": [{"$ref": "#/$defs/x"}, {"$ref": "compose:training"}]}
    out = inline_shared_refs(schema)
    assert out["anyOf"][0] == {"$ref": "#/$defs/x"}
    assert out["anyOf"][1][TRAINING_MARKER] is True
    assert schema["anyOf"][1] == {"$ref": "compose:training"}  # the input is not changed


def test_training_settings_paths_finds_every_place():
    training = inline_shared_refs({"$ref": "compose:training"})
    assert training_settings_paths(training) == [()]
    nested = {"properties": {"a": {"properties": {"loop": training}}, "b": {"type": "integer"}}}
    assert training_settings_paths(nested) == [("a", "loop")]
    either = {"anyOf": [training, {"properties": {"t": training}}, training]}
    assert training_settings_paths(either) == [(), ("t",)]  # no duplicates
    assert training_settings_paths({"properties": {"x": {"type": "object"}}}) == []
    assert training_settings_paths("not a schema") == []


def test_training_settings_paths_of_the_built_in_stages(host):
    assert training_settings_paths(host.stage("train").schema) == [()]
    assert training_settings_paths(host.stage("distill").schema) == [("training",)]
    assert training_settings_paths(host.stage("prune-heads").schema) == [("recovery",)]


def test_combined_schema_checks_each_stage_against_its_plugin():
    stage_schemas = {
        "b-stage": {
            "$schema": "x",
            "$id": "y",
            "type": "object",
            "additionalProperties": False,
            "properties": {"bits": {"type": "integer"}},
        },
        "a-stage": {"type": "object", "properties": {"rate": {"type": "number"}}},
    }
    schema = combined_schema(stage_schemas)
    item = schema["properties"]["stages"]["items"]
    assert item["properties"]["uses"]["enum"] == ["a-stage", "b-stage"]
    assert "$id" not in schema["$defs"]["stage:b-stage"]

    def recipe(stage):
        return {
            "model": {"config": {"model_type": "bert"}, "tokenizer": {"path": "t"}},
            "task": {"kind": "sequence-classification", "data": {"train": {"path": "a.tsv"}}},
            "stages": [stage],
        }

    validator = jsonschema.Draft202012Validator(schema)
    assert not list(validator.iter_errors(recipe({"name": "s", "uses": "b-stage", "with": {"bits": 4}})))
    wrong = list(validator.iter_errors(recipe({"name": "s", "uses": "b-stage", "with": {"bits": "four"}})))
    assert wrong and any(list(e.absolute_path)[-1] == "bits" for e in _leaves(wrong))
    typo = list(validator.iter_errors(recipe({"name": "s", "uses": "b-stage", "with": {"bitz": 4}})))
    assert typo
    # the same settings are fine for a plugin whose schema allows them
    assert not list(validator.iter_errors(recipe({"name": "s", "uses": "a-stage", "with": {"bitz": 4}})))
    unknown = list(validator.iter_errors(recipe({"name": "s", "uses": "c-stage"})))
    assert unknown
    assert "allOf" not in recipe_schema()["properties"]["stages"]["items"]  # combining changed a copy


def _leaves(errors):
    for error in errors:
        yield error
        yield from _leaves(error.context or [])


def test_fill_defaults_fills_missing_keys_only_and_descends():
    schema = {
        "properties": {
            "a": {"default": 1},
            "b": {"default": {"x": [1]}},
            "keep": {"default": "schema"},
            "nested": {"properties": {"deep": {"default": True}}},
            "absent": {"properties": {"deep": {"default": True}}},  # no default: not created
            "items": {"items": {"properties": {"k": {"default": 0}}}},
        },
        "additionalProperties": {"properties": {"extra_default": {"default": "e"}}},
    }
    instance = {"keep": "mine", "nested": {}, "items": [{}, {"k": 5}], "other": {}}
    out = fill_defaults(instance, schema)
    assert out is instance
    assert instance == {
        "keep": "mine",
        "nested": {"deep": True},
        "items": [{"k": 0}, {"k": 5}],
        "other": {"extra_default": "e"},
        "a": 1,
        "b": {"x": [1]},
    }
    instance["b"]["x"].append(2)  # a deep copy: the schema's default is not shared
    assert schema["properties"]["b"]["default"] == {"x": [1]}
    assert fill_defaults({}, schema)["b"] == {"x": [1]}


def test_fill_defaults_fills_inside_a_default_it_just_added():
    schema = {"properties": {"outer": {"default": {}, "properties": {"inner": {"default": 3}}}}}
    assert fill_defaults({}, schema) == {"outer": {"inner": 3}}


def test_fill_recipe_defaults_follows_local_refs():
    schema = {
        "properties": {"first": {"$ref": "#/$defs/thing"}, "second": {"$ref": "#/properties/first"}},
        "$defs": {"thing": {"default": {}, "properties": {"size": {"default": 8}}}},
    }
    assert fill_recipe_defaults({}, schema) == {"first": {"size": 8}, "second": {"size": 8}}
    loop = {"properties": {"a": {"$ref": "#/properties/a", "default": 1}}}  # a ref to itself stops
    assert fill_recipe_defaults({}, loop) == {"a": 1}


def test_a_loaded_recipe_shows_every_default(write_recipe, host):
    path = write_recipe("- {name: ft, uses: train, with: {max_steps: 3}}\n")
    text = path.read_text()
    assert "warmup_ratio" not in text and "latency_batches: 2" in text
    data = load_recipe(path, [], host).data
    settings = data["stages"][0]["with"]
    assert settings["max_steps"] == 3  # written: kept
    training = load_core_schema("training.schema.json")["properties"]
    for key, sub in training.items():
        if key != "max_steps":
            assert settings[key] == sub["default"], key
    assert data["evaluate"]["latency_batches"] == 2  # written: kept
    assert data["evaluate"]["split"] == "dev" and data["evaluate"]["limit"] is None
    assert data["evaluate"]["latency"]["enabled"] is True and data["evaluate"]["latency"]["threads"] is None
    assert data["model"]["fine_tuned"] is False
    assert data["output"]["save_artifacts"] is True
