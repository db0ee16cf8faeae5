"""The `gptq` stage on a small real BERT with the real GPTQModel engine.

The model is TINY_BERT widened to hidden 128 / FFN 256 so that group size 128 fits
the layers' in_features (GPTQModel's kernels accept groups of 16..1024).
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from compose.api import load_artifact, save_artifact
from compose.cli.main import main
from compose.recipe import load_recipe

#: conftest's TINY_BERT (same vocabulary and depth), 4x wider.
WIDE_BERT = {
    "model_type": "bert",
    "hidden_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 256,
    "max_position_embeddings": 64,
    "vocab_size": 31,
}
LINEARS_PER_BLOCK = 6  # query, key, value, attention output, intermediate, output


@pytest.fixture
def wide_bert(tiny_tokenizer_dir):
    from transformers import AutoConfig, AutoTokenizer, BertForSequenceClassification

    settings = {k: v for k, v in WIDE_BERT.items() if k != "model_type"}
    torch.manual_seed(0)
    model = BertForSequenceClassification(AutoConfig.for_model("bert", num_labels=2, **settings)).eval()
    return model, AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


def _quantize(make_context, model, tokenizer, settings: str):
    ctx = make_context(f"- {{name: q, uses: gptq, with: {{{settings}}}}}", model, tokenizer, config=WIDE_BERT)
    return ctx, ctx.plugin_host.stage("gptq").run(ctx)


def _logits(model, ctx, split="dev"):
    with torch.no_grad():
        return torch.cat([model(**{k: v for k, v in b.items() if k != "labels"}).logits
                          for b in ctx.task.batches(split, ctx.tokenizer, 32)])  # fmt: skip


def _packed(model):
    from gptqmodel.nn_modules.qlinear.torch import TorchLinear

    return {n: m for n, m in model.named_modules() if isinstance(m, TorchLinear)}


def test_packs_the_blocks_and_reloads_to_identical_outputs(make_context, wide_bert, tmp_path):
    model, tokenizer = wide_bert
    original = copy.deepcopy(model)
    ctx, result = _quantize(make_context, model, tokenizer, "bits: 8, samples: 64")
    quantized = result.model
    packed = _packed(quantized)
    assert len(packed) == result.details["layers_quantized"] == 2 * LINEARS_PER_BLOCK
    assert all(n.startswith("bert.encoder.layer.") for n in packed)
    assert not any(isinstance(m, torch.nn.Linear) for m in quantized.bert.encoder.modules())
    assert isinstance(quantized.classifier, torch.nn.Linear) and isinstance(quantized.bert.pooler.dense, torch.nn.Linear)
    query = packed["bert.encoder.layer.0.attention.self.query"]
    assert query.qweight.dtype == torch.int32 and tuple(query.qweight.shape) == (128 * 8 // 32, 128)
    assert tuple(query.scales.shape) == (1, 128) and query.g_idx.tolist() == [0] * 128

    fp32, q8 = _logits(original, ctx), _logits(quantized, ctx)
    assert torch.nn.functional.cosine_similarity(fp32.flatten(), q8.flatten(), dim=0) > 0.99

    folder = save_artifact(quantized, tokenizer, tmp_path / "artifact", "sequence-classification")
    config = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "gptq" and config["checkpoint_format"] == "gptq"
    assert (config["bits"], config["group_size"], config["sym"], config["desc_act"]) == (8, 128, True, False)
    state = load_file(folder / "model.safetensors")
    prefix = "bert.encoder.layer.0.attention.self.query."
    assert {k for k in state if k.startswith(prefix)} == {prefix + s for s in ("qweight", "qzeros", "scales", "g_idx", "bias")}
    assert state[prefix + "qweight"].dtype == torch.int32 and "bert.encoder.layer.0.attention.self.query.weight" not in state
    # checkpoint_format gptq (v1) stores every 8-bit zero point minus one; memory keeps v2
    assert torch.equal(state[prefix + "qzeros"], query.qzeros - 0x01010101)

    reloaded, _ = load_artifact(folder, ctx.plugin_host)
    assert len(_packed(reloaded)) == 2 * LINEARS_PER_BLOCK
    assert torch.equal(_logits(reloaded, ctx), q8)
    assert reloaded.config.quantization_config["bits"] == 8


def _dequantize_gptq_v1(qweight, qzeros, scales, g_idx, bits):
    """[in, out] weights from the GPTQ v1 checkpoint layout (AutoGPTQ's), read independently of GPTQModel."""
    shifts = torch.arange(0, 32, bits, dtype=torch.int32)
    mask = 2**bits - 1
    codes = ((qweight.unsqueeze(1) >> shifts.view(1, -1, 1)) & mask).reshape(-1, qweight.shape[1])
    zeros = ((qzeros.unsqueeze(2) >> shifts.view(1, 1, -1)) & mask).reshape(qzeros.shape[0], -1) + 1  # v1: stored minus one
    groups = g_idx.long()
    return scales.float()[groups] * (codes - zeros[groups]).float()


def test_4bit_group128_is_a_sixth_of_fp32_and_stays_close(make_context, wide_bert, tmp_path):
    model, tokenizer = wide_bert
    original = copy.deepcopy(model)
    ctx, result = _quantize(make_context, model, tokenizer, "bits: 4, group_size: 128, samples: 64")
    details = result.details
    assert details["linear_bytes_ratio"] <= 1 / 6
    assert details["quantized_linear_bytes"] * 6 <= details["fp32_linear_bytes"]
    folder = save_artifact(result.model, tokenizer, tmp_path / "artifact", "sequence-classification")
    state = load_file(folder / "model.safetensors")
    on_disk = sum(t.numel() * t.element_size() for k, t in state.items() if ".encoder." in k)
    fp32 = sum(p.numel() * 4 for n, p in original.named_parameters() if ".encoder." in n and "LayerNorm" not in n)
    assert on_disk - sum(t.numel() * t.element_size() for k, t in state.items() if "LayerNorm" in k) <= fp32 / 6
    prefix = "bert.encoder.layer.1.output.dense."
    module = _packed(result.model)[prefix[:-1]]
    weights = _dequantize_gptq_v1(*(state[prefix + k] for k in ("qweight", "qzeros", "scales", "g_idx")), bits=4)
    assert torch.equal(weights.half(), module.dequantize_weight())  # GPTQModel computes in fp16, like the scales
    fp32_logits, q4 = _logits(original, ctx), _logits(result.model, ctx)
    assert torch.nn.functional.cosine_similarity(fp32_logits.flatten(), q4.flatten(), dim=0) > 0.9
    assert 0 < details["mean_relative_error"] < 0.2


def _layer_inputs(model, ctx, layer="bert.encoder.layer.0.attention.self.query"):
    seen = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, a, o: seen.append(a[0].reshape(-1, a[0].shape[-1])))
    _logits(model, ctx, "train")
    handle.remove()
    return torch.cat(seen)


def test_gptq_reconstructs_layer_outputs_better_than_round_to_nearest(make_context, wide_bert):
    model, tokenizer = wide_bert
    errors = {}
    for method in ("gptq", "rtn"):
        ctx, result = _quantize(make_context, copy.deepcopy(model), tokenizer, f"method: {method}, bits: 3, group_size: 32, samples: 64")
        x = _layer_inputs(model, ctx)  # the first block's inputs: not changed by quantization
        layer = "bert.encoder.layer.0.attention.self.query"
        with torch.no_grad():
            reference = model.get_submodule(layer)(x)
            errors[method] = ((result.model.get_submodule(layer)(x) - reference).norm() / reference.norm()).item()
        errors[method + " mean"] = result.details["mean_relative_error"]
        assert result.details["method"] == method
    assert errors["gptq"] < 0.9 * errors["rtn"], errors
    assert errors["gptq mean"] < errors["rtn mean"], errors


def test_asymmetric_act_order_saves_gptq_v2_and_reloads(make_context, wide_bert, tmp_path):
    model, tokenizer = wide_bert
    settings = "bits: 4, group_size: 32, sym: false, act_order: true, true_sequential: false"
    ctx, result = _quantize(make_context, model, tokenizer, settings)
    query = _packed(result.model)["bert.encoder.layer.0.attention.self.query"]
    assert sorted(query.g_idx.tolist()) == sorted(i // 32 for i in range(128)) != query.g_idx.tolist()
    folder = save_artifact(result.model, tokenizer, tmp_path / "artifact", "sequence-classification")
    config = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert config["checkpoint_format"] == "gptq_v2" and config["sym"] is False and config["desc_act"] is True
    reloaded, _ = load_artifact(folder, ctx.plugin_host)
    assert torch.equal(_logits(reloaded, ctx), _logits(result.model, ctx))


def test_plan_checks(write_recipe, host):
    recipe = load_recipe(write_recipe("- {name: q, uses: gptq, with: {group_size: 256, method: rtn, act_order: true}}\n",
                                      config=WIDE_BERT), ["model.fine_tuned=true"], host)  # fmt: skip
    warnings = " | ".join(w.message for w in recipe.warnings)
    assert "group_size 256 is larger than in_features 128" in warnings
    assert "act_order has no effect with method rtn" in warnings
    assert "does not divide" not in warnings
    clean = load_recipe(write_recipe("- {name: q, uses: gptq}\n", config=WIDE_BERT), ["model.fine_tuned=true"], host)
    assert not clean.warnings
    odd = load_recipe(write_recipe("- {name: q, uses: gptq, with: {group_size: 64}}\n",
                                   config={**WIDE_BERT, "intermediate_size": 96}), ["model.fine_tuned=true"], host)  # fmt: skip
    assert any("group_size 64 does not divide in_features 96" in w.message for w in odd.warnings)


def test_3bit_needs_widths_that_are_multiples_of_32(write_recipe, capsys):
    recipe = write_recipe("- {name: q, uses: gptq, with: {bits: 3}}\n", config={**WIDE_BERT, "hidden_size": 48})
    assert main(["validate", str(recipe), "model.fine_tuned=true", "--json"]) == 2
    problems = json.loads(capsys.readouterr().out)["recipes"][0]["problems"]
    assert any("3-bit packing needs layer widths that are multiples of 32, and this model has 48" in p["message"]
               and p["path"] == "$.stages[0].with.bits" for p in problems)  # fmt: skip
    recipe = write_recipe("- {name: q, uses: gptq, with: {bits: 3}}\n", config=WIDE_BERT)
    assert main(["validate", str(recipe), "model.fine_tuned=true"]) == 0


def test_gptq_before_train_is_rejected_with_a_working_order(write_recipe, capsys):
    recipe = write_recipe("- {name: q, uses: gptq}\n- {name: ft, uses: train}\n", config=WIDE_BERT)
    assert main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "stage 'q' (gptq) needs a model that is trained on the task" in err
    assert "an order that works: ft -> q" in err


def test_apply_train_then_gptq_end_to_end(write_recipe, tmp_path, capsys):
    stages = (
        "- {name: ft, uses: train, with: {epochs: 2, learning_rate: 3.0e-3, batch_size: 16, eval_every_epoch: false}}\n"
        "- {name: q, uses: gptq, with: {bits: 4, group_size: 128, samples: 64}}\n"
    )
    out = tmp_path / "run"
    assert main(["apply", str(write_recipe(stages, config=WIDE_BERT)), "--output", str(out), "--json", "-q"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert json.loads(capsys.readouterr().out) == report  # GPTQModel's banner and logs stay off stdout
    assert report["status"] == "passed" and report["baseline"]["stage"] == "ft"
    ft, q = report["stages"][1:]
    assert q["plugin"] == "gptq" and q["details"]["layers_quantized"] == 2 * LINEARS_PER_BLOCK
    assert q["details"]["linear_bytes_ratio"] <= 1 / 6 and q["details"]["bits"] == 4
    assert ft["metric"]["value"] >= 0.9 and q["retained"] >= 0.95
    assert q["weights_bytes"] < ft["weights_bytes"]
    assert q["params"] == ft["params"]  # packed layers count at their logical size
    model, tokenizer = load_artifact(q["artifact"])
    assert len(_packed(model)) == 2 * LINEARS_PER_BLOCK and tokenizer is not None
