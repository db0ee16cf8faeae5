"""The `prune-heads` stage on tiny real BERTs: exact heads removed, smaller matrices, reloads."""

import copy
import json

import pytest
import torch

from compose.api import StageType, load_artifact, save_artifact
from compose.cli.main import main
from compose.errors import RecipeError
from compose.plugins import prune_heads
from compose.recipe import load_recipe
from compose.rules import check_order

#: 3 layers of 8 heads (head size 4): room for a global ranking to spread unevenly.
WIDE_BERT = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 8,
             "intermediate_size": 64, "max_position_embeddings": 64, "vocab_size": 31}  # fmt: skip


def wide_bert():
    from transformers import AutoConfig, BertForSequenceClassification

    settings = {k: v for k, v in WIDE_BERT.items() if k != "model_type"}
    torch.manual_seed(1)
    return BertForSequenceClassification(AutoConfig.for_model("bert", num_labels=2, **settings)).eval()


def batch_of(ctx):
    return next(iter(ctx.task.batches("dev", ctx.tokenizer, 8)))


def gated_logits(model, batch, removed):
    """Logits with the `removed` heads' gates set to 0: what removing them must reproduce."""
    sites = prune_heads.find_attention(model)
    with torch.no_grad(), prune_heads.head_gates(sites, torch.device("cpu")) as gates:
        for gate, heads in zip(gates, removed):
            gate[heads] = 0.0
        return model(**batch).logits


def stage(ctx):
    return ctx.plugin_host.stage("prune-heads").run(ctx)


def test_heads_per_layer_removes_exactly_the_lowest_scoring_heads(make_context, tiny_bert):
    model, tokenizer = tiny_bert
    ctx = make_context("- {name: p, uses: prune-heads, with: {heads_per_layer: 2, importance: magnitude}}",
                       model, tokenizer)  # fmt: skip
    batch = batch_of(ctx)
    original = copy.deepcopy(model)
    expected = []  # the 2 heads per layer with the smallest q/k/v/output weight norm, computed here by hand
    for layer in original.bert.encoder.layer:
        attn, norms = layer.attention, []
        for h in range(4):
            rows = slice(h * 8, h * 8 + 8)
            parts = [attn.self.query.weight[rows], attn.self.key.weight[rows], attn.self.value.weight[rows],
                     attn.output.dense.weight[:, rows]]  # fmt: skip
            norms.append(sum(p.detach().pow(2).sum().item() for p in parts) ** 0.5)
        expected.append(sorted(sorted(range(4), key=norms.__getitem__)[:2]))
    want = gated_logits(original, batch, expected)

    result = stage(ctx)
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
    ctx = make_context(
        "- {name: p, uses: prune-heads, with: {ratio: 0.5, min_heads_per_layer: 3, calibration_batches: 2}}",
        model, tokenizer, config=WIDE_BERT,
    )  # fmt: skip
    batch = batch_of(ctx)
    original = copy.deepcopy(model)
    details = stage(ctx).details
    assert details["heads_removed"] == 12 and sum(details["heads_after"]) == 12  # int(0.5 * 24)
    assert all(n >= 3 for n in details["heads_after"])
    scores = [torch.tensor(details["scores"][str(i)]) for i in range(3)]
    assert [details["pruned_heads"][str(i)] for i in range(3)] == prune_heads.choose_heads(
        scores, {"ratio": 0.5, "min_heads_per_layer": 3}
    )
    removed = [details["pruned_heads"][str(i)] for i in range(3)]
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, gated_logits(original, batch, removed), atol=1e-6)


def test_global_ranking_is_across_layers_and_keeps_the_floor():
    scores = [torch.tensor([0.01, 0.02, 0.03, 0.04]), torch.tensor([0.5, 0.6, 0.7, 0.1])]
    assert prune_heads.choose_heads(scores, {"ratio": 0.5, "min_heads_per_layer": 1}) == [[0, 1, 2], [3]]
    assert prune_heads.choose_heads(scores, {"ratio": 0.5, "min_heads_per_layer": 2}) == [[0, 1], [0, 3]]
    assert prune_heads.choose_heads(scores, {"heads_per_layer": 3, "min_heads_per_layer": 2}) == [[0, 1], [0, 3]]


def test_artifact_reloads_to_identical_logits(make_context, tiny_bert, host, tmp_path):
    model, tokenizer = tiny_bert
    ctx = make_context("- {name: p, uses: prune-heads, with: {ratio: 0.5, calibration_batches: 2}}", model, tokenizer)
    batch = batch_of(ctx)
    pruned = stage(ctx).model
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
    ctx = make_context("- {name: p, uses: prune-heads, with: {heads_per_layer: 1, calibration_batches: 2}}",
                       model, tokenizer)  # fmt: skip
    sites = prune_heads.find_attention(model)
    batches = [batch_of(ctx)]
    taylor = prune_heads.taylor_scores(model, sites, batches, torch.device("cpu"), _NoBar())
    magnitude = prune_heads.magnitude_scores(sites)
    assert all(bool((t > 0).all()) for t in taylor)
    assert not any(torch.allclose(prune_heads.normalise_per_layer([t])[0], prune_heads.normalise_per_layer([m])[0])
                   for t, m in zip(taylor, magnitude))  # fmt: skip
    assert all(p.requires_grad for p in model.parameters()) and all(p.grad is None for p in model.parameters())
    # The gate gradient is the real sensitivity: check it against a finite difference (in float64).
    double = copy.deepcopy(model).double()
    double_sites = prune_heads.find_attention(double)
    grad = prune_heads.taylor_scores(double, double_sites, batches, torch.device("cpu"), _NoBar())[0][1].item()
    assert grad == pytest.approx(taylor[0][1].item(), rel=1e-3)
    eps, losses = 1e-4, []
    for value in (1 + eps, 1 - eps):
        with torch.no_grad(), prune_heads.head_gates(double_sites, torch.device("cpu")) as gates:
            gates[0][1] = value
            losses.append(double(**batches[0]).loss.item())
    assert abs(losses[0] - losses[1]) / (2 * eps) == pytest.approx(grad, rel=2e-3)  # float32 gate: 1 +- eps rounds
    details = stage(ctx).details
    assert details["importance"] == "taylor" and details["calibration"] == {"split": "train", "batches": 2,
                                                                           "examples": 64}  # fmt: skip


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
    quantize = StageType(name="fake-quantize", run=lambda ctx: None, schema={"type": "object"},
                         description="leaves the model quantized", leaves={"quantized": True})  # fmt: skip
    prune = host.stage("prune-heads")
    recipe = load_recipe(write_recipe("- {name: p, uses: prune-heads, with: {ratio: 0.5}}"), ["model.fine_tuned=true"],
                         host).data  # fmt: skip
    findings = check_order([("q", quantize), ("p", prune)], recipe, {"prune-heads": prune, "fake-quantize": quantize})
    assert any("stage 'p' (prune-heads) needs a model that is not quantized ('q' left it quantized)" in f.message
               for f in findings)  # fmt: skip
    assert any("an order that works: p -> q" in f.message for f in findings)
    assert not check_order([("p", prune), ("q", quantize)], recipe, {})


def test_recipe_checks_head_counts_and_exclusive_settings(write_recipe, host):
    def problems(settings, overrides=("model.fine_tuned=true",)):
        try:
            recipe = load_recipe(write_recipe(f"- {{name: p, uses: prune-heads, with: {settings}}}"), list(overrides),
                                 host)  # fmt: skip
        except RecipeError as exc:
            return [p.message for p in exc.problems], [p.message for p in exc.warnings]
        return [], [p.message for p in recipe.warnings]

    errors, _ = problems("{heads_per_layer: 4}")
    assert any("heads_per_layer 4 would remove every head of a layer (the model has 4 per layer)" in e for e in errors)
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
    settings = {"ratio": 0.3, "min_heads_per_layer": 1, "importance": "taylor", "calibration_split": "train",
                "calibration_batches": 16, "calibration_batch_size": 32, "recovery": None}  # fmt: skip
    text = host.stage("prune-heads").describe(settings)
    assert text.startswith("remove 30% of all attention heads") and "no recovery training" in text
