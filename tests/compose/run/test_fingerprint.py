"""compose.run.fingerprint: what a finished stage's result depends on, and nothing else."""

import dataclasses
import os
import shutil
from types import SimpleNamespace

from compose.recipe.load import load_recipe
from compose.run.fingerprint import evaluation_fingerprint, file_digest, folder_digest, stage_fingerprints

STAGES = """\
- {name: a, uses: train, with: {max_steps: 3, learning_rate: 1.0e-3}}
- {name: b, uses: train, with: {max_steps: 3}}
- {name: c, uses: train, with: {max_steps: 3}}
"""


def prints(path, host, overrides=()):
    recipe = load_recipe(path, list(overrides), host)
    return stage_fingerprints(recipe, host), evaluation_fingerprint(recipe, threads=1)


def changed(before, after) -> list[bool]:
    return [x != y for x, y in zip(before, after)]


def test_a_stage_change_changes_that_stage_and_the_ones_after(write_recipe, host):
    path = write_recipe(STAGES)
    base, evaluation = prints(path, host)
    assert len(base) == 4 and len(set(base)) == 4  # the input row and each stage
    assert prints(path, host) == (base, evaluation)  # stable
    new, new_eval = prints(path, host, ["stages.b.with.max_steps=4"])
    assert changed(base, new) == [False, False, True, True]
    new, _ = prints(path, host, ["stages.a.with.learning_rate=2.0e-3"])
    assert changed(base, new) == [False, True, True, True]
    new, _ = prints(path, host, ["stages.c.name=z"])  # a stage's name is part of its entry
    assert changed(base, new) == [False, False, False, True]
    assert new_eval == evaluation


def test_what_the_input_row_depends_on(write_recipe, host):
    base, _ = prints(write_recipe(STAGES), host)
    for override in ("seed=1", "task.max_length=12", "model.config.hidden_size=48", "model.fine_tuned=true"):
        new, _ = prints(write_recipe(STAGES), host, [override])
        assert changed(base, new) == [True] * 4, override


def test_edits_that_change_nothing_keep_the_fingerprints(write_recipe, host):
    path = write_recipe(STAGES)
    base = prints(path, host)
    text = path.read_text()
    reordered = text.replace("{max_steps: 3, learning_rate: 1.0e-3}", "{learning_rate: 0.001, max_steps: 3}")
    assert reordered != text
    block_style = (
        "- name: b\n    with:\n      max_steps: 3\n      warmup_ratio: 0.1  # the default, written out\n    uses: train"
    )
    reordered = reordered.replace("- {name: b, uses: train, with: {max_steps: 3}}", block_style)
    path.write_text("# what this recipe is for\n" + reordered.replace("seed: 0", "seed: 0  # the usual seed"))
    assert prints(path, host) == base
    assert prints(path, host, ["output.dir=elsewhere", "output.save_artifacts=false"]) == base


def test_data_bytes_count_not_their_path_or_time(write_recipe, host, tiny_data_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_data_dir, copy)
    path = write_recipe(STAGES)
    moved = [f"task.data.train.path={copy / 'train.tsv'}", f"task.data.dev.path={copy / 'dev.tsv'}"]
    base, evaluation = prints(path, host)
    assert prints(path, host, moved) == (base, evaluation)  # same bytes elsewhere
    os.utime(copy / "train.tsv", ns=(1, 1))  # touched: same bytes
    assert prints(path, host, moved) == (base, evaluation)
    with open(copy / "train.tsv", "a", encoding="utf-8") as handle:
        handle.write("good great film\t1\n")
    new, new_eval = prints(path, host, moved)
    assert changed(base, new) == [True] * 4
    assert new_eval == evaluation  # the training split is not what evaluation reads
    with open(copy / "dev.tsv", "a", encoding="utf-8") as handle:
        handle.write("bad dull film\t0\n")
    assert prints(path, host, moved)[1] != evaluation


def test_a_local_tokenizer_counts_by_its_files_not_its_path(write_recipe, host, tiny_tokenizer_dir, tmp_path):
    copy = tmp_path / "tok"
    shutil.copytree(tiny_tokenizer_dir, copy)
    path = write_recipe(STAGES)
    base, _ = prints(path, host)
    assert prints(path, host, [f"model.tokenizer.path={copy}"])[0] == base
    (copy / "tokenizer.json").write_text((copy / "tokenizer.json").read_text() + "\n")
    assert changed(base, prints(path, host, [f"model.tokenizer.path={copy}"])[0]) == [True] * 4
    assert folder_digest(copy) != folder_digest(tiny_tokenizer_dir)
    (copy / "tokenizer.json").write_bytes((tiny_tokenizer_dir / "tokenizer.json").read_bytes())
    assert folder_digest(copy) == folder_digest(tiny_tokenizer_dir)
    (copy / "new.txt").write_text("")
    assert folder_digest(copy) != folder_digest(tiny_tokenizer_dir)  # an added file counts too


def test_file_digest_sees_a_rewrite(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"one")
    first = file_digest(path)
    path.write_bytes(b"two, longer")
    assert file_digest(path) != first
    path.write_bytes(b"one")
    assert file_digest(path) == first


def test_the_plugins_package_and_version_count(write_recipe, host):
    recipe = load_recipe(write_recipe(STAGES), [], host)
    base = stage_fingerprints(recipe, host)
    registered = host.stages["train"]
    upgraded = dataclasses.replace(registered.plugin, version=registered.plugin.version + ".post1")
    other = SimpleNamespace(stages={"train": SimpleNamespace(plugin=upgraded, stage=registered.stage)})
    assert changed(base, stage_fingerprints(recipe, other)) == [False, True, True, True]


def test_evaluation_settings_have_their_own_fingerprint(write_recipe, host):
    path = write_recipe(STAGES)
    base, evaluation = prints(path, host)
    for override in ("evaluate.batch_size=8", "evaluate.limit=10", "evaluate.latency.enabled=false"):
        new, new_eval = prints(path, host, [override])
        assert new == base and new_eval != evaluation, override
    recipe = load_recipe(path, [], host)
    assert evaluation_fingerprint(recipe, threads=2) != evaluation_fingerprint(recipe, threads=1)


def test_a_trained_tokenizers_settings_count(write_recipe, host):
    path = write_recipe(STAGES)
    trained = ["~model.tokenizer.path", "model.tokenizer.train.vocab_size=300"]
    base, _ = prints(path, host, trained)
    assert prints(path, host, trained)[0] == base
    other, _ = prints(path, host, trained[:1] + ["model.tokenizer.train.vocab_size=400"])
    assert changed(base, other) == [True] * 4
