"""extends: chains and command-line overrides."""

import pytest

from compose.recipe.composition import CompositionError, apply_overrides, load_composed, path_base

BASE = """\
model: {hub: base-model}
task:
  kind: sequence-classification
  data: {train: {path: data/train.tsv}}
stages:
  - {name: ft, uses: train, with: {epochs: 1}}
  - {name: q, uses: gptq, with: {bits: 4}}
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_extends_deep_merges_and_patches_stages_by_name(tmp_path):
    write(tmp_path, "base/base.yaml", BASE)
    child = write(
        tmp_path,
        "child.yaml",
        "extends: base/base.yaml\nmodel: {revision: v2}\nstages:\n  ft: {with: {epochs: 3}}\n  q: null\n",
    )
    doc = load_composed(child)
    assert doc["model"] == {"hub": "base-model", "revision": "v2"}
    assert doc["stages"] == [{"name": "ft", "uses": "train", "with": {"epochs": 3}}]
    # the base's relative data path stays relative to the base file
    assert path_base(doc["task"]["data"]["train"], "path") == tmp_path / "base"


def test_a_stages_list_replaces_the_base_list(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    child = write(tmp_path, "child.yaml", "extends: base.yaml\nstages:\n  - {name: only, uses: train}\n")
    assert [s["name"] for s in load_composed(child)["stages"]] == ["only"]


def test_patching_an_unknown_stage_names_the_known_ones(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    child = write(tmp_path, "child.yaml", "extends: base.yaml\nstages:\n  nope: {with: {}}\n")
    with pytest.raises(CompositionError, match=r"no stage of that name \(it has: ft, q\)"):
        load_composed(child)


def test_extends_cycle_is_reported(tmp_path):
    write(tmp_path, "a.yaml", "extends: b.yaml\nmodel: {hub: x}\n")
    write(tmp_path, "b.yaml", "extends: a.yaml\n")
    with pytest.raises(CompositionError, match="cycle"):
        load_composed(tmp_path / "a.yaml")


def test_extends_missing_file(tmp_path):
    path = write(tmp_path, "a.yaml", "extends: nowhere.yaml\n")
    with pytest.raises(CompositionError, match="no file") as info:
        load_composed(path)
    assert info.value.problems[0].line == 1


def test_overrides_set_delete_and_address_stages(tmp_path):
    doc = load_composed(write(tmp_path, "r.yaml", BASE))
    out = apply_overrides(
        doc, ["stages.q.with.bits=3", "stages.0.with.epochs=2", "~stages.q.with", "seed=7", "model.x=[1, 2]"], tmp_path
    )
    assert out["stages"][1] == {"name": "q", "uses": "gptq"}
    assert out["stages"][0]["with"] == {"epochs": 2}
    assert out["seed"] == 7 and out["model"]["x"] == [1, 2]
    assert "seed" not in doc


@pytest.mark.parametrize(
    "override, words",
    [
        ("stages.nope.with.bits=3", "no stage named 'nope'"),
        ("~model.nothing", "no such key"),
        ("justtext", "key.path=value"),
        ("stages.9.with.bits=3", "out of range"),
        ("a..b=1", "not a key path"),
    ],
)
def test_bad_overrides_are_explained(tmp_path, override, words):
    doc = load_composed(write(tmp_path, "r.yaml", BASE))
    with pytest.raises(CompositionError, match=words):
        apply_overrides(doc, [override], tmp_path)


def test_a_new_stage_goes_before_or_after_the_one_it_names(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    child = write(
        tmp_path,
        "child.yaml",
        "extends: base.yaml\nstages:\n  v: {uses: prune-vocab, before: q}\n  e: {uses: export, after: q, with: {}}\n",
    )
    stages = load_composed(child)["stages"]
    assert [(s["name"], s["uses"]) for s in stages] == [
        ("ft", "train"),
        ("v", "prune-vocab"),
        ("q", "gptq"),
        ("e", "export"),
    ]
    assert "before" not in stages[1] and "after" not in stages[3]


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ("v: {uses: prune-vocab}", r"no stage of that name \(it has: ft, q\); to add it, give its `uses` and one of"),
        ("v: {uses: prune-vocab, before: nope}", r"to go before 'nope', which the base recipe does not have"),
        ("v: {uses: prune-vocab, before: q, after: ft}", "one of `before: STAGE` or `after: STAGE`"),
        ("ft: {before: q}", "already in the base recipe"),
    ],
)
def test_a_new_stage_without_a_place_is_refused_with_the_fix(tmp_path, patch, message):
    write(tmp_path, "base.yaml", BASE)
    child = write(tmp_path, "child.yaml", f"extends: base.yaml\nstages:\n  {patch}\n")
    with pytest.raises(CompositionError, match=message):
        load_composed(child)
