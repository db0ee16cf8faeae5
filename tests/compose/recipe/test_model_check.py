"""compose.recipe.model_check and the data checks: validation says what is really wrong, before anything runs."""

import json
import os

import pytest

from compose.errors import RecipeError
from compose.recipe.load import load_recipe

STAGE = "- {name: ft, uses: train, with: {max_steps: 1}}\n"


def problems_of(recipe, overrides, host):
    with pytest.raises(RecipeError) as caught:
        load_recipe(recipe, overrides, host)
    return "\n".join(p.format() for p in caught.value.problems)


def model_folder(tmp_path, files, config=None):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps(config or {"model_type": "bert", "vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2})
    )
    for name in files:
        (folder / name).write_bytes(b"\x80\x04")
    return folder


def test_pickle_only_weights_are_refused_at_validation(write_recipe, host, tmp_path):
    folder = model_folder(tmp_path, ["pytorch_model.bin"])
    text = problems_of(write_recipe(STAGE), [f"model.path={folder}", "~model.config", "~model.tokenizer"], host)
    assert "$.model.path" in text and "pickle-only (pytorch_model.bin)" in text and "safetensors" in text


def test_a_config_asking_for_remote_code_is_refused_naming_auto_map(write_recipe, host, tmp_path):
    config = {"model_type": "bert", "auto_map": {"AutoModel": "modeling_evil.EvilModel"}}
    folder = model_folder(tmp_path, ["model.safetensors"], config)
    text = problems_of(write_recipe(STAGE), [f"model.path={folder}", "~model.config", "~model.tokenizer"], host)
    assert "auto_map asks for the model's own code (AutoModel)" in text and "trust_remote_code" in text


def test_a_config_larger_than_the_machines_memory_is_refused_naming_its_keys(write_recipe, host):
    text = problems_of(write_recipe(STAGE), ["model.config.hidden_size=2000000"], host)
    assert "$.model.config.hidden_size" in text and "hidden_size: 2000000" in text and "more than this machine" in text


@pytest.mark.parametrize("kind", ["folder", "fifo", "device", "unreadable"])
def test_data_that_is_not_a_readable_regular_file_is_named_for_what_it_is(
    write_recipe, host, tmp_path, kind, monkeypatch
):
    path = tmp_path / "data.tsv"
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path = "/dev/zero"
    else:
        path.write_text("sentence\tlabel\ngood\t1\n")
        path.chmod(0)
        real_access = os.access  # root reads anything: ask as a user without the permission would
        monkeypatch.setattr(
            "compose.recipe.data.os.access", lambda p, mode: False if str(p) == str(path) else real_access(p, mode)
        )
    text = problems_of(write_recipe(STAGE), [f"task.data.train.path={path}"], host)
    expected = {
        "folder": "is a folder, not a data file",
        "fifo": "is a named pipe (FIFO)",
        "device": "is a device, not a regular file",
        "unreadable": "cannot be read (permission denied)",
    }[kind]
    assert expected in text and "no such data file" not in text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"sentence\tlabel\ngood film\t1\nbad\x00film\t0\n", ":3: this line holds a NUL byte"),
        (b"sentence\tlabel\ngood film\t1\nbad \xff film\t0\n", ":3: this line is not UTF-8 text"),
    ],
)
def test_nul_bytes_and_undecodable_rows_are_refused_with_the_line_number(write_recipe, host, tmp_path, raw, expected):
    path = tmp_path / "data.tsv"
    path.write_bytes(raw)
    assert expected in problems_of(write_recipe(STAGE), [f"task.data.train.path={path}"], host)
