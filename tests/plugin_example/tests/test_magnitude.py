"""Tests of the magnitude-prune stage, on tiny real transformers models.

Self-contained (no fixtures from recipe-compose's own test suite), so that they run
from this package's folder (`pytest tests`) as well as in recipe-compose's suite.
"""

from __future__ import annotations

import json

import pytest
import torch

from compose.api import StageContext, TrainingSetup, TrainingStep, load_artifact, save_artifact
from compose.testing import plugin_host, run_recipe, stage_context, stage_settings
from recipe_compose_magnitude import plugin

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "great", "fun", "bad", "awful", "dull", "the", "film"]


@pytest.fixture
def host():
    """A plugin host with only this plugin registered (as recipe-compose would register it)."""
    return plugin_host(plugin)


@pytest.fixture
def bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(WORDS),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=2,
    )
    return BertForSequenceClassification(config).eval()


def settings_for(host, **chosen) -> dict:
    """The stage's settings as a recipe's ``with: {chosen}`` gives them (the schema's defaults filled in)."""
    return stage_settings(host, "magnitude-prune", **chosen)


def context(host, model, **chosen) -> StageContext:
    return stage_context(host, "magnitude-prune", model, settings=chosen, name="prune")  # the stage reads no data


def weights(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def zero_fraction(tensor) -> float:
    return (tensor == 0).float().mean().item()


def test_registers_its_stage_with_a_complete_schema(host):
    stage = host.stage("magnitude-prune")
    assert host.stages["magnitude-prune"].plugin.name == plugin.__name__
    assert stage.compresses and stage.needs == {"quantized": False} and not stage.leaves
    assert set(stage.families) == {"encoder", "decoder", "encoder-decoder"}
    assert stage.schema["additionalProperties"] is False
    for key, spec in stage.schema["properties"].items():
        assert "default" in spec and len(spec["description"]) > 40, key


def test_per_layer_zeroes_the_target_fraction_of_every_block_linear(host, bert):
    before = weights(bert)
    result = host.stage("magnitude-prune").run(context(host, bert, sparsity=0.5))
    after = bert.state_dict()
    assert set(after) == set(before)  # prune.remove ran: no weight_orig / weight_mask left
    pruned = [k for k in after if ".encoder.layer." in k and k.endswith(".weight") and "LayerNorm" not in k]
    assert len(pruned) == 2 * 6  # q, k, v, attention output, intermediate, output per layer
    for key in pruned:
        assert zero_fraction(after[key]) == pytest.approx(0.5, abs=1 / after[key].numel()), key
        kept = after[key] != 0
        assert torch.equal(after[key][kept], before[key][kept])  # survivors unchanged
        assert before[key][~kept].abs().max() <= before[key][kept].abs().min()  # the smallest went
    for key in after:
        if key not in pruned:
            assert torch.equal(after[key], before[key]), f"{key} should be untouched"
    details = result.details
    assert details["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert set(details["sparsity_by_scope"]) == {"attention", "feed-forward"}
    assert details["sparsity_by_layer_type"]["attention.self.query"] == pytest.approx(0.5, abs=1e-3)
    assert details["pruned_layers"] == 12
    json.dumps(details)  # goes into report.json


def test_global_uses_one_threshold_across_layers(host, bert):
    with torch.no_grad():
        bert.bert.encoder.layer[0].intermediate.dense.weight.mul_(0.01)  # a layer of tiny weights
    before = weights(bert)
    details = host.stage("magnitude-prune").run(context(host, bert, sparsity=0.3, granularity="global")).details
    assert details["sparsity"] == pytest.approx(0.3, abs=1e-3)
    assert zero_fraction(bert.bert.encoder.layer[0].intermediate.dense.weight) == 1.0
    assert zero_fraction(bert.bert.encoder.layer[1].intermediate.dense.weight) < 0.3
    layers = [name for name, *_ in plugin.select_layers(bert, ["attention", "feed-forward"])]
    state = bert.state_dict()
    removed = torch.cat([before[f"{n}.weight"][state[f"{n}.weight"] == 0].abs() for n in layers])
    kept = torch.cat([before[f"{n}.weight"][state[f"{n}.weight"] != 0].abs() for n in layers])
    assert removed.max() <= kept.min()


def test_scope_selects_the_layers_and_the_classifier_only_when_asked(host, bert):
    before = weights(bert)
    details = host.stage("magnitude-prune").run(context(host, bert, scope=["classifier"], sparsity=0.25)).details
    assert details["sparsity_by_scope"] == {"classifier": 0.25}
    assert zero_fraction(bert.classifier.weight) == 0.25
    attention = bert.bert.encoder.layer[0].attention.self.query.weight
    assert torch.equal(attention, before["bert.encoder.layer.0.attention.self.query.weight"])
    host.stage("magnitude-prune").run(context(host, bert, scope=["feed-forward"]))
    assert zero_fraction(bert.bert.encoder.layer[1].output.dense.weight) == 0.5
    assert zero_fraction(bert.bert.encoder.layer[1].attention.output.dense.weight) == 0.0


@pytest.mark.parametrize("family", ["gpt2", "t5", "llama"])
def test_finds_the_blocks_of_decoder_and_encoder_decoder_models(host, family):
    import transformers

    torch.manual_seed(0)
    if family == "gpt2":  # Linear layers written as transformers' Conv1D
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=4))
    elif family == "t5":  # nested lists: blocks of sub-layers, encoder and decoder
        config = transformers.T5Config(vocab_size=50, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
        model = transformers.T5ForConditionalGeneration(config)
    else:
        config = transformers.LlamaConfig(
            vocab_size=50,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
        model = transformers.LlamaForCausalLM(config)
    ids = torch.tensor([[1, 5, 7, 9, 11]])
    details = (
        host.stage("magnitude-prune")
        .run(context(host, model, scope=["attention", "feed-forward", "classifier"]))
        .details
    )
    assert details["sparsity_by_scope"]["attention"] == pytest.approx(0.5, abs=1e-3)
    assert details["sparsity_by_scope"]["feed-forward"] == pytest.approx(0.5, abs=1e-3)
    if family == "llama":  # its LM head is a Linear of its own: the "classifier" scope prunes it
        assert details["sparsity_by_scope"]["classifier"] == zero_fraction(model.lm_head.weight) == 0.5
    else:  # the LM head IS the embedding matrix (tied): never pruned
        assert "classifier" not in details["sparsity_by_scope"]
    assert zero_fraction(model.get_input_embeddings().weight) == 0.0
    kwargs = {"decoder_input_ids": ids} if family == "t5" else {}
    assert torch.isfinite(model(input_ids=ids, **kwargs).logits).all()


def test_check_warns_when_it_would_prune_nothing_and_describe_says_what_it_does(host):
    stage = host.stage("magnitude-prune")
    found = list(stage.check(settings_for(host, sparsity=0), None))
    assert [(c.severity, c.path) for c in found] == [("warning", ("sparsity",))]
    assert "prune nothing" in found[0].message
    assert list(stage.check(settings_for(host), None)) == []
    assert stage.describe(settings_for(host, sparsity=0.3)) == (
        "zero the 30% smallest-magnitude weights of the attention + feed-forward Linear layers "
        "(the same fraction in every layer)"
    )


def test_a_saved_pruned_model_reloads_with_its_zeros(host, bert, tmp_path):
    host.stage("magnitude-prune").run(context(host, bert))
    folder = save_artifact(bert, None, tmp_path / "model", "sequence-classification")
    reloaded, _ = load_artifact(folder, host)
    ids = torch.tensor([[2, 5, 6, 11, 12, 3]])
    assert torch.equal(reloaded(input_ids=ids).logits, bert(input_ids=ids).logits)
    assert zero_fraction(reloaded.bert.encoder.layer[0].attention.self.value.weight) == 0.5


@pytest.mark.parametrize("hold", [True, False])
def test_later_training_keeps_the_zeros_only_with_hold_in_training(host, bert, hold):
    host.stage("magnitude-prune").run(context(host, bert, hold_in_training=hold))
    setup = TrainingSetup(stage="recover", settings={}, model=bert)
    host.hook.compose_training_setup(setup=setup)  # what compose.api.train_model does first
    assert len(setup.on_step_end) == int(hold)
    with torch.no_grad():  # an optimizer step that moves every weight
        for p in bert.parameters():
            p.add_(0.1)
    for callback in setup.on_step_end:
        callback(TrainingStep("recover", 1, 1, 1, 0.0, bert))
    assert zero_fraction(bert.bert.encoder.layer[1].intermediate.dense.weight) == (0.5 if hold else 0.0)


def test_end_to_end_train_prune_recover(tmp_path, monkeypatch, example_recipe):
    """`recipe apply` with the installed plugin (entry point), as a user runs it."""
    recipe = example_recipe(
        "  - {name: finetune, uses: train, with: {max_steps: 4, batch_size: 16, learning_rate: 3.0e-3, "
        "eval_every_epoch: false}}\n"
        "  - {name: prune, uses: magnitude-prune, with: {sparsity: 0.6, granularity: global}}\n"
        "  - {name: recover, uses: train, with: {max_steps: 2, batch_size: 16, learning_rate: 1.0e-3, "
        "eval_every_epoch: false}}\n"
    )
    monkeypatch.setenv("RECIPE_COMPOSE_PLUGINS", "train,magnitude")
    assert run_recipe("apply", str(recipe), "--quiet") == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    rows = {row["name"]: row for row in report["stages"]}
    assert report["baseline"]["stage"] == "finetune"  # the model entering the first compressing stage
    assert rows["prune"]["plugin"] == "magnitude-prune"
    assert rows["prune"]["details"]["sparsity"] == pytest.approx(0.6, abs=1e-3)
    recovered, _ = load_artifact(rows["recover"]["artifact"])
    layers = plugin.select_layers(recovered, ["attention", "feed-forward"])
    zeros = sum(int((m.weight == 0).sum()) for *_, m in layers)
    assert zeros / sum(m.weight.numel() for *_, m in layers) == pytest.approx(0.6, abs=1e-3)


def test_a_scope_that_selects_nothing_says_what_to_change(host):
    import transformers

    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=50, n_embd=32, n_layer=1, n_head=4))
    with pytest.raises(ValueError) as caught:  # its LM head is the (tied) embedding matrix
        host.stage("magnitude-prune").run(context(host, model, scope=["classifier"]))
    assert str(caught.value).startswith(f"scope ['classifier'] selects no layer of {type(model).__name__}: ")
    assert str(caught.value).endswith("add 'attention' or 'feed-forward' to scope")
