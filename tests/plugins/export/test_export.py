"""The `export` stage: ONNX for a BERT classifier, a from_pretrained checkpoint for a Llama.

Each artifact is also loaded the way a user without recipe-compose would: in a
subprocess that imports only onnxruntime/tokenizers/numpy (encoder), or only
transformers (decoder), and must give the same predictions.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from compose.api import load_artifact
from compose.cli.main import main
from compose.testing import HANG_S, recipe_command

TRAIN = "- {name: ft, uses: train, with: {epochs: 2, learning_rate: 3.0e-3, batch_size: 16, eval_every_epoch: false}}\n"
#: conftest's TINY_BERT, wider so that 4-bit blocks of 32 fit the layers.
WIDE_BERT = {
    "model_type": "bert",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "max_position_embeddings": 64,
    "vocab_size": 31,
}

ONNX_ONLY = textwrap.dedent(
    """\
    import json, sys
    import numpy as np, onnxruntime as ort
    from tokenizers import Tokenizer

    folder, texts = sys.argv[1], json.loads(sys.argv[2])
    tokenizer = Tokenizer.from_file(folder + "/tokenizer.json")  # pads and truncates as the evaluation did
    session = ort.InferenceSession(folder + "/model.onnx", providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    batch = tokenizer.encode_batch(texts)
    feeds = {name: np.array([getattr(e, attr) for e in batch], dtype=np.int64) for name, attr in
             (("input_ids", "ids"), ("attention_mask", "attention_mask"), ("token_type_ids", "type_ids"))
             if name in wanted}
    logits = session.run(["logits"], feeds)[0]
    labels = json.load(open(folder + "/config.json"))["id2label"]
    assert "torch" not in sys.modules and "transformers" not in sys.modules, sorted(sys.modules)
    print(json.dumps({"logits": logits.tolist(), "labels": [labels[str(i)] for i in logits.argmax(-1)]}))
    """
)


def _apply(write_recipe, tmp_path, stages, **kwargs) -> dict:
    out = tmp_path / "run"
    assert main(["apply", str(write_recipe(stages, **kwargs)), "--output", str(out), "--json", "-q"]) == 0
    return json.loads((out / "report.json").read_text())


def _dev_texts(tiny_data_dir) -> list[str]:
    return [line.split("\t")[0] for line in (tiny_data_dir / "dev.tsv").read_text().splitlines()[1:]]


def _torch_logits(model, tokenizer, texts):
    with torch.no_grad():
        return model(**tokenizer(texts, padding=True, return_tensors="pt")).logits


def _onnx_alone(folder, texts) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", ONNX_ONLY, str(folder), json.dumps(texts)],
        capture_output=True,
        text=True,
        timeout=HANG_S,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_train_then_export_fp32_matches_pytorch_and_loads_with_onnxruntime_alone(write_recipe, tmp_path, tiny_data_dir):
    stages = TRAIN + "- {name: deploy, uses: export, with: {weights: fp32, embeddings: fp32}}\n"
    report = _apply(write_recipe, tmp_path, stages)
    assert report["status"] == "passed"
    ft, deploy = report["stages"][1:]
    folder = deploy["artifact"]
    assert deploy["plugin"] == "export" and folder.endswith("02-deploy/model")
    assert {"model.onnx", "tokenizer.json", "config.json", "export.json", "README.md"} <= {
        p.name for p in Path(folder).iterdir()
    }
    assert deploy["details"]["agreement"] == 1.0 and deploy["details"]["max_logit_difference"] < 1e-4
    assert deploy["details"]["optimization"]["applied"] and deploy["details"]["optimization"]["fusions"]
    assert deploy["metric"]["value"] == pytest.approx(ft["metric"]["value"], abs=1e-9)
    assert deploy["params"] == ft["params"] and deploy["weights_bytes"] > 0

    texts = _dev_texts(tiny_data_dir)
    model, tokenizer = load_artifact(ft["artifact"])
    expected = _torch_logits(model.eval(), tokenizer, texts)
    alone = _onnx_alone(folder, texts)
    assert torch.allclose(torch.tensor(alone["logits"]), expected, atol=1e-4)
    names = model.config.id2label
    assert alone["labels"] == [names[int(i)] for i in expected.argmax(-1)]


def test_int8_and_int4_exports_keep_predictions_and_shrink(write_recipe, tmp_path, tiny_data_dir):
    runs = {}
    for setting in ("{weights: int8, embeddings: int4}", "{weights: int4, embeddings: int8, per_channel: true}"):
        stages = TRAIN + f"- {{name: deploy, uses: export, with: {setting}}}\n"
        runs[setting] = _apply(write_recipe, tmp_path / str(len(runs)), stages, config=WIDE_BERT)
    texts = _dev_texts(tiny_data_dir)
    for report in runs.values():
        assert report["status"] == "passed"
        ft, deploy = report["stages"][1:]
        assert deploy["details"]["agreement"] >= 0.95
        assert deploy["weights_bytes"] < ft["weights_bytes"] / 2  # tiny: position embeddings, pooler stay fp32
        assert deploy["metric"]["value"] >= ft["metric"]["value"] - 0.05
        model, tokenizer = load_artifact(ft["artifact"])
        expected = _torch_logits(model.eval(), tokenizer, texts)
        alone = torch.tensor(_onnx_alone(deploy["artifact"], texts)["logits"])
        assert (alone.argmax(-1) == expected.argmax(-1)).float().mean() >= 0.95
        assert (alone - expected).abs().max() < 0.1 * expected.abs().max()


def test_a_stage_after_export_is_rejected(write_recipe, capsys):
    stages = "- {name: deploy, uses: export}\n- {name: ft, uses: train}\n"
    assert main(["validate", str(write_recipe(stages)), "model.fine_tuned=true"]) == 2
    out = capsys.readouterr()
    assert "export must be the last stage" in out.out + out.err and "'ft'" in out.out + out.err


def test_t5_is_refused_with_what_to_use_instead(write_recipe, capsys):
    recipe = write_recipe("- {name: deploy, uses: export}\n", family="encoder-decoder")
    assert main(["validate", str(recipe), "model.fine_tuned=true"]) == 2
    out = capsys.readouterr()
    assert "does not support encoder-decoder (T5)" in out.out + out.err and "load_artifact" in out.out + out.err


def test_export_dequantizes_gptq_layers_of_an_encoder(write_recipe, tmp_path):
    stages = TRAIN + "- {name: q, uses: gptq, with: {bits: 4, group_size: 32, samples: 32}}\n"
    stages += "- {name: deploy, uses: export, with: {weights: fp32, embeddings: fp32}}\n"
    report = _apply(write_recipe, tmp_path, stages, config=WIDE_BERT)
    assert report["status"] == "passed"
    _, q, deploy = report["stages"][1:]
    # the blocks' 12 packed linears, and the 3 embedding tables gptq packs row-wise by default
    assert deploy["details"]["replaced_with_float"] == {"gptq_packed": 12, "dequantized": 3}
    assert deploy["details"]["agreement"] == 1.0 and deploy["details"]["max_logit_difference"] < 1e-3
    assert deploy["metric"]["value"] == pytest.approx(q["metric"]["value"], abs=1e-9)


PLAIN_LOAD = textwrap.dedent(
    """\
    import json, sys
    import torch, transformers

    folder, ids = sys.argv[1], json.loads(sys.argv[2])
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(ids)).logits
    assert not any(name == "compose" or name.startswith("compose.") for name in sys.modules)
    print(json.dumps(logits.tolist()))
    """
)


def test_llama_train_gptq_export_loads_with_plain_from_pretrained(write_recipe, tmp_path):
    stages = TRAIN + "- {name: q, uses: gptq, with: {bits: 4, group_size: 32, samples: 64}}\n"
    stages += "- {name: deploy, uses: export}\n"
    report = _apply(write_recipe, tmp_path, stages, family="decoder")
    assert report["status"] == "passed"
    _, q, deploy = report["stages"][1:]
    assert deploy["details"]["format"] == "gptq" and "from_pretrained" in deploy["details"]["loads_with"]
    assert deploy["metric"]["value"] == pytest.approx(q["metric"]["value"], rel=1e-3)
    ids = [[5, 9, 14, 30, 2, 7]]
    done = subprocess.run(
        [sys.executable, "-c", PLAIN_LOAD, deploy["artifact"], json.dumps(ids)],
        capture_output=True,
        text=True,
        timeout=HANG_S,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    model, _ = load_artifact(q["artifact"])
    with torch.no_grad():
        expected = model.eval()(input_ids=torch.tensor(ids)).logits
    got = torch.tensor(json.loads(done.stdout.strip().splitlines()[-1]))
    # GPTQModel loads the checkpoint into its own CPU kernel: same packed weights, other arithmetic
    assert (got - expected).abs().max() <= 1e-2 * expected.abs().max()


def test_head_pruned_encoder_exports_with_the_same_predictions(write_recipe, tmp_path):
    stages = TRAIN + "- {name: p, uses: prune-heads, with: {ratio: 0.5, calibration_batches: 2}}\n"
    stages += "- {name: deploy, uses: export, with: {weights: fp32, embeddings: fp32}}\n"
    report = _apply(write_recipe, tmp_path, stages, config=WIDE_BERT)
    assert report["status"] == "passed"
    _, p, deploy = report["stages"][1:]
    pruned, _ = load_artifact(p["artifact"])
    heads = [layer.attention.self.num_attention_heads for layer in pruned.bert.encoder.layer]
    optimization = deploy["details"]["optimization"]
    assert optimization["applied"]
    # ORT's fused Attention takes one head count: with uneven heads, attention stays unfused
    assert ("Attention" in optimization["fusions"]) == (len(set(heads)) == 1), (heads, optimization)
    assert deploy["details"]["agreement"] == 1.0 and deploy["details"]["max_logit_difference"] < 1e-4
    assert deploy["metric"]["value"] == pytest.approx(p["metric"]["value"], abs=1e-9)


#: A logging record as basicConfig ("INFO:name:...") or ONNX Runtime's own format ("... name [INFO] - ...") print it.
LOG_LINE = re.compile(r"(^|\[)(DEBUG|INFO|WARNING)(\]|:)")


@pytest.mark.parametrize("verbose", [False, True], ids=["default", "-v"])
def test_onnx_runtime_quantizer_logs_stay_off_the_terminal_unless_verbose(write_recipe, tmp_path, verbose):
    """ONNX Runtime's MatMulNBits quantizer calls logging.basicConfig(level=INFO) on import and then logs
    per node; a fresh process (the import's first time) must show none of it, unless `recipe -v`."""
    stages = TRAIN + "- {name: deploy, uses: export, with: {weights: int4, embeddings: int4}}\n"
    command = [
        *recipe_command(),
        *(["-v"] if verbose else []),
        "apply",
        str(write_recipe(stages, config=WIDE_BERT)),
        "--output",
        str(tmp_path / "run"),
        "-q",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=HANG_S)
    assert done.returncode == 0, done.stderr[-3000:]
    logged = [line for line in done.stderr.splitlines() if LOG_LINE.search(line)]
    if verbose:
        assert any("onnx" in line.lower() or "quantiz" in line.lower() for line in logged), done.stderr[-3000:]
    else:
        assert logged == [], "\n".join(logged[:20])
