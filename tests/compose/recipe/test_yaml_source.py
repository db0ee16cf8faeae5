"""Safe YAML loading with locations."""

import pytest

from compose.recipe.yaml_source import YamlSourceError, load_yaml_file, locate, parse_yaml_text


def test_values_remember_their_line_and_column():
    doc = parse_yaml_text("model:\n  hub: x\nstages:\n  - name: a\n    with: {bits: 4}\n", "r.yaml")
    loc = locate(doc, ("stages", 0, "with", "bits"))
    assert (loc.file, loc.line, loc.column) == ("r.yaml", 5, 18)
    key = locate(doc, ("model", "hub"), key=True)
    assert (key.line, key.column) == (2, 3)


def test_missing_key_falls_back_to_the_nearest_container():
    doc = parse_yaml_text("a:\n  b: 1\n", "r.yaml")
    assert locate(doc, ("a", "zzz")).line == 2


def test_exponent_without_dot_is_a_number():
    assert parse_yaml_text("lr: 5e-5\ns: '5e-5'", "r.yaml") == {"lr": 5e-5, "s": "5e-5"}


@pytest.mark.parametrize(
    "text, words",
    [
        ("a: 1\na: 2\n", "duplicate key 'a'"),
        ("x: !!python/object/apply:os.system ['echo hi']\n", "not allowed"),
        ("x: !!python/name:os.system\n", "only plain YAML"),
        ("a: [1,\n", "not valid YAML"),
        ("x: !!set {a, b}\n", "not allowed"),
    ],
)
def test_unsafe_or_broken_yaml_is_refused_with_a_location(text, words):
    with pytest.raises(YamlSourceError) as info:
        parse_yaml_text(text, "r.yaml")
    assert words in str(info.value)
    assert info.value.problem.file == "r.yaml"


def test_alias_bomb_is_refused():
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for prev, name in zip("abcdefg", "bcdefgh"):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    with pytest.raises(YamlSourceError, match="more than"):
        parse_yaml_text("\n".join(lines), "bomb.yaml")


def test_merge_keys_may_be_overridden():
    doc = parse_yaml_text("base: &b {x: 1, y: 2}\nd:\n  <<: *b\n  y: 3\n", "r.yaml")
    assert doc["d"] == {"x": 1, "y": 3}


def test_non_utf8_file_names_the_offset(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_bytes(b"model:\n  hub: caf\xe9\n")
    with pytest.raises(YamlSourceError, match="not UTF-8") as info:
        load_yaml_file(path)
    assert info.value.problem.line == 2
