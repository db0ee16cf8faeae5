"""Property-based: malformed recipes always end in exit code 2, a message, no traceback, nothing written.

Hypothesis generates broken recipes of many kinds (junk documents, unknown keys,
missing keys, wrong types, out-of-range and huge numbers, unknown plugins,
non-UTF-8 bytes, alias bombs, `extends:` cycles) and drives the real `recipe
apply` on each. Together the tests below run well over 500 generated recipes.
"""

from __future__ import annotations

import copy
import string

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compose.cli.main import main

VALID = {
    "model": {
        "config": {
            "model_type": "bert",
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 32,
        },
        "tokenizer": {"path": "tok"},
    },
    "task": {"kind": "sequence-classification", "data": {"train": {"path": "train.tsv"}, "dev": {"path": "dev.tsv"}}},
    "evaluate": {"batch_size": 8},
    "stages": [{"name": "ft", "uses": "train", "with": {"epochs": 1, "batch_size": 4}}],
    "gates": [{"stage": "final", "min_retained": 0.9}],
}

COMMON = settings(max_examples=130, deadline=None, suppress_health_check=list(HealthCheck))

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
junk = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def paths_of(node, prefix=()):
    """Every (path, value) in a document."""
    yield prefix, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from paths_of(value, prefix + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from paths_of(value, prefix + (index,))


def set_at(doc, path, value):
    node = doc
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


def delete_at(doc, path):
    node = doc
    for part in path[:-1]:
        node = node[part]
    del node[path[-1]]


@st.composite
def broken_recipes(draw):
    doc = copy.deepcopy(VALID)
    mappings = [p for p, v in paths_of(doc) if isinstance(v, dict) and p[-1:] != ("config",)]
    kind = draw(st.sampled_from(["unknown-key", "missing", "wrong-type", "huge", "unknown-plugin", "bad-enum"]))
    if kind == "unknown-key":
        where = draw(st.sampled_from(mappings))
        key = "x_" + draw(st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=8))
        node = doc
        for part in where:
            node = node[part]
        node[key] = draw(junk)
    elif kind == "missing":
        delete_at(
            doc,
            draw(
                st.sampled_from(
                    [("model",), ("task",), ("stages",), ("task", "kind"), ("stages", 0, "uses"), ("stages", 0, "name")]
                )
            ),
        )
    elif kind == "wrong-type":
        path = draw(
            st.sampled_from(
                [
                    ("evaluate", "batch_size"),
                    ("stages", 0, "with", "epochs"),
                    ("seed",),
                    ("gates", 0, "min_retained"),
                    ("task", "data"),
                    ("stages",),
                ]
            )
        )
        wrong = (
            st.text(min_size=1, max_size=5)
            if path in (("stages",), ("task", "data"))
            else st.one_of(st.text(min_size=1, max_size=5), st.lists(scalars, max_size=2))
        )
        set_at(doc, path, draw(wrong))
    elif kind == "huge":
        path = draw(
            st.sampled_from(
                [("evaluate", "batch_size"), ("stages", 0, "with", "batch_size"), ("stages", 0, "with", "epochs")]
            )
        )
        set_at(doc, path, draw(st.integers(min_value=10**6, max_value=10**40)))
    elif kind == "unknown-plugin":
        doc["stages"][0]["uses"] = "zz-" + draw(st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=10))
    else:
        set_at(doc, ("task", "kind"), draw(st.text(max_size=12).filter(lambda t: t != "sequence-classification")))
    return yaml.safe_dump(doc, allow_unicode=True).encode("utf-8")


def run_apply(tmp_path, content: bytes, capsys, name="recipe.yaml") -> tuple[int, str]:
    path = tmp_path / name
    path.write_bytes(content)
    out = tmp_path / "run-out"
    code = main(["apply", str(path), "--output", str(out), "-q"])
    captured = capsys.readouterr()
    assert not out.exists(), "an invalid recipe wrote a run folder"
    text = captured.out + captured.err
    assert "Traceback" not in text and "internal error" not in text, text
    return code, text


@COMMON
@given(content=broken_recipes())
def test_mutated_recipes_are_rejected_cleanly(tmp_path_factory, capsys, content):
    code, text = run_apply(tmp_path_factory.mktemp("r"), content, capsys)
    assert code == 2 and "error" in text


@COMMON
@given(document=junk)
def test_junk_documents_are_rejected_cleanly(tmp_path_factory, capsys, document):
    content = yaml.safe_dump(document, allow_unicode=True).encode("utf-8")
    code, text = run_apply(tmp_path_factory.mktemp("r"), content, capsys)
    assert code == 2 and "error" in text


@COMMON
@given(raw=st.binary(max_size=200), cut=st.integers(min_value=0, max_value=400))
def test_raw_bytes_and_non_utf8_are_rejected_cleanly(tmp_path_factory, capsys, raw, cut):
    valid = yaml.safe_dump(VALID).encode()
    content = valid[:cut] + b"\xff\xfe" + raw + valid[cut:]  # never UTF-8: 0xff cannot appear in UTF-8
    code, text = run_apply(tmp_path_factory.mktemp("r"), content, capsys)
    assert code == 2 and ("not UTF-8" in text or "error" in text)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(width=st.integers(min_value=5, max_value=12), depth=st.integers(min_value=5, max_value=9))
def test_alias_bombs_are_refused(tmp_path_factory, capsys, width, depth):
    lines = ["a0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    for level in range(1, depth):
        lines.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * width) + "]")
    code, text = run_apply(tmp_path_factory.mktemp("r"), "\n".join(lines).encode(), capsys)
    assert code == 2


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(length=st.integers(min_value=1, max_value=6))
def test_extends_cycles_are_refused(tmp_path_factory, capsys, length):
    folder = tmp_path_factory.mktemp("r")
    for i in range(length):
        (folder / f"r{i}.yaml").write_text(f"extends: r{(i + 1) % length}.yaml\nseed: {i}\n", encoding="utf-8")
    code, text = run_apply(folder, (folder / "r0.yaml").read_bytes(), capsys, name="r0.yaml")
    assert code == 2 and "cycle" in text
