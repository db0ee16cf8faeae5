"""compose.recipe.model_source: a model's folder, config and family, without torch or running any code."""

import json

from compose.recipe.model_source import model_config_dict, model_family, model_folder


def test_the_family_comes_from_the_task_first_then_the_config():
    bert = {"kind": "sequence-classification"}
    assert model_family({"task": {"kind": "causal-lm"}, "model": {"config": {}}}) == "decoder"
    assert model_family({"task": {"kind": "seq2seq"}, "model": {"config": {}}}) == "encoder-decoder"
    assert model_family({"task": bert, "model": {"config": {"model_type": "bert"}}}) == "encoder"
    assert model_family({"task": bert, "model": {"config": {"model_type": "qwen2"}}}) == "decoder"
    assert model_family({"task": bert, "model": {"config": {"is_encoder_decoder": True}}}) == "encoder-decoder"


def test_a_folders_config_is_read_and_a_broken_one_is_none(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert model_folder({"path": str(tmp_path)}) == tmp_path
    assert model_config_dict({"path": str(tmp_path)}) == {"model_type": "llama"}
    (tmp_path / "config.json").write_text("{not json")
    assert model_config_dict({"path": str(tmp_path)}) is None


def test_a_package_source_is_located_without_importing_it():
    folder = model_folder({"package": {"name": "json", "folder": "model"}})
    assert folder is not None and folder.name == "model" and folder.parent.name == "json"
    assert model_folder({"package": {"name": "no_such_package_here", "folder": "m"}}) is None
