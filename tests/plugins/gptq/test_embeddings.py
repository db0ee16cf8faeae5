"""Whole-model quantization in the `gptq` stage: embeddings, the lm_head (tied or not) and the
task heads, row-wise and packed, on tiny models of the three families; saved with the
executor's save path and reloaded through ``load_artifact`` to bit-identical logits."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from compose.api import count_parameters, load_artifact, save_artifact
from compose.cli.main import main
from compose.plugins.gptq import embeddings as whole_model
from compose.plugins.gptq.row_quant import QuantEmbedding, QuantLinear
from tests.conftest import WIDE_BERT

KIND = {"encoder": "sequence-classification", "decoder": "causal-lm", "encoder-decoder": "seq2seq"}
OFF = {"bits": None, "group_size": 64, "sym": False}


def _settings(embeddings=None, lm_head=None, heads=None) -> dict:
    return {"embeddings": embeddings or OFF, "lm_head": lm_head or OFF, "heads": heads or OFF}


def _gpt2(tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    eos = tokenizer.eos_token_id
    config = GPT2Config(
        vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=eos, eos_token_id=eos
    )
    return GPT2LMHeadModel(config).eval()


def _tied(model):
    """The same architecture as ``model`` (a tiny Llama), with its lm_head tied to the embeddings."""
    config = copy.deepcopy(model.config)
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    tied = type(model)(config).eval()
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    return tied


@pytest.fixture
def family_model(request, tiny_bert, tiny_llama, tiny_t5, tiny_bpe_tokenizer_dir):
    """(family, model, tokenizer, {module name: (class, tied_to)} expected with embeddings, lm_head and heads on)."""
    from transformers import AutoTokenizer

    bpe = AutoTokenizer.from_pretrained(tiny_bpe_tokenizer_dir)
    E, L = QuantEmbedding, QuantLinear
    cases = {
        "bert": (
            "encoder",
            *tiny_bert,
            {
                "bert.embeddings.word_embeddings": (E, None),
                "bert.embeddings.position_embeddings": (E, None),
                "bert.embeddings.token_type_embeddings": (E, None),
                "bert.pooler.dense": (L, None),
                "classifier": (L, None),
            },
        ),
        "llama": ("decoder", *tiny_llama, {"model.embed_tokens": (E, None), "lm_head": (L, None)}),
        "llama-tied": (
            "decoder",
            _tied(tiny_llama[0]),
            tiny_llama[1],
            {"model.embed_tokens": (E, None), "lm_head": (L, "model.embed_tokens")},
        ),
        "gpt2": (
            "decoder",
            _gpt2(bpe),
            bpe,
            {"transformer.wte": (E, None), "transformer.wpe": (E, None), "lm_head": (L, "transformer.wte")},
        ),
        "t5": (
            "encoder-decoder",
            *tiny_t5,
            {
                "shared": (E, None),
                "encoder.embed_tokens": (E, "shared"),
                "decoder.embed_tokens": (E, "shared"),
                "lm_head": (L, "shared"),
            },
        ),
    }
    return cases[request.param]


def _outputs(model, ctx, split="dev"):
    with torch.no_grad():
        return torch.cat([model(**b).logits for b in ctx.task.batches(split, ctx.tokenizer, 32)])


def _relative(reference, other):
    return ((other - reference).norm() / reference.norm()).item()


ALL_ON = "embeddings: {bits: 4, group_size: 16}, lm_head: {bits: 4, group_size: 16, sym: true}, heads: {bits: 8}"


@pytest.mark.parametrize("family_model", ["bert", "llama", "llama-tied", "gpt2", "t5"], indirect=True)
def test_quantized_embeddings_and_heads_save_small_and_reload_identical(make_context, family_model, tmp_path):
    family, model, tokenizer, expected = family_model
    fp32_params = count_parameters(model)
    settings = f"bits: 8, group_size: 32, samples: 16, {ALL_ON}"
    ctx = make_context(f"- {{name: q, uses: gptq, with: {{{settings}}}}}", model, tokenizer, family=family)
    rows_before = {n: copy.deepcopy(model.get_submodule(n)) for n in expected}
    result = ctx.plugin_host.stage("gptq").run(ctx)
    quantized, details = result.model, result.details
    found = {
        n: (type(m), m.tied_to and _name_of(quantized, m.tied_to))
        for n, m in quantized.named_modules()
        if isinstance(m, (QuantEmbedding, QuantLinear))
    }
    assert found == expected
    assert set(details["rows_quantized"]) == set(expected) and details["rows_skipped"] == []
    owner = next(n for n, (cls, tied) in expected.items() if cls is QuantEmbedding)
    assert (
        details["rows_quantized"][owner]["bits"] == 4 and 0 < details["rows_quantized"][owner]["relative_error"] < 0.2
    )
    assert count_parameters(quantized) == fp32_params  # packed tables count their logical parameters, ties once

    folder = save_artifact(quantized, tokenizer, tmp_path / "artifact", KIND[family])
    state = load_file(folder / "model.safetensors")
    owners = {n for n, (_, tied) in expected.items() if tied is None}
    for name in expected:  # an owner's packed tensors only; nothing of a tied view is saved
        keys = {k for k in state if k.rsplit(".", 1)[0] == name}
        names = {"qweight", "scales"} | ({"zeros"} if ".".join([name, "zeros"]) in state else set())
        has_bias = isinstance(rows_before[name], torch.nn.Linear) and rows_before[name].bias is not None
        wanted = ({f"{name}.{k}" for k in names} if name in owners else set()) | (
            {f"{name}.bias"} if has_bias else set()
        )
        assert keys == wanted, name
    for name in owners:  # bytes: codes at 4 (or 8) bits + fp16 scales (+ uint8 zero points) per group of a row
        rows, cols = rows_before[name].weight.shape
        bits, group = (8, -1) if name in ("classifier", "bert.pooler.dense") else (4, 16)
        groups = 1 if group == -1 or group >= cols else -(-cols // group)
        zeros = 0 if name == "lm_head" else 1
        packed = sum(
            state[f"{name}.{k}"].numel() * state[f"{name}.{k}"].element_size()
            for k in ("qweight", "scales", "zeros")
            if f"{name}.{k}" in state
        )
        assert packed == rows * cols * bits // 8 + rows * groups * (2 + zeros), name
    assert details["rows_quantized_bytes"] < details["rows_fp32_bytes"] / 4

    reloaded, _ = load_artifact(folder, ctx.plugin_host)
    assert {n: type(m) for n, m in reloaded.named_modules() if n in expected} == {
        n: c for n, (c, _) in expected.items()
    }
    assert torch.equal(_outputs(reloaded, ctx), _outputs(quantized, ctx))
    assert count_parameters(reloaded) == fp32_params


def _name_of(model, module):
    return next(n for n, m in model.named_modules() if m is module)


@pytest.mark.parametrize("family_model", ["bert", "gpt2", "t5", "llama"], indirect=True)
def test_8bit_rows_stay_close_to_fp32_and_dequantize_to_the_same_float_model(make_context, family_model):
    family, model, tokenizer, expected = family_model
    ctx = make_context("- {name: q, uses: gptq}", model, tokenizer, family=family)
    fp32 = _outputs(model, ctx)
    eight = {"bits": 8, "group_size": 64, "sym": False}
    with torch.no_grad():
        found = whole_model.quantize(model, _settings(eight, eight, eight))
    assert set(found["modules"]) == set(expected)
    q8 = _outputs(model, ctx)
    assert 0 < _relative(fp32, q8) < 0.03, _relative(fp32, q8)
    # the export contract: every packed module turns back into the plain float module it stands for
    for name in expected:
        whole_model.set_module(model, name, model.get_submodule(name).dequantized())
    assert not any(isinstance(m, (QuantEmbedding, QuantLinear)) for m in model.modules())
    assert torch.allclose(_outputs(model, ctx), q8, atol=1e-5, rtol=1e-4)


def test_defaults_quantize_embeddings_and_lm_head_at_8_bits_and_null_keeps_fp32(make_context, tiny_llama):
    model, tokenizer = tiny_llama
    ctx = make_context("- {name: q, uses: gptq}", model, tokenizer, family="decoder")
    assert {k: ctx.settings[k] for k in ("embeddings", "lm_head", "heads")} == {
        "embeddings": {"bits": 8, "group_size": 64, "sym": False},
        "lm_head": {"bits": 8, "group_size": 64, "sym": False},
        "heads": {"bits": None, "group_size": 64, "sym": False},
    }
    plan, _ = whole_model.plan(model, ctx.settings)
    assert [(g["members"], g["role"]) for g in plan] == [
        ([("model.embed_tokens", "embeddings")], "embeddings"),
        ([("lm_head", "lm_head")], "lm_head"),
    ]
    assert whole_model.plan(model, _settings()) == ([], [])
    # a tied pair is one table: quantized (once) when either setting asks, with the embeddings' first
    tied = _tied(model)
    for embeddings, lm_head, role in ((OFF, {**OFF, "bits": 4}, "lm_head"), ({**OFF, "bits": 8}, OFF, "embeddings")):
        [group], _ = whole_model.plan(tied, _settings(embeddings, lm_head))
        assert (
            group["members"] == [("model.embed_tokens", "embeddings"), ("lm_head", "lm_head")] and group["role"] == role
        )


def test_apply_quantizes_the_whole_model_and_reports_it(write_recipe, tmp_path, capsys):
    stages = (
        "- {name: ft, uses: train, with: {epochs: 2, learning_rate: 3.0e-3, batch_size: 16, eval_every_epoch: false}}\n"
        "- {name: q, uses: gptq, with: {bits: 4, group_size: 128, samples: 64, embeddings: {bits: 4, group_size: 32}}}\n"
    )
    out = tmp_path / "run"
    assert main(["apply", str(write_recipe(stages, config=WIDE_BERT)), "--output", str(out), "--json", "-q"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "passed"
    ft, q = report["stages"][1:]
    rows = q["details"]["rows_quantized"]
    assert set(rows) == {f"bert.embeddings.{n}_embeddings" for n in ("word", "position", "token_type")}
    assert rows["bert.embeddings.word_embeddings"] == {
        "role": "embeddings",
        "shape": [31, 128],
        "bits": 4,
        "group_size": 32,
        "sym": False,
        "relative_error": rows["bert.embeddings.word_embeddings"]["relative_error"],
    }
    # fp32 tables of (31 + 64 + 2) rows x 128 -> 4-bit codes + a scale and a zero point per 32 values
    assert q["details"]["rows_fp32_bytes"] == 97 * 128 * 4
    assert q["details"]["rows_quantized_bytes"] == 97 * 128 // 2 + 97 * 4 * 3
    assert q["params"] == ft["params"] and q["retained"] >= 0.95
    # the whole artifact: blocks at 4 bits and tables at 4 bits; only the norms, pooler and classifier stay fp32
    assert q["weights_bytes"] < ft["weights_bytes"] / 4
    model, _ = load_artifact(q["artifact"])
    assert isinstance(model.bert.embeddings.word_embeddings, QuantEmbedding)


def test_plan_rejects_4bit_rows_that_cannot_fill_whole_bytes(write_recipe, host):
    from compose.errors import RecipeError
    from compose.recipe.load import load_recipe

    odd = {**WIDE_BERT, "hidden_size": 33, "num_attention_heads": 3}
    stage = "- {name: q, uses: gptq, with: {bits: 8, embeddings: {bits: 4, group_size: -1}}}\n"
    with pytest.raises(RecipeError, match="embeddings: 4-bit rows of 33 values .odd. do not fill whole bytes"):
        load_recipe(write_recipe(stage, config=odd), ["model.fine_tuned=true"], host)
    load_recipe(write_recipe(stage.replace("-1", "16"), config=odd), ["model.fine_tuned=true"], host)
