"""The `prune-heads` stage on tiny real models of the three families: exact heads removed, smaller matrices, reloads."""

import copy
import json

import pytest
import torch

from compose.api import StageType, load_artifact, save_artifact
from compose.cli.main import main
from compose.errors import RecipeError
from compose.plugins.pruning import importance
from compose.plugins.pruning.heads import stage as prune_heads
from compose.recipe.load import load_recipe
from compose.recipe.rules import check_order
from tests.plugins.pruning.units import (
    TINY_GPT2,
    batch_of,
    built,
    lowest,
    masked_logits,
    prepared,
    reloads_identically,
    run_stage,
    unknown_architecture,
)

#: 3 layers of 8 heads (head size 4): room for a global ranking to spread unevenly.
WIDE_BERT = {
    "model_type": "bert",
    "hidden_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 8,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
    "vocab_size": 31,
}


def removed_logits(model, batch, removed):
    """The model's logits with the ``removed`` units masked out."""
    return masked_logits(prune_heads.head_masks, prune_heads.find_attention(model), model, batch, removed)


def wide_bert():
    from transformers import AutoConfig, BertForSequenceClassification

    settings = {k: v for k, v in WIDE_BERT.items() if k != "model_type"}
    torch.manual_seed(1)
    return BertForSequenceClassification(AutoConfig.for_model("bert", num_labels=2, **settings)).eval()


def test_heads_per_layer_removes_exactly_the_lowest_scoring_heads(make_context, tiny_bert):
    model, tokenizer = tiny_bert
    ctx, batch, original = prepared(
        make_context,
        "- {name: p, uses: prune-heads, with: {heads_per_layer: 2, importance: magnitude}}",
        model,
        tokenizer,
    )
    expected = []  # the 2 heads per layer with the smallest q/k/v/output weight norm, computed here by hand
    for layer in original.bert.encoder.layer:
        attn, norms = layer.attention, []
        for h in range(4):
            rows = slice(h * 8, h * 8 + 8)
            parts = [
                attn.self.query.weight[rows],
                attn.self.key.weight[rows],
                attn.self.value.weight[rows],
                attn.output.dense.weight[:, rows],
            ]
            norms.append(sum(p.detach().pow(2).sum().item() for p in parts) ** 0.5)
        expected.append(sorted(sorted(range(4), key=norms.__getitem__)[:2]))
    want = removed_logits(original, batch, expected)

    result = run_stage(ctx)
    details = result.details
    assert details["pruned_heads"] == {"0": expected[0], "1": expected[1]}
    assert details["heads_before"] == [4, 4] and details["heads_after"] == [2, 2]
    for layer in result.model.bert.encoder.layer:
        attn = layer.attention
        assert attn.self.num_attention_heads == 2 and attn.self.all_head_size == 16
        for linear in (attn.self.query, attn.self.key, attn.self.value):
            assert tuple(linear.weight.shape) == (16, 32)
        assert tuple(attn.output.dense.weight.shape) == (32, 16)
    # The kept heads' rows are the original ones: exactly the chosen heads went.
    kept = [h for h in range(4) if h not in expected[0]]
    rows = [c for h in kept for c in range(h * 8, h * 8 + 8)]
    q0 = original.bert.encoder.layer[0].attention.self.query.weight
    assert torch.equal(result.model.bert.encoder.layer[0].attention.self.query.weight, q0[rows])
    with torch.no_grad():
        assert torch.allclose(result.model(**batch).logits, want, atol=1e-6)
    assert details["params_after"] < details["params_before"]
    # 2 layers x 2 heads x (3 x (8x32 + 8) + 32x8) parameters
    assert details["params_before"] - details["params_after"] == 2 * 2 * (3 * (8 * 32 + 8) + 32 * 8)


def test_global_ratio_respects_the_minimum_per_layer(make_context, tiny_bert):
    _, tokenizer = tiny_bert
    model = wide_bert()
    ctx, batch, original = prepared(
        make_context,
        "- {name: p, uses: prune-heads, with: {ratio: 0.5, min_heads_per_layer: 3, calibration_batches: 2}}",
        model,
        tokenizer,
        config=WIDE_BERT,
    )
    details = run_stage(ctx).details
    assert details["heads_removed"] == 12 and sum(details["heads_after"]) == 12  # int(0.5 * 24)
    assert all(n >= 3 for n in details["heads_after"])
    scores = [torch.tensor(details["scores"][str(i)]) for i in range(3)]
    assert [details["pruned_heads"][str(i)] for i in range(3)] == prune_heads.choose_heads(
        scores, {"ratio": 0.5, "min_heads_per_layer": 3}
    )
    removed = [details["pruned_heads"][str(i)] for i in range(3)]
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, removed_logits(original, batch, removed), atol=1e-6)


def test_global_ranking_is_across_layers_and_keeps_the_floor():
    scores = [torch.tensor([0.01, 0.02, 0.03, 0.04]), torch.tensor([0.5, 0.6, 0.7, 0.1])]
    assert prune_heads.choose_heads(scores, {"ratio": 0.5, "min_heads_per_layer": 1}) == [[0, 1, 2], [3]]
    assert prune_heads.choose_heads(scores, {"ratio": 0.5, "min_heads_per_layer": 2}) == [[0, 1], [0, 3]]
    assert prune_heads.choose_heads(scores, {"heads_per_layer": 3, "min_heads_per_layer": 2}) == [[0, 1], [0, 3]]


def test_artifact_reloads_to_identical_logits(make_context, tiny_bert, host, tmp_path):
    model, tokenizer = tiny_bert
    ctx = make_context("- {name: p, uses: prune-heads, with: {ratio: 0.5, calibration_batches: 2}}", model, tokenizer)
    batch = batch_of(ctx)
    pruned = run_stage(ctx).model
    folder = save_artifact(pruned, tokenizer, tmp_path / "art", "sequence-classification")
    assert json.loads((folder / "config.json").read_text())["num_attention_heads"] == 4  # unchanged config
    reloaded, _ = load_artifact(folder, host)
    assert [layer.attention.self.num_attention_heads for layer in reloaded.bert.encoder.layer] == [
        layer.attention.self.num_attention_heads for layer in pruned.bert.encoder.layer
    ]
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, pruned(**batch).logits)


def test_taylor_scores_are_nonzero_and_differ_from_magnitude(make_context, tiny_bert):
    model, tokenizer = tiny_bert
    ctx = make_context(
        "- {name: p, uses: prune-heads, with: {heads_per_layer: 1, calibration_batches: 2}}", model, tokenizer
    )
    sites = prune_heads.find_attention(model)
    batches = [batch_of(ctx)]
    taylor = prune_heads.taylor_scores(model, sites, batches, torch.device("cpu"), _NoBar())
    magnitude = prune_heads.magnitude_scores(sites)
    assert all(bool((t > 0).all()) for t in taylor)
    assert not any(
        torch.allclose(importance.normalise_per_layer([t])[0], importance.normalise_per_layer([m])[0])
        for t, m in zip(taylor, magnitude)
    )
    assert all(p.requires_grad for p in model.parameters()) and all(p.grad is None for p in model.parameters())
    # The mask gradient is the real sensitivity: check it against a finite difference (in float64).
    double = copy.deepcopy(model).double()
    double_sites = prune_heads.find_attention(double)
    grad = prune_heads.taylor_scores(double, double_sites, batches, torch.device("cpu"), _NoBar())[0][1].item()
    assert grad == pytest.approx(taylor[0][1].item(), rel=1e-3)
    eps, losses = 1e-4, []
    for value in (1 + eps, 1 - eps):
        with torch.no_grad(), prune_heads.head_masks(double_sites, torch.device("cpu")) as masks:
            masks[0][1] = value
            losses.append(double(**batches[0]).loss.item())
    assert abs(losses[0] - losses[1]) / (2 * eps) == pytest.approx(grad, rel=2e-3)  # float32 mask: 1 +- eps rounds
    details = run_stage(ctx).details
    assert details["importance"] == "taylor" and details["calibration"] == {
        "split": "train",
        "batches": 2,
        "examples": 64,
    }


class _NoBar:
    def advance(self, n=1):
        pass


def test_apply_train_then_prune_reports_fewer_params(write_recipe, tmp_path, host):
    recipe = write_recipe(
        "- {name: ft, uses: train, with: {max_steps: 12, learning_rate: 3.0e-3, batch_size: 16}}\n"
        "- {name: prune, uses: prune-heads, with: {ratio: 0.25, calibration_batches: 2,\n"
        "                                          recovery: {max_steps: 3, batch_size: 16, learning_rate: 1.0e-3}}}\n"
    )
    out = tmp_path / "run"
    assert main(["apply", str(recipe), "--output", str(out), "-q"]) == 0
    report = json.loads((out / "report.json").read_text())
    ft, prune = report["stages"][1], report["stages"][2]
    assert prune["plugin"] == "prune-heads" and report["baseline"]["stage"] == "ft"
    assert prune["params"] < ft["params"]
    assert prune["details"]["heads_removed"] == 2 and sum(prune["details"]["heads_after"]) == 6
    assert prune["details"]["recovery"]["steps"] == 3
    assert prune["details"]["params_after"] == prune["params"]
    model, _ = load_artifact(prune["artifact"], host)
    assert sum(layer.attention.self.num_attention_heads for layer in model.bert.encoder.layer) == 6


def test_prune_heads_after_a_quantizing_stage_is_rejected(host, write_recipe):
    quantize = StageType(
        name="fake-quantize",
        run=lambda ctx: None,
        schema={"type": "object"},
        description="leaves the model quantized",
        leaves={"quantized": True},
    )
    prune = host.stage("prune-heads")
    recipe = load_recipe(
        write_recipe("- {name: p, uses: prune-heads, with: {ratio: 0.5}}"), ["model.fine_tuned=true"], host
    ).data
    findings = check_order([("q", quantize), ("p", prune)], recipe, {"prune-heads": prune, "fake-quantize": quantize})
    assert any(
        "stage 'p' (prune-heads) needs a model that is not quantized ('q' left it quantized)" in f.message
        for f in findings
    )
    assert any("an order that works: p -> q" in f.message for f in findings)
    assert not check_order([("p", prune), ("q", quantize)], recipe, {})


def test_recipe_checks_head_counts_and_exclusive_settings(write_recipe, host):
    def problems(settings, overrides=("model.fine_tuned=true",)):
        try:
            recipe = load_recipe(
                write_recipe(f"- {{name: p, uses: prune-heads, with: {settings}}}"), list(overrides), host
            )
        except RecipeError as exc:
            return [p.message for p in exc.problems], [p.message for p in exc.warnings]
        return [], [p.message for p in recipe.warnings]

    errors, _ = problems("{heads_per_layer: 4}")
    assert any(
        "heads_per_layer 4 would remove every head of a layer (the model has 4 heads per attention block)" in e
        for e in errors
    )
    errors, _ = problems("{ratio: 0.5, heads_per_layer: 1}")
    assert any("exactly one of `ratio`" in e for e in errors)
    errors, _ = problems("{importance: taylor}")
    assert any("exactly one of `ratio`" in e for e in errors)
    errors, warnings = problems("{ratio: 0.1}")  # 0.1 x 8 heads rounds down to 0
    assert not errors and any("removes 0 of the model's 8 heads" in w for w in warnings)
    errors, _ = problems("{ratio: 0.5, calibration_split: test}")
    assert any("split 'test' is not in task.data" in e for e in errors)
    errors, _ = problems("{ratio: 0.5}", overrides=())
    assert any("needs a model that is trained on the task" in e for e in errors)
    assert problems("{ratio: 0.5, recovery: {max_steps: 3}}") == ([], [])


def test_describe_shows_the_plan(host):
    settings = {
        "ratio": 0.3,
        "min_heads_per_layer": 1,
        "importance": "taylor",
        "calibration_split": "train",
        "calibration_batches": 16,
        "calibration_batch_size": 32,
        "recovery": None,
    }
    text = host.stage("prune-heads").describe(settings)
    assert text.startswith("remove 30% of all attention heads") and "no recovery training" in text
    assert "keeping at least 1 per attention block" in text
    assert set(host.stage("prune-heads").families) == {"encoder", "decoder", "encoder-decoder"}


# -- decoders (Llama-style, grouped key/value heads, GPT-2) and T5 -------------------------------------------------

#: Llama with 2 key/value heads shared by 4 query heads: heads go in groups of 2.
GQA_LLAMA = {
    "model_type": "llama",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}


def head_norms(parts, heads, size):
    """Per head: the L2 norm of its rows of each (out, in) matrix in `parts`."""
    return [sum(p[h * size : (h + 1) * size].detach().pow(2).sum().item() for p in parts) ** 0.5 for h in range(heads)]


def test_llama_removes_exactly_the_lowest_scoring_heads_and_reloads(make_context, tiny_llama, host, tmp_path):
    model, tokenizer = tiny_llama
    ctx, batch, original = prepared(
        make_context,
        "- {name: p, uses: prune-heads, with: {heads_per_layer: 2, importance: magnitude}}",
        model,
        tokenizer,
        family="decoder",
    )
    expected = []  # by hand: the 2 heads per layer with the smallest q/k/v rows + o_proj columns
    for layer in original.model.layers:
        a = layer.self_attn
        expected.append(
            lowest(head_norms([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight, a.o_proj.weight.t()], 4, 8), 2)
        )
    want = removed_logits(original, batch, expected)

    result = run_stage(ctx)
    details = result.details
    assert details["architecture"] == "llama" and details["unit"] == "head"
    assert details["pruned_heads"] == {"0": expected[0], "1": expected[1]} and details["heads_after"] == [2, 2]
    for layer in result.model.model.layers:
        a = layer.self_attn
        assert [tuple(p.weight.shape) for p in (a.q_proj, a.k_proj, a.v_proj, a.o_proj)] == [(16, 32)] * 3 + [(32, 16)]
    kept = [h for h in range(4) if h not in expected[0]]
    rows = [c for h in kept for c in range(h * 8, h * 8 + 8)]
    assert torch.equal(
        result.model.model.layers[0].self_attn.k_proj.weight, original.model.layers[0].self_attn.k_proj.weight[rows]
    )
    with torch.no_grad():
        assert torch.allclose(result.model(**batch).logits, want, atol=1e-5)
    assert details["params_before"] - details["params_after"] == 2 * 2 * 4 * (8 * 32)  # q, k, v rows and o columns
    folder = tmp_path / "art"
    reloads_identically(result.model, tokenizer, "causal-lm", batch, host, folder)
    assert json.loads((folder / "config.json").read_text())["num_attention_heads"] == 4  # the config is unchanged


def test_grouped_query_attention_loses_whole_key_value_groups(make_context, tiny_bpe_tokenizer_dir, host, tmp_path):
    model, tokenizer = built("LlamaForCausalLM", GQA_LLAMA, tiny_bpe_tokenizer_dir)
    ctx, batch, original = prepared(
        make_context,
        "- {name: p, uses: prune-heads, with: {heads_per_layer: 1, calibration_batches: 2}}",
        model,
        tokenizer,
        config=GQA_LLAMA,
        family="decoder",
    )
    result = run_stage(ctx)
    details = result.details
    assert details["unit"] == "key/value group (2 query heads each)"
    assert details["heads_before"] == [2, 2] and details["heads_after"] == [1, 1]
    scores = [torch.tensor(details["scores"][str(i)]) for i in range(2)]
    removed = [details["pruned_heads"][str(i)] for i in range(2)]
    assert removed == prune_heads.choose_heads(scores, {"heads_per_layer": 1, "min_heads_per_layer": 1})
    for layer in result.model.model.layers:
        a = layer.self_attn
        # one key/value head (8 rows) and its two query heads (16 rows) went; the grouping is unchanged
        assert [tuple(p.weight.shape) for p in (a.q_proj, a.k_proj, a.v_proj, a.o_proj)] == [
            (16, 32),
            (8, 32),
            (8, 32),
            (32, 16),
        ]
        assert a.num_key_value_groups == 2
    group = 1 - removed[0][0]  # the group layer 0 kept
    q0 = original.model.layers[0].self_attn.q_proj.weight
    assert torch.equal(result.model.model.layers[0].self_attn.q_proj.weight, q0[group * 16 : (group + 1) * 16])
    with torch.no_grad():
        assert torch.allclose(result.model(**batch).logits, removed_logits(original, batch, removed), atol=1e-5)
    reloads_identically(result.model, tokenizer, "causal-lm", batch, host, tmp_path / "art")


def test_gpt2_fused_attention_is_pruned_and_reloads(make_context, tiny_bpe_tokenizer_dir, host, tmp_path):
    model, tokenizer = built("GPT2LMHeadModel", TINY_GPT2, tiny_bpe_tokenizer_dir)
    ctx, batch, original = prepared(
        make_context,
        "- {name: p, uses: prune-heads, with: {heads_per_layer: 1, importance: magnitude}}",
        model,
        tokenizer,
        config=TINY_GPT2,
        family="decoder",
    )
    expected = []
    for block in original.transformer.h:
        fused = block.attn.c_attn.weight.t()  # Conv1D stores (in, out): query | key | value columns
        parts = [fused[:32], fused[32:64], fused[64:], block.attn.c_proj.weight]
        expected.append(lowest(head_norms(parts, 4, 8), 1))
    want = removed_logits(original, batch, expected)
    result = run_stage(ctx)
    assert result.details["architecture"] == "gpt2"
    assert result.details["pruned_heads"] == {"0": expected[0], "1": expected[1]}
    for block in result.model.transformer.h:
        assert tuple(block.attn.c_attn.weight.shape) == (32, 72) and tuple(block.attn.c_proj.weight.shape) == (24, 32)
        assert block.attn.num_heads == 3 and block.attn.split_size == 24
    with torch.no_grad():
        assert torch.allclose(result.model(**batch).logits, want, atol=1e-5)
    reloads_identically(result.model, tokenizer, "causal-lm", batch, host, tmp_path / "art")


def t5_attention(model):
    """T5's attention modules in the stage's order: encoder.i, decoder.i.self, decoder.i.cross."""
    encoder = [block.layer[0].SelfAttention for block in model.encoder.block]
    decoder = [
        m for block in model.decoder.block for m in (block.layer[0].SelfAttention, block.layer[1].EncDecAttention)
    ]
    return encoder + decoder


def test_t5_prunes_encoder_decoder_and_cross_attention(make_context, tiny_t5, host, tmp_path):
    model, tokenizer = tiny_t5
    ctx, batch, original = prepared(
        make_context,
        "- {name: p, uses: prune-heads, with: {ratio: 0.5, calibration_batches: 2}}",
        model,
        tokenizer,
        family="encoder-decoder",
    )
    result = run_stage(ctx)
    details = result.details
    labels = ["encoder.0", "encoder.1", "decoder.0.self", "decoder.0.cross", "decoder.1.self", "decoder.1.cross"]
    assert details["attention"] == labels and details["heads_removed"] == 12  # int(0.5 * 6 blocks x 4 heads)
    scores = [torch.tensor(details["scores"][label]) for label in labels]
    removed = [details["pruned_heads"][label] for label in labels]
    assert removed == prune_heads.choose_heads(scores, {"ratio": 0.5, "min_heads_per_layer": 1})
    assert all(len(s) > 0 and bool((s > 0).all()) for s in scores)
    for attention, gone in zip(t5_attention(result.model), removed):
        width = 8 * (4 - len(gone))
        assert attention.n_heads == 4 - len(gone) and attention.inner_dim == width
        assert [tuple(p.weight.shape) for p in (attention.q, attention.k, attention.v, attention.o)] == [
            (width, 32)
        ] * 3 + [(32, width)]
    with torch.no_grad():
        assert torch.allclose(result.model(**batch).logits, removed_logits(original, batch, removed), atol=1e-5)
    # the stack's position-bias embedding keeps the columns of every head some encoder layer still has
    used = sorted({h for gone in removed[:2] for h in range(4) if h not in gone})
    embedding = result.model.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight
    before = original.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight
    assert torch.equal(embedding, before[:, used])
    reloaded = reloads_identically(result.model, tokenizer, "seq2seq", batch, host, tmp_path / "art")
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    generated = result.model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert torch.equal(reloaded.generate(**inputs, max_new_tokens=4, do_sample=False), generated)
    # the cache path (one new token at a time) matches recomputing everything
    assert torch.equal(result.model.generate(**inputs, max_new_tokens=4, do_sample=False, use_cache=False), generated)


def test_t5_shared_position_bias_drops_only_columns_no_layer_keeps(make_context, tiny_t5, host, tmp_path):
    model, tokenizer = tiny_t5
    ctx, batch, original = prepared(
        make_context, "- {name: p, uses: prune-heads, with: {ratio: 0.5}}", model, tokenizer, family="encoder-decoder"
    )
    # both encoder layers lose head 0; no head goes from both decoder self-attentions
    removed = [[0, 2], [0], [1], [0, 1, 2], [0, 3], []]
    sites = prune_heads.find_attention(model)
    prune_heads.remove_heads(model, sites, removed, batch)
    encoder_bias = model.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight
    decoder_bias = model.decoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight
    assert tuple(encoder_bias.shape) == (32, 3) and tuple(decoder_bias.shape) == (32, 4)
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, removed_logits(original, batch, removed), atol=1e-5)
    # a second pruning of the pruned model composes with the first, and the artifact rebuilds both
    first = {
        "kept_heads": {s.label: [h for h in range(4) if h not in r] for s, r in zip(sites, removed)},
        "heads_before": [4] * 6,
        "head_size": 8,
    }
    again = [[1], [1], [], [], [0], [2]]  # encoder: heads 1 and 3 are left, in different layers
    before = [s.num_units for s in sites]
    twice = copy.deepcopy(model)
    with torch.no_grad():
        want = removed_logits(twice, batch, again)
    prune_heads.remove_heads(twice, prune_heads.find_attention(twice), again, batch)
    with torch.no_grad():
        assert torch.allclose(twice(**batch).logits, want, atol=1e-5)
    assert tuple(twice.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight.shape) == (32, 2)
    second = {
        "kept_heads": {s.label: [h for h in range(n) if h not in r] for s, n, r in zip(sites, before, again)},
        "heads_before": before,
        "head_size": 8,
    }
    fresh = type(model)(model.config).eval()
    for info in (first, second):
        prune_heads.rebuild(fresh, info)
    fresh.load_state_dict(twice.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(**batch).logits, twice(**batch).logits)


def test_checks_count_t5_blocks_and_key_value_groups(write_recipe, host):
    def problems(settings, family, config=None):
        try:
            recipe = load_recipe(
                write_recipe(f"- {{name: p, uses: prune-heads, with: {settings}}}", config=config, family=family),
                ["model.fine_tuned=true"],
                host,
            )
        except RecipeError as exc:
            return [p.message for p in exc.problems], [p.message for p in exc.warnings]
        return [], [p.message for p in recipe.warnings]

    errors, warnings = problems("{ratio: 0.04}", "encoder-decoder")  # 24 heads: 2 encoder + 2 x 2 decoder blocks
    assert not errors and any("removes 0 of the model's 24 heads" in w for w in warnings)
    assert problems("{ratio: 0.05}", "encoder-decoder") == ([], [])
    errors, _ = problems("{heads_per_layer: 4}", "encoder-decoder")
    assert any("heads_per_layer 4 would remove every head of a layer" in e for e in errors)
    errors, _ = problems("{heads_per_layer: 2}", "decoder", GQA_LLAMA)
    assert any(
        "would remove every head of a layer (the model has 2 key/value groups of 2 query heads per attention "
        "block); use at most 1" in e
        for e in errors
    )
    assert problems("{heads_per_layer: 1}", "decoder", GQA_LLAMA) == ([], [])
    assert problems("{ratio: 0.25}", "decoder") == ([], [])


def test_apply_prunes_a_decoder_and_a_t5_end_to_end(write_recipe, tmp_path, host):
    for family, metric, total in (("decoder", "perplexity", 8), ("encoder-decoder", "exact_match", 24)):
        recipe = write_recipe(
            "- {name: ft, uses: train, with: {max_steps: 4, learning_rate: 3.0e-3, batch_size: 16}}\n"
            "- {name: prune, uses: prune-heads,\n"
            "   with: {ratio: 0.25, calibration_batches: 2, calibration_batch_size: 8,\n"
            "          recovery: {max_steps: 2, batch_size: 8}}}\n",
            name=f"{family}.yaml",
            family=family,
        )
        out = tmp_path / family
        assert main(["apply", str(recipe), "--output", str(out), "-q"]) == 0
        report = json.loads((out / "report.json").read_text())
        ft, prune = report["stages"][1], report["stages"][2]
        assert prune["plugin"] == "prune-heads" and prune["params"] < ft["params"]
        details = prune["details"]
        assert details["heads_removed"] == total // 4 and sum(details["heads_after"]) == total - total // 4
        assert details["recovery"]["steps"] == 2
        assert prune["metric"]["name"] == metric
        model, _ = load_artifact(prune["artifact"], host)  # the recorded transform rebuilds the pruned shapes
        assert [site.num_units for site in prune_heads.find_attention(model)] == details["heads_after"]


def test_an_unknown_attention_layout_is_refused_clearly():
    model = unknown_architecture()
    with pytest.raises(ValueError, match=r"prune-heads does not know model type 'opt' \(it knows: bert, roberta, "):
        prune_heads.find_attention(model)
