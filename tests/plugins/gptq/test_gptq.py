"""The `gptq` stage with the real GPTQModel engine, on the three model families.

Encoder: TINY_BERT widened to hidden 128 / FFN 256 so that group size 128 fits the
layers' in_features (GPTQModel's kernels accept groups of 16..1024). Decoder: the
tiny Llama (GPTQModel's own LlamaQModel path) and a tiny GPT-2 (GPT2QModel, Conv1D
layers). Encoder-decoder: the tiny T5 (block walk over the encoder, then the decoder).
Those have widths 32/64, so they use group size 32.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from compose.api import load_artifact, save_artifact
from compose.cli.main import main
from compose.errors import RecipeError
from compose.plugins.gptq import layers
from compose.plugins.gptq.row_quant import QuantEmbedding, QuantLinear
from compose.recipe.load import load_recipe
from tests.conftest import WIDE_BERT

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
        return torch.cat(
            [
                model(**{k: v for k, v in b.items() if k != "labels"}).logits
                for b in ctx.task.batches(split, ctx.tokenizer, 32)
            ]
        )


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
    assert isinstance(quantized.classifier, torch.nn.Linear) and isinstance(
        quantized.bert.pooler.dense, torch.nn.Linear
    )
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
    assert {k for k in state if k.startswith(prefix)} == {
        prefix + s for s in ("qweight", "qzeros", "scales", "g_idx", "bias")
    }
    assert (
        state[prefix + "qweight"].dtype == torch.int32
        and "bert.encoder.layer.0.attention.self.query.weight" not in state
    )
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
    zeros = ((qzeros.unsqueeze(2) >> shifts.view(1, 1, -1)) & mask).reshape(
        qzeros.shape[0], -1
    ) + 1  # v1: stored minus one
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
    handle = model.get_submodule(layer).register_forward_hook(
        lambda m, a, o: seen.append(a[0].reshape(-1, a[0].shape[-1]))
    )
    _logits(model, ctx, "train")
    handle.remove()
    return torch.cat(seen)


def test_gptq_reconstructs_layer_outputs_better_than_round_to_nearest(make_context, wide_bert):
    model, tokenizer = wide_bert
    errors = {}
    for method in ("gptq", "rtn"):
        ctx, result = _quantize(
            make_context, copy.deepcopy(model), tokenizer, f"method: {method}, bits: 3, group_size: 32, samples: 64"
        )
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
    recipe = load_recipe(
        write_recipe(
            "- {name: q, uses: gptq, with: {group_size: 256, method: rtn, act_order: true}}\n", config=WIDE_BERT
        ),
        ["model.fine_tuned=true"],
        host,
    )
    warnings = " | ".join(w.message for w in recipe.warnings)
    assert "group_size 256 is larger than in_features 128" in warnings
    assert "act_order has no effect with method rtn" in warnings
    assert "does not divide" not in warnings
    clean = load_recipe(write_recipe("- {name: q, uses: gptq}\n", config=WIDE_BERT), ["model.fine_tuned=true"], host)
    assert not clean.warnings
    odd = load_recipe(
        write_recipe(
            "- {name: q, uses: gptq, with: {group_size: 64}}\n", config={**WIDE_BERT, "intermediate_size": 96}
        ),
        ["model.fine_tuned=true"],
        host,
    )
    assert any("group_size 64 does not divide in_features 96" in w.message for w in odd.warnings)


def test_3bit_needs_widths_that_are_multiples_of_32(write_recipe, capsys):
    recipe = write_recipe("- {name: q, uses: gptq, with: {bits: 3}}\n", config={**WIDE_BERT, "hidden_size": 48})
    assert main(["validate", str(recipe), "model.fine_tuned=true", "--json"]) == 2
    problems = json.loads(capsys.readouterr().out)["recipes"][0]["problems"]
    assert any(
        "3-bit packing needs layer widths that are multiples of 32, and this model has 48" in p["message"]
        and p["path"] == "$.stages[0].with.bits"
        for p in problems
    )
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


# -- decoder and encoder-decoder ------------------------------------------------------------

LLAMA_LINEARS = {
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
}
T5_SELF_ATTENTION = {"layer.0.SelfAttention." + x for x in "qkvo"}
T5_ENCODER_LINEARS = T5_SELF_ATTENTION | {"layer.1.DenseReluDense.wi", "layer.1.DenseReluDense.wo"}
T5_DECODER_LINEARS = (
    T5_SELF_ATTENTION
    | {"layer.1.EncDecAttention." + x for x in "qkvo"}
    | {"layer.2.DenseReluDense.wi", "layer.2.DenseReluDense.wo"}
)


def _outputs(model, ctx, split="dev"):
    """(logits of every batch, mean loss) of ``model`` on ``split``."""
    logits, losses = [], []
    with torch.no_grad():
        for batch in ctx.task.batches(split, ctx.tokenizer, 32):
            out = model(**batch)
            logits.append(out.logits)
            losses.append(out.loss)
    return torch.cat(logits), torch.stack(losses).mean().item()


def _relative(reference, other):
    return ((other - reference).norm() / reference.norm()).item()


def _run_family(make_context, model, tokenizer, family, settings):
    ctx = make_context(f"- {{name: q, uses: gptq, with: {{{settings}}}}}", model, tokenizer, family=family)
    return ctx, ctx.plugin_host.stage("gptq").run(ctx)


def test_decoder_goes_through_gptqmodels_llama_definition_and_reloads(make_context, tiny_llama, tmp_path):
    model, tokenizer = tiny_llama
    fp32_logits = fp32_loss = None
    results = {}
    for method in ("rtn", "gptq"):
        ctx, result = _run_family(
            make_context,
            copy.deepcopy(model),
            tokenizer,
            "decoder",
            f"method: {method}, bits: 4, group_size: 32, samples: 64",
        )
        if fp32_logits is None:
            fp32_logits, fp32_loss = _outputs(model, ctx)
        results[method] = (result, *_outputs(result.model, ctx))
    result, q_logits, q_loss = results["gptq"]
    details = result.details
    assert details["path"] == "model" and "LlamaQModel" in details["path_reason"]
    packed = _packed(result.model)
    assert set(packed) == {f"model.layers.{i}.{n}" for i in range(2) for n in LLAMA_LINEARS}
    assert details["layers_quantized"] == len(packed) == len(details["relative_error"]) == 14
    assert not any(isinstance(m, torch.nn.Linear) for m in result.model.model.layers.modules())
    # outside the blocks, by default: the embeddings and the (untied) lm_head row-wise at 8 bits
    assert isinstance(result.model.lm_head, QuantLinear) and result.model.lm_head.tied_to is None
    assert isinstance(result.model.model.embed_tokens, QuantEmbedding)
    assert details["linear_bytes_ratio"] < 0.2 and details["calibration_samples"] == 64
    # GPTQ beats round-to-nearest and stays close to fp32
    assert _relative(fp32_logits, q_logits) < 0.1
    assert _relative(fp32_logits, q_logits) < _relative(fp32_logits, results["rtn"][1])
    assert abs(q_loss - fp32_loss) < 0.02 * fp32_loss  # perplexity within ~2%
    assert 0 < details["mean_relative_error"] < results["rtn"][0].details["mean_relative_error"]

    folder = save_artifact(result.model, tokenizer, tmp_path / "artifact", "causal-lm")
    config = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert config["meta"]["path"] == "model" and (config["bits"], config["group_size"]) == (4, 32)
    state = load_file(folder / "model.safetensors")
    prefix = "model.layers.1.mlp.down_proj."
    assert torch.equal(state[prefix + "qzeros"], packed[prefix[:-1]].qzeros - 0x11111111)  # v1 on disk
    reloaded, _ = load_artifact(folder, ctx.plugin_host)
    assert len(_packed(reloaded)) == 14
    assert torch.equal(_outputs(reloaded, ctx)[0], q_logits)


def test_gpt2_goes_through_gptqmodels_definition_with_its_conv1d_layers(make_context, tiny_bpe_tokenizer_dir, tmp_path):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(tiny_bpe_tokenizer_dir)
    torch.manual_seed(0)
    eos = tokenizer.eos_token_id
    config = GPT2Config(
        vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=eos, eos_token_id=eos
    )
    model = GPT2LMHeadModel(config).eval()
    original = copy.deepcopy(model)
    settings = "bits: 8, group_size: 32, samples: 32, sym: false"
    ctx, result = _run_family(make_context, model, tokenizer, "decoder", settings)
    assert result.details["path"] == "model" and "GPT2QModel" in result.details["path_reason"]
    packed = _packed(result.model)
    assert set(packed) == {
        f"transformer.h.{i}.{n}" for i in range(2) for n in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    }
    c_fc = packed["transformer.h.0.mlp.c_fc"]  # a Conv1D of weight [32, 128] in GPT-2
    assert (c_fc.in_features, c_fc.out_features) == (32, 128)
    q8 = _outputs(result.model, ctx)[0]
    assert _relative(_outputs(original, ctx)[0], q8) < 0.02
    folder = save_artifact(result.model, tokenizer, tmp_path / "artifact", "causal-lm")
    assert json.loads((folder / "config.json").read_text())["quantization_config"]["checkpoint_format"] == "gptq_v2"
    reloaded, _ = load_artifact(folder, ctx.plugin_host)
    assert torch.equal(_outputs(reloaded, ctx)[0], q8)


def test_t5_quantizes_the_encoder_then_the_decoder_blocks_and_reloads(make_context, tiny_t5, tmp_path):
    model, tokenizer = tiny_t5
    runs = {}
    for method in ("rtn", "gptq"):
        ctx, result = _run_family(
            make_context,
            copy.deepcopy(model),
            tokenizer,
            "encoder-decoder",
            f"method: {method}, bits: 4, group_size: 32, samples: 64",
        )
        runs[method] = (result, *_outputs(result.model, ctx))
    fp32_logits, fp32_loss = _outputs(model, ctx)
    result, q_logits, q_loss = runs["gptq"]
    details = result.details
    assert details["path"] == "layers" and "no model definition for encoder-decoder" in details["path_reason"]
    packed = _packed(result.model)
    expected = {f"encoder.block.{i}.{n}" for i in range(2) for n in T5_ENCODER_LINEARS} | {
        f"decoder.block.{i}.{n}" for i in range(2) for n in T5_DECODER_LINEARS
    }
    assert set(packed) == expected and details["layers_quantized"] == 32
    # the tied lm_head and both stacks' embed_tokens read the one packed `shared` table
    assert isinstance(result.model.lm_head, QuantLinear) and result.model.lm_head.tied_to is result.model.shared
    assert result.model.encoder.embed_tokens.tied_to is result.model.shared
    assert _relative(fp32_logits, q_logits) < 0.15
    assert _relative(fp32_logits, q_logits) < _relative(fp32_logits, runs["rtn"][1])
    assert abs(q_loss - fp32_loss) < 0.02 * fp32_loss
    # cross-attention keys/values were calibrated on the encoder's states (source tokens)
    assert 0 < details["relative_error"]["decoder.block.1.layer.1.EncDecAttention.k"] < 0.2

    folder = save_artifact(result.model, tokenizer, tmp_path / "artifact", "seq2seq")
    reloaded, _ = load_artifact(folder, ctx.plugin_host)
    assert set(_packed(reloaded)) == expected
    assert torch.equal(_outputs(reloaded, ctx)[0], q_logits)


def test_block_walk_and_gptqmodels_llama_path_pack_the_same_weights(make_context, tiny_llama):
    """The layer walk (T5, BERT, decoders GPTQModel does not know) against the engine's own
    Llama path on the same calibration data: the same GPTQ result. Usually bit for bit; GPTQModel's
    CPU workers may sum a Hessian in another order under load, which can move a rare weight by one
    quantization step and, through the next block's inputs, a few more there: at most 5% of a layer's
    weights may differ (2.2% seen once in a loaded full suite on AVX2; wrong block inputs change most)."""
    from compose.api import library_chatter_off
    from compose.plugins.gptq import stage as gptq

    model, tokenizer = tiny_llama
    ctx, result = _run_family(
        make_context, copy.deepcopy(model), tokenizer, "decoder", "bits: 4, group_size: 32, samples: 64"
    )
    eng = gptq.engine()
    with library_chatter_off(stdout=True):
        qcfg = gptq._quantize_config(eng, ctx.settings)
    walked = copy.deepcopy(model)
    spec = result.model.compose_transforms[0]["info"]["quantization"]
    with torch.no_grad(), library_chatter_off(stdout=True), ctx.progress.track("walk") as bar:
        found = layers.quantize_by_blocks(
            eng, qcfg, spec, ctx.settings, walked, gptq._calibration(ctx), ctx.device, bar
        )
    assert found["layers"] == result.model.compose_transforms[0]["info"]["layers"]
    for name, module in _packed(result.model).items():
        engine, walk = module.dequantize_weight().float(), walked.get_submodule(name).dequantize_weight().float()
        assert engine.shape == walk.shape, name
        assert (engine != walk).float().mean().item() <= 0.05, name
    assert found["errors"].keys() == result.details["relative_error"].keys()
    for name, error in found["errors"].items():
        assert error == pytest.approx(result.details["relative_error"][name], rel=0.05), name


@pytest.mark.parametrize("family", ["decoder", "encoder-decoder"])
def test_block_walk_reproduces_the_models_own_stack_outputs(make_context, tiny_llama, tiny_t5, family):
    """Each block's recorded inputs (masks, rotary embeddings, T5's position bias shared from
    block 0, the encoder's states) plus the previous block's outputs give the model's own outputs."""
    model, tokenizer = tiny_llama if family == "decoder" else tiny_t5
    ctx = make_context("- {name: q, uses: gptq}", model, tokenizer, family=family)
    batches = list(ctx.task.batches("dev", tokenizer, 16, limit=32))
    stacks = layers.stacks(model)
    expected = ["model.layers"] if family == "decoder" else ["encoder.block", "decoder.block"]
    assert [name for name, _ in stacks] == expected
    for number, (_, blocks) in enumerate(stacks):
        seen = []
        handle = blocks[-1].register_forward_hook(lambda _m, _a, out, seen=seen: seen.append(layers._hidden(out)))
        with torch.no_grad():
            for batch in batches:
                model(**layers.model_inputs(model, batch, ctx.device))
            handle.remove()
            records, masks = layers.capture_stack(model, blocks, batches, ctx.device, decoder_stack=number > 0)
            inputs = records[0]
            for index, block in enumerate(blocks):
                hidden = layers.run_block(block, inputs, masks)
                if index + 1 < len(blocks):
                    inputs = layers.next_inputs(records[index + 1], hidden)
        assert len(hidden) == len(batches) == len(seen[: len(batches)]) > 0
        for walked, own in zip(hidden, seen, strict=False):
            torch.testing.assert_close(walked, own, atol=1e-5, rtol=1.3e-6)


def test_plan_checks_know_llama_and_t5_widths(write_recipe, host):
    def warnings(stage, family, config):
        recipe = load_recipe(write_recipe(stage, config=config, family=family), ["model.fine_tuned=true"], host)
        return " | ".join(w.message for w in recipe.warnings)

    llama = {
        "model_type": "llama",
        "hidden_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 96,
    }
    found = warnings("- {name: q, uses: gptq, with: {group_size: 64}}\n", "decoder", llama)
    assert "group_size 64 does not divide in_features 96" in found and "in_features 64" not in found
    t5 = {"model_type": "t5", "d_model": 64, "d_kv": 8, "num_heads": 4, "num_layers": 1, "d_ff": 128}
    found = warnings("- {name: q, uses: gptq, with: {group_size: 64}}\n", "encoder-decoder", t5)
    assert "group_size 64 is larger than in_features 32" in found  # the attention output: 4 heads x 8
    assert not warnings("- {name: q, uses: gptq, with: {group_size: 32}}\n", "encoder-decoder", t5)
    narrow_kv = {**llama, "num_key_value_heads": 1}  # k/v project to 1 head x 16
    with pytest.raises(
        RecipeError, match="3-bit packing needs layer widths that are multiples of 32, and this model has 16"
    ):
        load_recipe(
            write_recipe("- {name: q, uses: gptq, with: {bits: 3}}\n", config=narrow_kv, family="decoder"),
            ["model.fine_tuned=true"],
            host,
        )


@pytest.mark.parametrize("family", ["decoder", "encoder-decoder"])
def test_apply_train_then_gptq_end_to_end_on_a_decoder_and_t5(write_recipe, tmp_path, capsys, family):
    epochs = 2 if family == "decoder" else 3
    stages = (
        f"- {{name: ft, uses: train, with: {{epochs: {epochs}, learning_rate: 3.0e-3, batch_size: 16, "
        "eval_every_epoch: false}}\n"
        "- {name: q, uses: gptq, with: {bits: 4, group_size: 32, samples: 64}}\n"
    )
    out = tmp_path / "run"
    assert main(["apply", str(write_recipe(stages, family=family)), "--output", str(out), "--json", "-q"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert json.loads(capsys.readouterr().out) == report  # GPTQModel's banner, logs and bars stay off stdout
    assert report["status"] == "passed"
    ft, q = report["stages"][1:]
    assert q["plugin"] == "gptq" and q["details"]["path"] == ("model" if family == "decoder" else "layers")
    assert q["details"]["layers_quantized"] == (14 if family == "decoder" else 32)
    assert q["weights_bytes"] < ft["weights_bytes"] and q["params"] == ft["params"]
    if family == "decoder":
        assert ft["metric"]["name"] == "perplexity" and q["metric"]["value"] < 1.05 * ft["metric"]["value"]
    else:
        assert ft["metric"]["name"] == "exact_match" and ft["metric"]["value"] >= 0.9
        assert q["metric"]["value"] >= 0.9
    model, tokenizer = load_artifact(q["artifact"])
    assert len(_packed(model)) == q["details"]["layers_quantized"] and tokenizer is not None
