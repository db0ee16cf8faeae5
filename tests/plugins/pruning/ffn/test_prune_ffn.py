"""The `prune-ffn` stage on tiny real models of the three families: exact neurons removed, smaller matrices, reloads."""

import copy
import json

import pytest
import torch

from compose.api import load_artifact
from compose.cli.main import main
from compose.errors import RecipeError
from compose.plugins.pruning.ffn import stage as prune_ffn
from compose.recipe.load import load_recipe
from tests.conftest import TINY_T5
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

GATED_T5 = {**TINY_T5, "feed_forward_proj": "gated-gelu"}


def removed_logits(model, batch, removed):
    """The model's logits with the ``removed`` units masked out."""
    return masked_logits(prune_ffn.neuron_masks, prune_ffn.find_ffn(model), model, batch, removed)


def norms_of(inputs, output):
    """Per neuron, by hand: L2 norm of its rows of each (out, in) input matrix and its column of the output."""
    total = sum(w.detach().pow(2).sum(1) for w in inputs) + output.detach().pow(2).sum(0)
    return total.sqrt().tolist()


def _removed(details, before):
    return [[j for j in range(n) if j not in kept] for n, kept in zip(before, details)]


# -- the four layouts ---------------------------------------------------------------------------------------------


def test_bert_loses_exactly_the_lowest_magnitude_neurons_and_reloads(make_context, tiny_bert, host, tmp_path):
    model, tokenizer = tiny_bert
    ctx, batch, original = prepared(
        make_context,
        "- {name: p, uses: prune-ffn, with: {ratio: 0.5, scope: per_layer, importance: magnitude}}",
        model,
        tokenizer,
    )
    expected = []  # by hand: per layer the 32 of 64 neurons with the smallest intermediate row + output column norm
    for layer in original.bert.encoder.layer:
        expected.append(lowest(norms_of([layer.intermediate.dense.weight], layer.output.dense.weight), 32))
    want = removed_logits(original, batch, expected)

    result = run_stage(ctx)
    details = result.details
    assert details["architecture"] == "bert" and details["blocks"] == ["0", "1"]
    assert details["neurons_before"] == [64, 64] and details["neurons_after"] == [32, 32]
    assert details["neurons_requested"] == details["neurons_removed"] == 64
    # per neuron: an intermediate row (32) and bias (1), an output column (32)
    assert details["params_removed"] == details["params_before"] - details["params_after"] == 64 * (32 + 1 + 32)
    for layer, gone, before in zip(result.model.bert.encoder.layer, expected, original.bert.encoder.layer):
        assert tuple(layer.intermediate.dense.weight.shape) == (32, 32)
        assert tuple(layer.output.dense.weight.shape) == (32, 32)
        kept = [j for j in range(64) if j not in gone]
        assert torch.equal(layer.intermediate.dense.weight, before.intermediate.dense.weight[kept])
        assert torch.equal(layer.intermediate.dense.bias, before.intermediate.dense.bias[kept])
        assert torch.equal(layer.output.dense.weight, before.output.dense.weight[:, kept])
    with torch.no_grad():
        assert torch.allclose(result.model(**batch).logits, want, atol=1e-6)
    folder = tmp_path / "art"
    reloaded = reloads_identically(result.model, tokenizer, "sequence-classification", batch, host, folder)
    assert [tuple(layer.intermediate.dense.weight.shape) for layer in reloaded.bert.encoder.layer] == [(32, 32)] * 2
    assert json.loads((folder / "config.json").read_text())["intermediate_size"] == 64  # the config is unchanged


def test_llama_gated_ffn_loses_gate_up_rows_and_down_columns(make_context, tiny_llama, host, tmp_path):
    model, tokenizer = tiny_llama
    ctx, batch, original = prepared(
        make_context,
        "- {name: p, uses: prune-ffn, with: {layer_ratios: [0.25, 0.75], importance: magnitude}}",
        model,
        tokenizer,
        family="decoder",
    )
    expected = []
    for layer, n in zip(original.model.layers, (16, 48)):
        mlp = layer.mlp
        expected.append(lowest(norms_of([mlp.gate_proj.weight, mlp.up_proj.weight], mlp.down_proj.weight), n))
    want = removed_logits(original, batch, expected)
    result = run_stage(ctx)
    details = result.details
    assert details["architecture"] == "llama" and details["neurons_after"] == [48, 16]
    assert details["params_removed"] == 64 * 3 * 32  # gate and up rows, down columns; no biases
    for layer, width in zip(result.model.model.layers, (48, 16)):
        mlp = layer.mlp
        assert [tuple(p.weight.shape) for p in (mlp.gate_proj, mlp.up_proj, mlp.down_proj)] == [
            (width, 32),
            (width, 32),
            (32, width),
        ]
        assert mlp.intermediate_size == width
    with torch.no_grad():
        assert torch.allclose(result.model(**batch).logits, want, atol=1e-5)
    reloads_identically(result.model, tokenizer, "causal-lm", batch, host, tmp_path / "art")


def test_gpt2_conv1d_weights_are_sliced_transposed(make_context, tiny_bpe_tokenizer_dir, host, tmp_path):
    model, tokenizer = built("GPT2LMHeadModel", TINY_GPT2, tiny_bpe_tokenizer_dir)
    ctx, batch, original = prepared(
        make_context,
        "- {name: p, uses: prune-ffn, with: {ratio: 0.5, scope: per_layer, importance: magnitude}}",
        model,
        tokenizer,
        config=TINY_GPT2,
        family="decoder",
    )
    # Conv1D stores (in, out): c_fc's neuron j is column j, c_proj's is row j
    expected = [lowest(norms_of([b.mlp.c_fc.weight.t()], b.mlp.c_proj.weight.t()), 64) for b in original.transformer.h]
    want = removed_logits(original, batch, expected)
    result = run_stage(ctx)
    assert result.details["architecture"] == "gpt2" and result.details["neurons_after"] == [64, 64]
    assert result.details["params_removed"] == 128 * (32 + 1 + 32)
    for block, gone, before in zip(result.model.transformer.h, expected, original.transformer.h):
        kept = [j for j in range(128) if j not in gone]
        assert tuple(block.mlp.c_fc.weight.shape) == (32, 64) and block.mlp.c_fc.nf == 64
        assert tuple(block.mlp.c_proj.weight.shape) == (64, 32) and block.mlp.c_proj.nx == 64
        assert torch.equal(block.mlp.c_fc.weight, before.mlp.c_fc.weight[:, kept])
        assert torch.equal(block.mlp.c_proj.weight, before.mlp.c_proj.weight[kept])
    with torch.no_grad():
        assert torch.allclose(result.model(**batch).logits, want, atol=1e-5)
    reloads_identically(result.model, tokenizer, "causal-lm", batch, host, tmp_path / "art")


@pytest.mark.parametrize("gated", [False, True], ids=["wi", "wi_0-wi_1"])
def test_t5_prunes_encoder_and_decoder_blocks(make_context, tiny_bpe_tokenizer_dir, host, tmp_path, gated):
    config = GATED_T5 if gated else TINY_T5
    model, tokenizer = built("T5ForConditionalGeneration", config, tiny_bpe_tokenizer_dir, "seq2seq")
    ctx, batch, original = prepared(
        make_context,
        "- {name: p, uses: prune-ffn, with: {ratio: 0.5, calibration_batches: 2}}",
        model,
        tokenizer,
        config=config,
        family="encoder-decoder",
    )
    result = run_stage(ctx)
    details = result.details
    assert details["blocks"] == ["encoder.0", "encoder.1", "decoder.0", "decoder.1"]
    assert sum(details["neurons_after"]) == 128 and all(n % 8 == 0 for n in details["neurons_after"])
    inputs = 2 if gated else 1
    assert details["params_removed"] == 128 * (inputs + 1) * 32
    blocks = [b.layer[-1].DenseReluDense for b in (*result.model.encoder.block, *result.model.decoder.block)]
    names = ("wi_0", "wi_1") if gated else ("wi",)
    removed = []
    for dense, before, width in zip(
        blocks,
        (b.layer[-1].DenseReluDense for b in (*original.encoder.block, *original.decoder.block)),
        details["neurons_after"],
    ):
        assert [tuple(getattr(dense, n).weight.shape) for n in names] == [(width, 32)] * inputs
        assert tuple(dense.wo.weight.shape) == (32, width)
        rows = {tuple(r.tolist()) for r in dense.wo.weight.t()}
        removed.append([j for j, col in enumerate(before.wo.weight.t()) if tuple(col.tolist()) not in rows])
    assert [len(r) for r in removed] == [64 - n for n in details["neurons_after"]]
    with torch.no_grad():
        assert torch.allclose(result.model(**batch).logits, removed_logits(original, batch, removed), atol=1e-5)
    reloaded = reloads_identically(result.model, tokenizer, "seq2seq", batch, host, tmp_path / "art")
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    assert torch.equal(
        reloaded.generate(**inputs, max_new_tokens=4, do_sample=False),
        result.model.generate(**inputs, max_new_tokens=4, do_sample=False),
    )


# -- what the scores pick ----------------------------------------------------------------------------------------------


def test_neurons_that_contribute_nothing_go_first_and_change_nothing(make_context, tiny_bert):
    model, tokenizer = tiny_bert
    dead = [[1, 5, 9, 13, 17, 21, 25, 29], [0, 2, 4, 6, 40, 42, 44, 46]]
    with torch.no_grad():
        for layer, neurons in zip(model.bert.encoder.layer, dead):
            layer.output.dense.weight[:, neurons] = 0.0  # their activations reach nothing
    ctx = make_context("- {name: p, uses: prune-ffn, with: {ratio: 0.125, calibration_batches: 2}}", model, tokenizer)
    batch = batch_of(ctx)
    with torch.no_grad():
        before = model(**batch).logits
    result = run_stage(ctx)
    assert result.details["neurons_after"] == [56, 56]
    for layer in result.model.bert.encoder.layer:
        assert tuple(layer.output.dense.weight.shape) == (32, 56)
        assert bool((layer.output.dense.weight != 0).any(0).all())  # every zero column went, nothing else
    with torch.no_grad():
        assert torch.allclose(result.model(**batch).logits, before, atol=1e-6)


def test_taylor_and_magnitude_pick_different_neurons_where_they_should(make_context, tiny_bert):
    model, tokenizer = tiny_bert
    with torch.no_grad():
        for layer in model.bert.encoder.layer:
            up, down = layer.intermediate.dense, layer.output.dense
            # neuron 3: big weights, but never active (GELU of -100 is 0): magnitude keeps it, taylor removes it
            up.weight[3] = 0.0
            up.bias[3] = -100.0
            down.weight[:, 3] = 5.0
            # neuron 7: the smallest weights, but active and used: magnitude removes it, taylor keeps it
            up.weight[7] *= 0.05
            down.weight[:, 7] *= 0.05
    settings = "{layer_ratios: [0.02, 0.02], multiple_of: 1, calibration_batches: 2, importance: %s}"
    picked = {}
    for importance in ("taylor", "magnitude"):
        ctx = make_context(
            f"- {{name: p, uses: prune-ffn, with: {settings % importance}}}", copy.deepcopy(model), tokenizer
        )
        pruned = run_stage(ctx).model
        assert [layer.output.dense.in_features for layer in pruned.bert.encoder.layer] == [63, 63]
        picked[importance] = [
            [
                j
                for j in range(64)
                if not any(torch.equal(col, ref.output.dense.weight[:, j]) for col in layer.output.dense.weight.t())
            ]
            for layer, ref in zip(pruned.bert.encoder.layer, model.bert.encoder.layer)
        ]
    assert picked == {"taylor": [[3], [3]], "magnitude": [[7], [7]]}


def test_taylor_scores_are_activation_times_gradient(make_context, tiny_bert):
    model, tokenizer = tiny_bert
    ctx = make_context("- {name: p, uses: prune-ffn, with: {ratio: 0.5}}", model, tokenizer)
    batch = batch_of(ctx)
    sites = prune_ffn.find_ffn(model)
    scores = prune_ffn.taylor_scores(model, sites, [batch], torch.device("cpu"), _NoBar())
    assert all(p.requires_grad for p in model.parameters()) and all(p.grad is None for p in model.parameters())
    # by hand: |sum over tokens of activation x dL/d activation| of layer 1's neurons
    captured = {}

    def keep_activation(module, args):
        args[0].retain_grad()
        captured["a"] = args[0]

    hook = model.bert.encoder.layer[1].output.dense.register_forward_pre_hook(keep_activation)
    model(**batch).loss.backward()
    hook.remove()
    activation = captured["a"]
    by_hand = (activation * activation.grad).sum((0, 1)).abs()
    model.zero_grad(set_to_none=True)
    assert torch.allclose(scores[1], by_hand, rtol=1e-4, atol=1e-9)


class _NoBar:
    def advance(self, n=1):
        pass


def test_global_ranking_is_across_blocks_with_floor_and_rounding():
    scores = [torch.tensor([0.1 * j for j in range(1, 17)]), torch.tensor([5.0 + j for j in range(16)])]
    labels = ["0", "1"]
    base = {"ratio": 0.5, "scope": "global", "min_neurons_per_layer": 1, "multiple_of": 1}
    assert prune_ffn.kept_counts(scores, labels, base) == [1, 15]  # block 0 ranks lowest; its floor is 1
    assert prune_ffn.kept_counts(scores, labels, {**base, "min_neurons_per_layer": 4}) == [4, 12]
    assert prune_ffn.kept_counts(scores, labels, {**base, "min_neurons_per_layer": 3, "multiple_of": 4}) == [4, 12]
    assert prune_ffn.kept_counts(scores, labels, {**base, "scope": "per_layer"}) == [8, 8]
    assert prune_ffn.kept_counts(scores, labels, {**base, "ratio": 0.3, "multiple_of": 8}) == [8, 16]  # 6 -> 8; 16
    per_block = {k: v for k, v in base.items() if k != "ratio"}
    assert prune_ffn.kept_counts(scores, labels, {**per_block, "layer_ratios": {"1": 0.25}}) == [16, 12]
    assert prune_ffn.choose_neurons([torch.tensor([3.0, 1.0, 2.0, 1.0])], [2]) == [[0, 2]]
    with pytest.raises(ValueError, match="layer_ratios names block.s. 2 that the model does not have"):
        prune_ffn.kept_counts(scores, labels, {**per_block, "layer_ratios": {"2": 0.5}})


# -- validation ---------------------------------------------------------------------------------------------------------


def _problems(write_recipe, host, stages, family="encoder", config=None):
    try:
        recipe = load_recipe(write_recipe(stages, config=config, family=family), ["model.fine_tuned=true"], host)
    except RecipeError as exc:
        return [str(p) for p in exc.problems], [str(p) for p in exc.warnings]
    return [], [str(p) for p in recipe.warnings]


@pytest.mark.parametrize(
    "settings, family, message",
    [
        ("{ratio: 0.5, layer_ratios: [0.5, 0.5]}", "encoder", "give exactly one of `ratio`"),
        ("{}", "encoder", "give exactly one of `ratio`"),
        ("{ratio: 1.0}", "encoder", "ratio"),
        ("{ratio: 0.5, scope: everywhere}", "encoder", "scope"),
        ("{ratio: 0.5, multiple_of: 0}", "encoder", "multiple_of"),
        ("{ratio: 0.5, importanse: taylor}", "encoder", "importance"),
        (
            "{layer_ratios: [0.5, 0.5, 0.5]}",
            "encoder",
            "layer_ratios lists 3 fraction(s) but the model has 2 feed-forward blocks (0, 1)",
        ),
        (
            "{layer_ratios: {encoder.3: 0.5}}",
            "encoder-decoder",
            "names block(s) encoder.3 that the model does not "
            "have (its feed-forward blocks: encoder.0, encoder.1, "
            "decoder.0, decoder.1)",
        ),
        ("{ratio: 0.5, calibration_split: validation}", "encoder", "split 'validation' is not in task.data"),
    ],
)
def test_bad_settings_are_errors_naming_the_fix(write_recipe, host, settings, family, message):
    errors, _ = _problems(write_recipe, host, f"- {{name: p, uses: prune-ffn, with: {settings}}}\n", family)
    assert any(message in e for e in errors), errors


def test_warnings_for_settings_that_do_little(write_recipe, host):
    def warnings(settings):
        errors, found = _problems(write_recipe, host, f"- {{name: p, uses: prune-ffn, with: {settings}}}\n")
        assert not errors
        return found

    assert any(
        "keeps every one of the 64 neurons per block: the stage has no effect" in w
        for w in warnings("{ratio: 0.5, min_neurons_per_layer: 60}")
    )
    assert any("removes 0 of the model's 128 FFN neurons" in w for w in warnings("{ratio: 0.005}"))
    assert any("lets only 64 go (32 stay per block)" in w for w in warnings("{ratio: 0.75, min_neurons_per_layer: 32}"))
    assert warnings("{ratio: 0.5}") == []


def test_a_later_gptq_stage_constrains_the_kept_widths(write_recipe, host):
    def found(prune, quantize):
        return _problems(
            write_recipe,
            host,
            f"- {{name: p, uses: prune-ffn, with: {prune}}}\n- {{name: q, uses: gptq, with: {quantize}}}\n",
        )

    errors, _ = found("{ratio: 0.5}", "{bits: 3, group_size: 32}")
    assert any("stage 'q' quantizes to 3 bits" in e and "set multiple_of: 32" in e for e in errors)
    errors, warnings = found("{ratio: 0.5}", "{bits: 4, group_size: 32}")
    assert not errors and any(
        "group_size 32" in w and "set multiple_of: 32 to keep whole groups" in w for w in warnings
    )
    assert found("{ratio: 0.5, multiple_of: 32}", "{bits: 4, group_size: 32}") == ([], [])
    assert found("{ratio: 0.5}", "{bits: 4, group_size: -1}") == ([], [])


# -- end to end ---------------------------------------------------------------------------------------------------------


def test_apply_train_heads_ffn_then_gptq_on_the_smaller_ffn(write_recipe, tmp_path, host):
    # 40 and 24 neurons left: group_size 16 leaves a partial last group in each down projection (a warning)
    recipe = write_recipe(
        "- {name: ft, uses: train, with: {max_steps: 12, learning_rate: 3.0e-3, batch_size: 16}}\n"
        "- {name: heads, uses: prune-heads, with: {ratio: 0.25, calibration_batches: 2}}\n"
        "- {name: ffn, uses: prune-ffn, with: {layer_ratios: [0.375, 0.625], calibration_batches: 2,\n"
        "                                      recovery: {max_steps: 3, batch_size: 16, learning_rate: 1.0e-3}}}\n"
        "- {name: q, uses: gptq, with: {bits: 4, group_size: 16, samples: 32}}\n"
    )
    out = tmp_path / "run"
    assert main(["apply", str(recipe), "--output", str(out), "-q"]) == 0
    report = json.loads((out / "report.json").read_text())
    ft, heads, ffn, q = report["stages"][1:5]
    assert ffn["plugin"] == "prune-ffn" and ffn["params"] < heads["params"] < ft["params"]
    details = ffn["details"]
    assert details["neurons_after"] == [40, 24] and details["scope"] == "layer_ratios"
    assert details["params_removed"] == heads["params"] - ffn["params"] == 64 * (32 + 1 + 32)
    assert details["recovery"]["steps"] == 3
    # gptq packed the pruned FFN at its new widths, and the packed artifact reloads to the same outputs
    assert q["details"]["relative_error"] and q["metric"]["value"] > 0
    model, _ = load_artifact(q["artifact"], host)
    for layer, width in zip(model.bert.encoder.layer, (40, 24)):
        assert (layer.intermediate.dense.out_features, layer.output.dense.in_features) == (width, width)
        assert not isinstance(layer.output.dense, torch.nn.Linear)  # packed
    assert [
        t["stage"]
        for t in json.loads((out / "stages" / "04-q" / "model" / "compose-artifact.json").read_text())["transforms"]
    ] == ["prune-heads", "prune-ffn", "gptq"]
    pruned, _ = load_artifact(ffn["artifact"], host)
    assert [layer.intermediate.dense.out_features for layer in pruned.bert.encoder.layer] == [40, 24]


def test_apply_prunes_a_decoder_ffn_then_quantizes_it(write_recipe, tmp_path, host):
    recipe = write_recipe(
        "- {name: ft, uses: train, with: {max_steps: 4, learning_rate: 3.0e-3, batch_size: 16}}\n"
        "- {name: ffn, uses: prune-ffn, with: {ratio: 0.5, scope: per_layer, importance: magnitude,\n"
        "                                      multiple_of: 32}}\n"
        "- {name: q, uses: gptq, with: {bits: 4, group_size: 32, samples: 32}}\n",
        family="decoder",
    )
    out = tmp_path / "run"
    assert main(["apply", str(recipe), "--output", str(out), "-q"]) == 0
    report = json.loads((out / "report.json").read_text())
    ffn, q = report["stages"][2:4]
    assert ffn["details"]["neurons_after"] == [32, 32] and ffn["metric"]["name"] == "perplexity"
    model, _ = load_artifact(q["artifact"], host)
    assert all(layer.mlp.down_proj.in_features == 32 for layer in model.model.layers)


def test_describe_and_registration(host):
    stage_type = host.stage("prune-ffn")
    assert set(stage_type.families) == {"encoder", "decoder", "encoder-decoder"}
    assert stage_type.needs == {"quantized": False, "task_trained": True}
    assert stage_type.leaves == {"ffn_pruned": True, "structure_changed": True}
    text = prune_ffn.PRUNING.describe(
        {
            "ratio": 0.5,
            "scope": "global",
            "importance": "magnitude",
            "min_neurons_per_layer": 16,
            "multiple_of": 8,
            "recovery": None,
        }
    )
    assert text == (
        "remove 50% of all FFN neurons (ranked across blocks) by weight magnitude, keeping at least 16 "
        "per block and a multiple of 8; no recovery training"
    )


def test_an_unknown_ffn_layout_is_refused_clearly():
    model = unknown_architecture()
    with pytest.raises(ValueError, match=r"prune-ffn does not know model type 'opt' \(it knows: bert, roberta, "):
        prune_ffn.find_ffn(model)


def test_pruning_twice_composes_and_reloads(make_context, tiny_bert, host, tmp_path):
    model, tokenizer = tiny_bert
    settings = "{ratio: 0.25, scope: per_layer, importance: magnitude}"
    ctx = make_context(f"- {{name: p, uses: prune-ffn, with: {settings}}}", model, tokenizer)
    once = run_stage(ctx).model
    ctx = make_context(f"- {{name: p, uses: prune-ffn, with: {settings}}}", once, tokenizer)
    twice = run_stage(ctx)
    assert twice.details["neurons_before"] == [48, 48] and twice.details["neurons_after"] == [40, 40]  # 36 -> 40
    reloaded = reloads_identically(
        twice.model, tokenizer, "sequence-classification", batch_of(ctx), host, tmp_path / "art"
    )
    assert [layer.output.dense.in_features for layer in reloaded.bert.encoder.layer] == [40, 40]


def test_distilling_layers_of_an_ffn_pruned_teacher_is_refused(write_recipe, host):
    errors, _ = _problems(
        write_recipe,
        host,
        "- {name: p, uses: prune-ffn, with: {ratio: 0.5}}\n"
        "- {name: d, uses: distill, with: {student: {from_teacher: "
        "{layers: every_other}}}}\n",
    )
    assert any("stage 'p' before it changes their structure; put distill before 'p'" in e for e in errors)
