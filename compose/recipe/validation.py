"""Check a composed recipe against the schemas, and report every problem at once.

Each problem names the file, the YAML line and column, the JSON path
(``$.stages[2].with.bits``), what was expected, and a "did you mean" for a
misspelt key, value or plugin name.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping

import jsonschema
from jsonschema.exceptions import best_match

from compose.errors import Problem
from compose.recipe.yaml_source import format_path, locate

_JSON_TYPES = {
    dict: "a mapping",
    list: "a list",
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    type(None): "null",
}


def did_you_mean(word, candidates: Iterable[str]) -> str:
    if not isinstance(word, str):
        return ""
    matches = difflib.get_close_matches(word, [str(c) for c in candidates], n=1, cutoff=0.6)
    return f" (did you mean '{matches[0]}'?)" if matches else ""


def _kind(value) -> str:
    # isinstance, not type(): YAML mappings and lists arrive as Located subclasses, and bool is an int
    for cls, word in _JSON_TYPES.items():
        if isinstance(value, cls):
            return word
    return type(value).__name__


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _expected_type(expected) -> str:
    names = expected if isinstance(expected, list) else [expected]
    words = {
        "object": "a mapping",
        "array": "a list",
        "string": "a string",
        "integer": "an integer",
        "number": "a number",
        "boolean": "true or false",
        "null": "null",
    }
    return " or ".join(words.get(n, n) for n in names)


def _fitting_branches(context: list) -> list:
    """The errors of the ``oneOf``/``anyOf`` branches whose type the value has (all, if none has).

    jsonschema's ``best_match`` prefers the shallowest error, so a list with one bad item
    would be told "expected a mapping" by a mapping branch; the list branch's error
    about the item is the one that helps.
    """
    misfits = {e.relative_schema_path[0] for e in context if e.validator == "type" and not e.relative_path}
    fitting = [e for e in context if e.relative_schema_path[0] not in misfits]
    return fitting or context


class SchemaChecker:
    """Turns jsonschema errors into located, readable ``Problem`` s."""

    def __init__(self, document):
        self.document = document

    def problem(self, path: tuple, message: str, *, key: bool = False) -> Problem:
        loc = locate(self.document, path, key=key)
        return Problem(
            message,
            format_path(path),
            loc.file if loc else None,
            loc.line if loc else None,
            loc.column if loc else None,
        )

    def check(self, instance, schema: Mapping, prefix: tuple = ()) -> list[Problem]:
        validator = jsonschema.Draft202012Validator(schema, format_checker=None)
        errors = list(validator.iter_errors(instance))
        specific_paths = {
            tuple(e.absolute_path) for e in errors if e.validator not in ("oneOf", "anyOf", "allOf", "if")
        }
        problems = []
        for error in errors:
            path = prefix + tuple(error.absolute_path)
            if error.validator in ("oneOf", "anyOf") and tuple(error.absolute_path) in specific_paths:
                continue  # a more specific error at the same place says it better
            problems.extend(self._describe(error, path))
        return problems

    def _describe(self, error, path) -> list[Problem]:
        kind = error.validator
        schema = error.schema if isinstance(error.schema, dict) else {}
        value = error.instance
        if kind == "additionalProperties" and isinstance(value, dict):
            allowed = sorted(schema.get("properties", {}))
            extras = [k for k in value if k not in schema.get("properties", {})]
            out = []
            for key in extras:
                hint = did_you_mean(key, allowed)
                listing = f"; allowed here: {', '.join(allowed)}" if allowed and not hint else ""
                out.append(self.problem(path + (key,), f"unknown key '{key}'{hint}{listing}", key=True))
            return out
        if kind == "required":
            missing = [k for k in error.validator_value if isinstance(value, dict) and k not in value]
            return [self.problem(path, f"missing required key '{k}'") for k in missing]
        if kind == "type":
            return [
                self.problem(
                    path, f"expected {_expected_type(error.validator_value)}, got {_kind(value)} {_show(value)}"
                )
            ]
        if kind == "enum":
            choices = ", ".join(str(c) for c in error.validator_value)
            return [
                self.problem(
                    path,
                    f"expected one of: {choices}; got {_show(value)}{did_you_mean(value, error.validator_value)}",
                )
            ]
        if kind == "const":
            return [self.problem(path, f"expected {_show(error.validator_value)}, got {_show(value)}")]
        if kind in ("oneOf", "anyOf"):
            if "x-error" in schema:
                return [self.problem(path, schema["x-error"])]
            inner = best_match(_fitting_branches(error.context)) if error.context else None
            if inner is not None:
                return self._describe(inner, path + tuple(inner.relative_path))
        if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            words = {
                "minimum": "at least",
                "maximum": "at most",
                "exclusiveMinimum": "more than",
                "exclusiveMaximum": "less than",
            }
            return [self.problem(path, f"expected a value {words[kind]} {error.validator_value}, got {_show(value)}")]
        if kind == "propertyNames":
            return [self.problem(path, f"key {_show(value)} is not allowed here: {error.message}")]
        return [self.problem(path, error.message)]
