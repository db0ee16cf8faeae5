"""compose.run.artifacts: saved stage models reload bit-exactly, are written atomically, and are measured right."""

import json
from types import SimpleNamespace

import pytest
import torch

from compose.errors import ModelLoadError
from compose.run.artifacts import (
    MANIFEST,
    load_artifact,
    read_manifest,
    record_transform,
    save_artifact,
    size_on_disk,
    transforms_of,
)


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def logits(model, tokenizer):
    batch = tokenizer(["the film was great fun", "a dull and boring plot"], return_tensors="pt", padding=True)
    with torch.no_grad():
        return model.eval()(**batch).logits


def test_round_trip_is_bit_exact(tiny_bert, tmp_path):
    model, tokenizer = tiny_bert
    folder = save_artifact(
        model, tokenizer, tmp_path / "stage" / "model", "sequence-classification", extra={"note": "hi"}
    )
    assert folder == tmp_path / "stage" / "model"
    assert sorted(p.name for p in tmp_path.joinpath("stage").iterdir()) == ["model"]  # no .partial or .old left
    manifest = read_manifest(folder)
    assert manifest == {
        "format_version": 1,
        "task_kind": "sequence-classification",
        "model_class": "BertForSequenceClassification",
        "transforms": [],
        "note": "hi",
    }
    loaded, loaded_tokenizer = load_artifact(folder)
    assert type(loaded) is type(model) and not loaded.training
    assert same_weights(loaded, model)
    assert torch.equal(logits(loaded, loaded_tokenizer), logits(model, tokenizer))
    assert loaded_tokenizer.get_vocab() == tokenizer.get_vocab()


def test_saving_again_replaces_the_older_artifact(tiny_bert, tmp_path):
    model, tokenizer = tiny_bert
    folder = tmp_path / "model"
    save_artifact(model, tokenizer, folder, "sequence-classification")
    (folder / "stale.txt").write_text("from the first save")
    with torch.no_grad():
        model.classifier.weight.add_(1.0)
    save_artifact(model, None, folder, "sequence-classification")
    assert not (folder / "stale.txt").exists() and not (folder / "tokenizer_config.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    loaded, tokenizer_back = load_artifact(folder)
    assert tokenizer_back is None and same_weights(loaded, model)


def test_a_failed_save_leaves_the_older_artifact_and_no_partial_folder(tiny_bert, tmp_path):
    model, tokenizer = tiny_bert
    folder = tmp_path / "model"
    save_artifact(model, tokenizer, folder, "sequence-classification")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    class Broken:
        def save_pretrained(self, directory):
            (directory / "half-written").write_text("x")
            raise OSError("disk full")

    with torch.no_grad():
        model.classifier.weight.add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        save_artifact(model, Broken(), folder, "sequence-classification")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_a_leftover_partial_folder_is_never_mistaken_for_the_artifact(tiny_bert, tmp_path):
    model, tokenizer = tiny_bert
    partial = tmp_path / "model.partial"
    partial.mkdir()
    (partial / "config.json").write_text("{ killed mid-write")
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_artifact(tmp_path / "model")  # a killed save left only the .partial
    save_artifact(model, tokenizer, tmp_path / "model", "sequence-classification")
    assert not partial.exists()
    assert same_weights(load_artifact(tmp_path / "model")[0], model)


def test_size_on_disk_counts_every_file_or_only_the_weights(tiny_bert, tmp_path):
    model, tokenizer = tiny_bert
    folder = save_artifact(model, tokenizer, tmp_path / "model", "sequence-classification")
    files = [p for p in folder.rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix == ".safetensors"]
    assert weights and len(files) > len(weights)
    assert size_on_disk(folder) == sum(p.stat().st_size for p in files)
    assert size_on_disk(folder, weights_only=True) == sum(p.stat().st_size for p in weights)
    parameter_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert parameter_bytes <= size_on_disk(folder, weights_only=True) < parameter_bytes + 64 * 1024  # + header
    (folder / "sub").mkdir()
    (folder / "sub" / "graph.onnx").write_bytes(b"x" * 1000)  # exported graphs are weights, in sub-folders too
    (folder / "notes.md").write_bytes(b"y" * 10)
    assert size_on_disk(folder, weights_only=True) == sum(p.stat().st_size for p in weights) + 1000
    assert size_on_disk(folder) == sum(p.stat().st_size for p in files) + 1010


def test_record_transform_keeps_json_and_copies(tiny_bert):
    model, _ = tiny_bert
    assert transforms_of(model) == []
    record_transform(model, "shrink", {"layers": (0, 1), "name": "x"})
    record_transform(model, "other", {})
    got = transforms_of(model)
    assert got == [{"stage": "shrink", "info": {"layers": [0, 1], "name": "x"}}, {"stage": "other", "info": {}}]
    got[0]["info"]["layers"].append(9)  # a copy: the model's record is unchanged
    assert transforms_of(model)[0]["info"]["layers"] == [0, 1]
    with pytest.raises(TypeError):
        record_transform(model, "bad", {"x": object()})


def _drop_bias(model, info):
    """A structural change plain from_pretrained cannot rebuild: a classifier without bias."""
    old = getattr(model, info["layer"])
    setattr(model, info["layer"], torch.nn.Linear(old.in_features, old.out_features, bias=False))
    return model


def fake_host(**rebuilds):
    stages = {name: SimpleNamespace(rebuild=fn) for name, fn in rebuilds.items()}
    return SimpleNamespace(stages=stages, stage=lambda name: stages[name])


def test_transforms_are_rebuilt_before_the_weights_load(tiny_bert, tmp_path):
    model, tokenizer = tiny_bert
    _drop_bias(model, {"layer": "classifier"})
    torch.nn.init.normal_(model.classifier.weight)
    record_transform(model, "drop-bias", {"layer": "classifier"})
    folder = save_artifact(model, tokenizer, tmp_path / "model", "sequence-classification")
    assert read_manifest(folder)["transforms"] == [{"stage": "drop-bias", "info": {"layer": "classifier"}}]
    loaded, loaded_tokenizer = load_artifact(folder, fake_host(**{"drop-bias": _drop_bias}))
    assert loaded.classifier.bias is None and not loaded.training
    assert same_weights(loaded, model)
    assert torch.equal(logits(loaded, loaded_tokenizer), logits(model, tokenizer))
    assert transforms_of(loaded) == transforms_of(model)  # saving it again keeps the record

    with pytest.raises(ModelLoadError, match="changed by stage 'drop-bias', whose plugin is not installed"):
        load_artifact(folder, fake_host())
    with pytest.raises(ModelLoadError, match="changed by stage 'drop-bias'"):
        load_artifact(folder, fake_host(**{"drop-bias": None}))  # installed, but cannot rebuild
    with pytest.raises(
        ModelLoadError,
        match=r"weights do not match the rebuilt model "
        r"\(missing: \['classifier.bias'\], unexpected: \[\]\)",
    ):
        load_artifact(folder, fake_host(**{"drop-bias": lambda m, info: m}))  # a rebuild that does not rebuild


def test_unreadable_artifacts_are_load_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="is not a saved model"):
        load_artifact(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(ModelLoadError, match="compose-artifact.json is not valid JSON"):
        load_artifact(tmp_path)
    assert read_manifest(tmp_path / "elsewhere") == {"format_version": 1, "transforms": []}  # saved by others
