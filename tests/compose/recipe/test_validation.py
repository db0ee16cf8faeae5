"""compose.recipe.validation: every schema problem at once, each naming the file, the line, the path and the fix."""

import textwrap

import pytest

from compose.errors import RecipeError
from compose.recipe.load import load_recipe
from compose.recipe.validation import SchemaChecker, did_you_mean
from compose.recipe.yaml_source import parse_yaml_text

SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "size"],
    "properties": {
        "name": {"type": "string"},
        "size": {"type": "integer", "minimum": 1, "maximum": 8},
        "ratio": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "mode": {"enum": ["fast", "careful"]},
        "version": {"const": 2},
        "source": {
            "type": "object",
            "oneOf": [{"required": ["hub"]}, {"required": ["path"]}],
            "x-error": "give exactly one source: `hub` or `path`",
        },
        "either": {"anyOf": [{"type": "integer"}, {"type": "object", "properties": {"n": {"type": "integer"}}}]},
    },
}


def check(text: str, schema=SCHEMA, prefix=()):
    document = parse_yaml_text(textwrap.dedent(text), "r.yaml")
    return SchemaChecker(document).check(document, schema, prefix)


def only(problems):
    assert len(problems) == 1, [p.format() for p in problems]
    return problems[0]


def test_a_valid_document_has_no_problems():
    assert check("name: a\nsize: 3\nmode: fast\nsource: {hub: x}\neither: {n: 1}\n") == []


def test_a_misspelt_key_is_located_at_the_key_and_gets_a_suggestion():
    problem = only(check("name: a\nsize: 3\n  # a comment\nmdoe: fast\n".replace("  #", "#")))
    assert problem.message == "unknown key 'mdoe' (did you mean 'mode'?)"
    assert (problem.file, problem.line, problem.column, problem.path) == ("r.yaml", 4, 1, "$.mdoe")
    assert problem.format() == "r.yaml:4:1: $.mdoe: unknown key 'mdoe' (did you mean 'mode'?)"


def test_an_unknown_key_without_a_close_match_lists_the_allowed_keys():
    problem = only(check("name: a\nsize: 3\nzzz: 1\n"))
    assert problem.message == "unknown key 'zzz'; allowed here: either, mode, name, ratio, size, source, version"


def test_every_problem_is_reported_at_once_each_at_its_line():
    problems = check(
        """\
        name: 7
        size: 0
        ratio: 1
        mode: fats
        version: 3
        source: {hub: a, path: b}
        """
    )
    found = {p.path: (p.line, p.message) for p in problems}
    assert found == {
        "$.name": (1, "expected a string, got an integer 7"),
        "$.size": (2, "expected a value at least 1, got 0"),
        "$.ratio": (3, "expected a value less than 1, got 1"),
        "$.mode": (4, "expected one of: fast, careful; got 'fats' (did you mean 'fast'?)"),
        "$.version": (5, "expected 2, got 3"),
        "$.source": (6, "give exactly one source: `hub` or `path`"),
    }


def test_a_missing_required_key_names_the_key_and_points_at_the_mapping():
    problems = check("x:\n  name: a\n", {"properties": {"x": SCHEMA}})
    problem = only(problems)
    assert problem.message == "missing required key 'size'"
    assert (problem.path, problem.line) == ("$.x", 2)


def test_any_of_reports_the_error_inside_the_branch_of_the_values_type():
    """A bad field of a mapping is reported there, not as "expected an integer" from the other branch."""
    problem = only(check("name: a\nsize: 3\neither: {n: many}\n"))
    assert problem.path == "$.either.n"
    assert problem.message == "expected an integer, got a string 'many'"
    assert (problem.line, problem.column) == (3, 13)
    problem = only(check("name: a\nsize: 3\neither: many\n"))  # no branch has its type: say what would do
    assert problem.path == "$.either"
    assert problem.message.startswith("expected ") and problem.message.endswith("got a string 'many'")


def test_a_bad_item_of_a_list_or_map_setting_is_pointed_at(host):
    """prune-ffn's layer_ratios: a list or a map of fractions."""
    schema = {"properties": {"layer_ratios": host.stage("prune-ffn").schema["properties"]["layer_ratios"]}}
    problem = only(check("layer_ratios: [0.5, x]\n", schema))
    assert (problem.path, problem.column) == ("$.layer_ratios[1]", 21)
    assert problem.message == "expected a number, got a string 'x'"
    problem = only(check("layer_ratios: {'0': 0.5, '1': 2}\n", schema))
    assert problem.path == "$.layer_ratios.1"
    assert problem.message == "expected a value less than 1, got 2"


def test_yaml_mappings_and_lists_are_named_as_such():
    problems = check("name: {a: 1}\nsize: [1, 2]\nratio: true\n")
    assert {p.path: p.message for p in problems} == {
        "$.name": "expected a string, got a mapping {'a': 1}",
        "$.size": "expected an integer, got a list [1, 2]",
        "$.ratio": "expected a number, got a boolean True",
    }


def test_the_prefix_places_settings_inside_the_recipe():
    document = parse_yaml_text("stages:\n  - name: s\n    with:\n      size: 99\n", "r.yaml")
    settings = document["stages"][0]["with"]
    problem = only(
        SchemaChecker(document).check(settings, {"properties": {"size": {"maximum": 8}}}, prefix=("stages", 0, "with"))
    )
    assert problem.path == "$.stages[0].with.size"
    assert problem.message == "expected a value at most 8, got 99"
    assert (problem.line, problem.column) == (4, 13)


def test_a_place_that_was_not_written_falls_back_to_its_container():
    document = parse_yaml_text("a:\n  b: 1\n", "r.yaml")
    problem = SchemaChecker(document).problem(("a", "missing", "deeper"), "msg")
    assert (problem.line, problem.path) == (2, "$.a.missing.deeper")
    unlocated = SchemaChecker({"a": 1}).problem(("a",), "msg")  # plain dicts: no location
    assert (unlocated.file, unlocated.line) == (None, None)
    assert unlocated.format() == "<recipe>: $.a: msg"


def test_long_values_are_shortened_in_messages():
    problem = only(check(f"name: a\nsize: '{'x' * 200}'\n"))
    assert problem.message.startswith("expected an integer, got a string 'xxx")
    assert problem.message.endswith("...") and len(problem.message) < 120


def test_did_you_mean():
    assert did_you_mean("trian", ["train", "distill"]) == " (did you mean 'train'?)"
    assert did_you_mean("quantize", ["train", "distill"]) == ""
    assert did_you_mean(3, ["3"]) == ""  # only strings are misspelt


def test_a_recipe_with_mistakes_names_the_file_line_and_fix(write_recipe, host):
    path = write_recipe(
        """\
        - {name: ft, uses: train, with: {max_step: 3}}
        - {name: q, uses: gtpq}
        - {name: ft2, uses: train, with: {batch_size: 0, optimizer: adam}}
        """
    )
    lines = path.read_text().splitlines()
    with pytest.raises(RecipeError) as caught:
        load_recipe(path, [], host)
    problems = caught.value.problems
    by_path = {p.path: p for p in problems}
    assert set(by_path) == {
        "$.stages[0].with.max_step",
        "$.stages[1].uses",
        "$.stages[2].with.batch_size",
        "$.stages[2].with.optimizer",
    }
    assert all(p.file == str(path) for p in problems)
    typo = by_path["$.stages[0].with.max_step"]
    assert typo.message == "unknown key 'max_step' (did you mean 'max_steps'?)"
    assert lines[typo.line - 1][typo.column - 1 :].startswith("max_step: 3")
    plugin = by_path["$.stages[1].uses"]
    assert plugin.message.startswith("no installed plugin provides stage 'gtpq' (did you mean 'gptq'?); installed: ")
    assert lines[plugin.line - 1][plugin.column - 1 :].startswith("gtpq")
    assert by_path["$.stages[2].with.batch_size"].message == "expected a value at least 1, got 0"
    assert by_path["$.stages[2].with.optimizer"].message == (
        "expected one of: adamw, sgd; got 'adam' (did you mean 'adamw'?)"
    )
    assert [p.line for p in problems] == sorted(p.line for p in problems)  # in file order
    assert str(caught.value).splitlines()[0].startswith(f"{path}:{typo.line}:{typo.column}: $.stages[0].with.max_step")
