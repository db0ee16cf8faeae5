"""The architecture table (plugins/shared/architectures/registry.py): its paths exist in real models, the stages work
on every entry or are refused at validation, and docs/stages.md shows the table it renders."""

import copy
import math
from pathlib import Path

import pytest
import torch

from compose.api import load_artifact, save_artifact
from compose.errors import RecipeError
from compose.plugins.shared.architectures import modules
from compose.plugins.shared.architectures.attention import find_attention
from compose.plugins.shared.architectures.ffn import find_ffn
from compose.plugins.shared.architectures.registry import ARCHITECTURES, STAGES, lookup
from compose.plugins.shared.architectures.render import render_refusals, render_support_matrix
from compose.recipe.load import load_recipe
from tests.conftest import TINY_LLAMA, TINY_T5

#: One tiny config per entry (hidden 32, 2 layers, 4 heads): what the tests build.
TINY = {
    "bert": {
        "model_type": "bert",
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "max_position_embeddings": 64,
    },
    "roberta": {
        "model_type": "roberta",
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "max_position_embeddings": 64,
    },
    "gpt2": {"model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 4, "n_positions": 64},
    "llama": TINY_LLAMA,
    "qwen2": {
        "model_type": "qwen2",
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 64,
    },
    "t5": TINY_T5,
    "bart": {
        "model_type": "bart",
        "d_model": 32,
        "encoder_layers": 2,
        "decoder_layers": 2,
        "encoder_attention_heads": 4,
        "decoder_attention_heads": 4,
        "encoder_ffn_dim": 64,
        "decoder_ffn_dim": 64,
        "max_position_embeddings": 64,
    },
}

CLASSES = {
    "encoder": "AutoModelForSequenceClassification",
    "decoder": "AutoModelForCausalLM",
    "encoder-decoder": "AutoModelForSeq2SeqLM",
}
KINDS = {"encoder": "sequence-classification", "decoder": "causal-lm", "encoder-decoder": "seq2seq"}
NAMES = [arch.name for arch in ARCHITECTURES]


def tiny(name, tokenizer_dir):
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    from compose.run.modeling import tokenizer_config_kwargs

    family = lookup(name).family
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    settings = dict(TINY[name])
    model_type = settings.pop("model_type")
    settings.update(tokenizer_config_kwargs(tokenizer, settings, KINDS[family]))
    if family == "encoder":
        settings["num_labels"] = 2
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, **settings)
    return getattr(transformers, CLASSES[family]).from_config(config).eval(), tokenizer


@pytest.fixture
def build(tiny_tokenizer_dir, tiny_bpe_tokenizer_dir):
    def make(name):
        encoder = lookup(name).family == "encoder"
        return tiny(name, tiny_tokenizer_dir if encoder else tiny_bpe_tokenizer_dir)

    return make


def test_every_entry_is_one_of_the_tiny_configs_and_the_table_lists_every_stage(host):
    assert set(TINY) == set(NAMES)
    assert set(STAGES) == (set(host.stages) | set(host.training_extensions)) - {"magnitude-prune", "rounding-error"}
    for arch in ARCHITECTURES:
        assert {k: arch.config_value(TINY[arch.name], k) for k in ("hidden", "heads")} == {"hidden": 32, "heads": 4}
        assert arch.layer_counts(TINY[arch.name]) == {stack.name: 2 for stack in arch.stacks}


@pytest.mark.parametrize("name", NAMES)
def test_every_declared_path_exists_in_a_real_model(build, name):
    model, _ = build(name)
    arch = lookup(name)
    config = model.config.to_dict()
    for role, keys in arch.config_keys.items():  # head_dim, kv_heads: optional (derived when left out)
        assert all(key in config for key in keys) or role in ("head_dim", "kv_heads"), (role, keys)
    found = modules.stacks(model)
    assert [s.name for s in found] == [s.name for s in arch.stacks]
    for stack in found:
        assert model.get_submodule(stack.prefix) is stack.layers and len(stack.layers) == 2
        for layer in stack.layers:
            spec = stack.spec
            paths = [p for a in spec.attention for p in (a.module, a.query, a.key, a.value, a.output)]
            paths += [spec.ffn.output] + list(spec.ffn.inputs) + ([spec.ffn.module] if spec.ffn.module else [])
            paths += list(spec.tp_plan or {})
            missing = [p for p in paths if modules.submodule(layer, p) is None]
            assert not missing, missing
    attention = find_attention(model)
    assert len(attention) == sum(2 * len(s.attention) for s in arch.stacks)
    assert all(site.query_heads == 4 and site.architecture == name for site in attention)
    assert [site.width for site in find_ffn(model)] == [64] * 2 * len(arch.stacks) or name == "gpt2"


@pytest.mark.parametrize("name", ["roberta", "qwen2", "bart"])
def test_pruning_works_on_the_new_entries_and_reloads(make_context, build, host, tmp_path, name):
    model, tokenizer = build(name)
    family = lookup(name).family
    for stage_yaml in (
        "- {name: p, uses: prune-heads, with: {heads_per_layer: 1, importance: magnitude}}",
        "- {name: f, uses: prune-ffn, with: {ratio: 0.25, importance: magnitude, multiple_of: 8}}",
    ):
        ctx = make_context(stage_yaml, model, tokenizer, config=TINY[name], family=family)
        result = ctx.plugin_host.stage(ctx.plugin).run(ctx)
        model = result.model
        assert result.details["architecture"] == name
    sites = find_attention(model)
    expected_units = 1 if name == "qwen2" else 3  # qwen2: 2 key/value groups of 2 query heads; one group goes
    assert {site.num_units for site in sites} == {expected_units}
    assert all(site.width == 48 for site in find_ffn(model))
    batch = next(iter(ctx.task.batches("dev", tokenizer, 4)))
    folder = save_artifact(model, tokenizer, tmp_path / "art", ctx.task.kind)
    reloaded, _ = load_artifact(folder, host)
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, reloaded(**batch).logits, atol=1e-5)


def test_bart_distils_from_its_own_layers_and_from_a_smaller_config(make_context, build):
    model, tokenizer = build("bart")
    training = "training: {max_steps: 2, batch_size: 8}"
    ctx = make_context(
        "- {name: kd, uses: distill, with: {student: {from_teacher: {layers: [1]}}, "
        f"loss: {{hidden: {{weight: 1.0}}, attention: {{weight: 1.0}}}}, {training}}}}}",
        model,
        tokenizer,
        config=TINY["bart"],
        family="encoder-decoder",
    )
    result = ctx.plugin_host.stage("distill").run(ctx)
    student = result.model
    assert student.config.encoder_layers == student.config.decoder_layers == 1
    assert result.details["student"]["teacher_layers"] == {"encoder": [1], "decoder": [1]}
    assert all(math.isfinite(v) for v in result.details["loss"]["values"]["last_50_batches"].values())
    ctx = make_context(
        "- {name: kd, uses: distill, with: {student: {config: {num_layers: 1, num_heads: 2, d_ff: 32}}, "
        f"{training}}}}}",
        model,
        tokenizer,
        config=TINY["bart"],
        family="encoder-decoder",
    )
    student = ctx.plugin_host.stage("distill").run(ctx).model
    assert (student.config.encoder_layers, student.config.decoder_layers) == (1, 2)
    assert student.config.encoder_attention_heads == student.config.decoder_attention_heads == 2
    assert student.config.encoder_ffn_dim == student.config.decoder_ffn_dim == 32


@pytest.mark.parametrize("name", ["bart", "qwen2"])
def test_gptq_quantizes_the_new_entries(make_context, build, name):
    model, tokenizer = build(name)
    ctx = make_context(
        "- {name: q, uses: gptq, with: {bits: 4, group_size: 16, samples: 16}}",
        model,
        tokenizer,
        config=TINY[name],
        family=lookup(name).family,
    )
    result = ctx.plugin_host.stage("gptq").run(ctx)
    assert result.details["path"] == ("model" if name == "qwen2" else "layers")
    if name == "qwen2":  # q, k, v, o, gate, up, down
        assert result.details["layers_quantized"] == 2 * 7
    else:  # encoder: q, k, v, out, fc1, fc2; decoder: those and the cross-attention's q, k, v, out
        assert result.details["layers_quantized"] == 2 * 6 + 2 * 10
    batch = next(iter(ctx.task.batches("dev", tokenizer, 4)))
    with torch.no_grad():
        assert torch.isfinite(result.model(**batch).logits).all()


def test_gptq_after_prune_heads_on_gpt2_walks_the_conv1d_blocks(make_context, build):
    model, tokenizer = build("gpt2")
    ctx = make_context(
        "- {name: p, uses: prune-heads, with: {heads_per_layer: 1, importance: magnitude}}",
        model,
        tokenizer,
        config=TINY["gpt2"],
        family="decoder",
    )
    pruned = ctx.plugin_host.stage("prune-heads").run(ctx).model
    ctx = make_context(
        "- {name: q, uses: gptq, with: {bits: 8, group_size: 16, samples: 16}}",
        pruned,
        tokenizer,
        config=TINY["gpt2"],
        family="decoder",
    )
    reference = copy.deepcopy(pruned)
    result = ctx.plugin_host.stage("gptq").run(ctx)
    assert result.details["path"] == "layers" and "prune-heads" in result.details["path_reason"]
    assert result.details["layers_quantized"] == 2 * 4  # c_attn, c_proj, mlp.c_fc, mlp.c_proj
    assert result.details["max_relative_error"] < 0.05
    batch = next(iter(ctx.task.batches("dev", tokenizer, 4)))
    with torch.no_grad():
        want, got = reference(**batch).logits, result.model(**batch).logits
    assert torch.allclose(got, want, atol=0.05 * want.abs().max().item())


@pytest.mark.parametrize("name", NAMES)
def test_parallel_finds_every_entrys_blocks_and_a_plan_only_where_tp_is_allowed(build, name):
    from compose.plugins.training.parallel import blocks_and_plan

    model, _ = build(name)
    arch = lookup(name)
    blocks, plans, widths = blocks_and_plan(model)
    assert len(blocks) == 2 * len(arch.stacks)
    assert (plans is not None) == ("tp" in arch.parallel_strategies())
    assert widths[0] == 4 and widths[2] == (128 if name == "gpt2" else 64)


def _problems(write_recipe, host, stages, name=None, config=None, family=None):
    config = config or TINY[name]
    family = family or lookup(config["model_type"]).family
    try:
        load_recipe(write_recipe(stages, config=config, family=family), ["model.fine_tuned=true"], host)
    except RecipeError as exc:
        return " | ".join(p.message for p in exc.problems)
    return ""


OPT = {
    "model_type": "opt",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "ffn_dim": 64,
    "word_embed_proj_dim": 32,
    "max_position_embeddings": 64,
}


@pytest.mark.parametrize(
    "stage, settings",
    [
        ("prune-heads", "{ratio: 0.5}"),
        ("prune-ffn", "{ratio: 0.5}"),
        ("gptq", "{}"),
        ("distill", "{student: {from_teacher: {}}}"),
    ],
)
def test_an_unknown_model_type_is_refused_at_validation(write_recipe, host, stage, settings):
    found = _problems(
        write_recipe, host, f"- {{name: s, uses: {stage}, with: {settings}}}", config=OPT, family="decoder"
    )
    assert (
        f"stage 's': {stage} does not know model type 'opt' (it knows: bert, roberta, gpt2, llama, qwen2, t5, bart)"
        in found
        and "remove the stage, or add an entry for 'opt' to compose/plugins/shared/architectures/registry.py" in found
    )


TRAIN = "- {{name: t, uses: train, with: {{max_steps: 1, parallel: {parallel}}}}}"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("strategy", ["fsdp", "tp"])
def test_parallel_strategies_are_allowed_exactly_where_the_table_says(write_recipe, host, name, strategy):
    found = _problems(write_recipe, host, TRAIN.format(parallel=strategy), name)
    if strategy in lookup(name).parallel_strategies():
        assert found == ""
    else:
        assert f"stage 't': parallel: {strategy} is not available for model type '{name}'" in found
        assert "use ddp or fsdp" in found


def test_parallel_fsdp_on_an_unknown_type_is_refused_with_ddp_as_the_fix(write_recipe, host):
    found = _problems(write_recipe, host, TRAIN.format(parallel="fsdp"), config=OPT, family="decoder")
    assert "parallel: fsdp does not know model type 'opt'" in found and "use ddp" in found
    assert _problems(write_recipe, host, TRAIN.format(parallel="ddp"), config=OPT, family="decoder") == ""


@pytest.mark.parametrize("name", NAMES)
def test_export_is_refused_exactly_where_the_table_says(host, name):
    refused = lookup(name).refusal("export") is not None
    assert refused == (lookup(name).family not in host.stage("export").families)


def test_the_stages_page_shows_the_tables_support_matrix_and_refusals():
    readme = (Path(__file__).resolve().parents[4] / "docs" / "stages.md").read_text(encoding="utf-8")
    assert render_support_matrix() in readme, (
        "docs/stages.md: paste the output of render_support_matrix() (plugins/shared/architectures/render.py)"
    )
    assert render_refusals() in readme, "docs/stages.md: paste the output of render_refusals()"
