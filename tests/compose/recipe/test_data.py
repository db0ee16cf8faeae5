"""Reading data splits: local files and the Hugging Face `datasets` loading path."""

import re

import pytest

from compose.errors import DataError
from compose.recipe.data import read_split
from compose.tasks import build_task


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_tsv_csv_jsonl_with_text_pairs(tmp_path):
    cols = ["premise", "hypothesis", "label"]
    tsv = write(tmp_path, "a.tsv", "premise\thypothesis\tlabel\nit rains\tit is wet\tyes\n")
    csv_ = write(tmp_path, "a.csv", 'premise,hypothesis,label\n"a, b",c,no\n')
    jsonl = write(tmp_path, "a.jsonl", '{"premise": "x", "hypothesis": "y", "label": "yes"}\n\n')
    assert read_split("s", {"path": str(tsv), "format": "auto"}, cols, 0)[0]["hypothesis"] == "it is wet"
    assert read_split("s", {"path": str(csv_), "format": "auto"}, cols, 0)[0]["premise"] == "a, b"
    assert read_split("s", {"path": str(jsonl), "format": "auto"}, cols, 0)[0]["label"] == "yes"


def test_limit_and_shuffle_are_deterministic(tmp_path):
    path = write(tmp_path, "a.tsv", "sentence\tlabel\n" + "".join(f"s{i}\t0\n" for i in range(50)))
    spec = {"path": str(path), "format": "tsv", "limit": 5, "shuffle": True}
    first = read_split("s", spec, ["sentence", "label"], seed=3)
    assert first == read_split("s", spec, ["sentence", "label"], seed=3)
    assert len(first) == 5 and first != read_split("s", {**spec, "shuffle": False}, ["sentence", "label"], 3)


@pytest.mark.parametrize(
    "text, words",
    [
        ("text\tlabel\nx\t1\n", "no column 'sentence' (its header: text, label)"),
        ("", "no column"),
        ("sentence\tlabel\n", "has no rows"),
        ("sentence\tlabel\nonly-one-field\n", "different number of fields"),
    ],
)
def test_broken_files_are_explained(tmp_path, text, words):
    path = write(tmp_path, "a.tsv", text)
    with pytest.raises(DataError, match=re.escape(words)):
        read_split("train", {"path": str(path), "format": "auto"}, ["sentence", "label"], 0)


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(DataError, match="no such data file"):
        read_split("train", {"path": str(tmp_path / "nope.tsv"), "format": "auto"}, ["a"], 0)
    with pytest.raises(DataError, match="set format"):
        read_split("train", {"path": str(write(tmp_path, "a.dat", "a\n1\n")), "format": "auto"}, ["a"], 0)


def test_a_text_file_gives_one_row_per_line_under_the_text_column(tmp_path):
    path = write(tmp_path, "wiki.tokens", " = Title = \n\n Some text .\n")
    assert read_split("train", {"path": str(path), "format": "auto"}, ["text"], 0) == [
        {"text": " = Title = "},
        {"text": ""},
        {"text": " Some text ."},
    ]
    with pytest.raises(DataError, match="plain text"):
        read_split("train", {"path": str(path), "format": "text"}, ["sentence", "label"], 0)


def test_labels_outside_the_label_set_name_the_row(tmp_path):
    path = write(tmp_path, "a.tsv", "sentence\tlabel\nfine\t1\nodd\t2\n")
    task = build_task(
        {
            "kind": "sequence-classification",
            "data": {"train": {"path": str(path), "format": "auto"}},
            "text_column": "sentence",
            "text_pair_column": None,
            "label_column": "label",
            "labels": [0, 1],
            "max_length": 16,
            "metric": "accuracy",
        },
        0,
    )
    with pytest.raises(DataError, match="row 2 has label '2'"):
        task.rows("train")


def test_hugging_face_datasets_path_with_a_local_file(tmp_path):
    pytest.importorskip("datasets")  # an optional dependency; gptqmodel brings it here
    path = write(tmp_path, "a.csv", "sentence,label\ngood,1\nbad,0\n")
    spec = {"dataset": "csv", "config": None, "split": "train", "data_files": str(path)}
    rows = read_split("train", spec, ["sentence", "label"], 0)
    assert [r["sentence"] for r in rows] == ["good", "bad"]


def test_a_holdout_splits_one_file_in_two_parts_that_never_share_a_row(tmp_path):
    from compose.recipe.data import read_split

    path = tmp_path / "train.tsv"
    path.write_text("sentence\tlabel\n" + "".join(f"row {i}\t{i % 2}\n" for i in range(400)), encoding="utf-8")
    held = {"path": str(path), "holdout": {"share": 0.25, "seed": 3, "part": "held"}}
    rest = {"path": str(path), "holdout": {"share": 0.25, "seed": 3, "part": "rest"}, "shuffle": True, "limit": 200}
    held_rows = read_split("selection", held, ["sentence", "label"], seed=0)
    rest_rows = read_split("train", {**rest, "limit": None}, ["sentence", "label"], seed=0)
    assert 70 <= len(held_rows) <= 130 and len(held_rows) + len(rest_rows) == 400
    assert not {r["sentence"] for r in held_rows} & {r["sentence"] for r in rest_rows}
    assert len(read_split("train", rest, ["sentence", "label"], seed=0)) == 200  # limit and shuffle apply after
    again = read_split("selection", held, ["sentence", "label"], seed=9)  # the recipe's seed does not move it
    assert again == held_rows
    other = read_split("selection", {**held, "holdout": {**held["holdout"], "seed": 4}}, ["sentence", "label"], seed=0)
    assert other != held_rows


def test_a_holdout_by_whole_texts_holds_out_sentences_and_trains_on_none_of_their_phrases(tmp_path):
    from compose.recipe.data import read_split

    sentences = [[f"s{i}w{k}" for k in range(6)] for i in range(80)]
    rows = []
    for words in sentences:  # a sentence and three of its phrases, as SST-2's train file holds them
        rows += [" ".join(words), " ".join(words[0:2]), " ".join(words[2:5]) + "  ", " ".join(words[1:4])]
    path = tmp_path / "train.tsv"
    path.write_text("sentence\tlabel\n" + "".join(f"{text}\t{i % 2}\n" for i, text in enumerate(rows)), "utf-8")
    holdout = {"share": 0.25, "seed": 0, "whole_texts": True}
    columns = ["sentence", "label"]
    held = [
        r["sentence"]
        for r in read_split("selection", {"path": str(path), "holdout": {**holdout, "part": "held"}}, columns, 0)
    ]
    rest = [
        r["sentence"]
        for r in read_split("train", {"path": str(path), "holdout": {**holdout, "part": "rest"}}, columns, 0)
    ]
    assert 10 <= len(held) <= 30 and all(len(text.split()) == 6 for text in held)  # whole sentences only

    def sentence(text):  # "s12w3 s12w4" is a phrase of sentence s12
        return text.split()[0].split("w")[0]

    assert not {sentence(text) for text in held} & {sentence(text) for text in rest}  # no phrase of a held one
    assert len(rest) == 4 * (80 - len(held))  # every row of every other sentence is kept
    plain = {"path": str(path), "holdout": {**holdout, "whole_texts": False, "part": "held"}}
    assert any(len(r["sentence"].split()) < 6 for r in read_split("selection", plain, columns, 0))


def _pair_file(tmp_path):
    """Sentence pairs where each first sentence recurs in several pairs (as paraphrase corpora do)."""
    rows = [(f"first {i // 4} a b", f"second {i} c d", i % 2) for i in range(400)]
    path = tmp_path / "pairs.tsv"
    path.write_text("#1 String\t#2 String\tlabel\n" + "".join(f"{a}\t{b}\t{y}\n" for a, b, y in rows), "utf-8")
    return path


def test_a_holdout_by_group_keeps_every_pair_of_a_sentence_on_one_side(tmp_path):
    path = _pair_file(tmp_path)
    columns = ["#1 String", "#2 String", "label"]
    holdout = {"share": 0.25, "seed": 0, "group_by": "#1 String"}
    held = read_split("selection", {"path": str(path), "holdout": {**holdout, "part": "held"}}, columns, 0)
    rest = read_split("train", {"path": str(path), "holdout": {**holdout, "part": "rest"}}, columns, 0)
    assert len(held) + len(rest) == 400 and len(held) % 4 == 0 and 60 <= len(held) <= 140
    assert not {r["#1 String"] for r in held} & {r["#1 String"] for r in rest}
    # a plain holdout splits the groups: the same sentence lands on both sides
    plain = {"share": 0.25, "seed": 0}
    held_plain = read_split("selection", {"path": str(path), "holdout": {**plain, "part": "held"}}, columns, 0)
    rest_plain = read_split("train", {"path": str(path), "holdout": {**plain, "part": "rest"}}, columns, 0)
    assert {r["#1 String"] for r in held_plain} & {r["#1 String"] for r in rest_plain}


def test_a_group_over_two_columns_ties_a_sentence_found_in_either(tmp_path):
    rows = [("s0", "s1"), ("s1", "s2"), ("s3", "s4"), ("s5", "s3")] * 1 + [(f"x{i}", f"y{i}") for i in range(200)]
    path = tmp_path / "pairs.tsv"
    path.write_text("a\tb\tlabel\n" + "".join(f"{a}\t{b}\t0\n" for a, b in rows), "utf-8")
    holdout = {"share": 0.5, "seed": 1, "group_by": ["a", "b"]}
    held = read_split("h", {"path": str(path), "holdout": {**holdout, "part": "held"}}, ["a", "b", "label"], 0)
    texts = {r["a"] for r in held} | {r["b"] for r in held}
    assert ("s0" in texts) == ("s2" in texts) and ("s4" in texts) == ("s5" in texts)  # chained through s1, s3


def test_whole_texts_on_pairs_compare_both_texts(tmp_path):
    rows = [(f"w{i} x y z", f"v{i} p q r") for i in range(60)] + [(f"v{i} p", f"other {i}") for i in range(60)]
    path = tmp_path / "pairs.tsv"
    path.write_text("a\tb\tlabel\n" + "".join(f"{a}\t{b}\t0\n" for a, b in rows), "utf-8")
    holdout = {"share": 0.5, "seed": 0, "whole_texts": True}
    spec = {"path": str(path)}
    kwargs = {"text_columns": ["a", "b"]}
    held = read_split("h", {**spec, "holdout": {**holdout, "part": "held"}}, ["a", "b", "label"], 0, **kwargs)
    rest = read_split("r", {**spec, "holdout": {**holdout, "part": "rest"}}, ["a", "b", "label"], 0, **kwargs)
    # rows whose first text is a phrase of another row's second text are never drawn, and a held pair's second
    # text takes every row holding one of its phrases out of training
    assert held and all(r["a"].startswith("w") for r in held)
    held_second = {r["b"].split()[0] for r in held}
    assert not any(r["a"].split()[0] in held_second for r in rest)
