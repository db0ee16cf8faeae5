"""The `distill` stage on tiny real models of each family (BERT, Llama, GPT-2, T5): students shrink,
learn from a trained teacher, and reload."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from compose.api import count_parameters, load_artifact, save_artifact, train_model
from compose.errors import RecipeError
from compose.evaluation.evaluator import evaluate
from compose.plugins.distill import stage as distill
from compose.plugins.distill.attention import use_eager_attention
from compose.plugins.shared.distillation.loss import DistillationLoss

#: The teacher: the tiny BERT of conftest with 4 layers, so that a student can keep 2 of them.
TEACHER = {"num_hidden_layers": 4}
_CACHE: dict = {}

TRAIN_FAST = "epochs: 4, learning_rate: 3.0e-3, batch_size: 16, eval_every_epoch: false"


def teacher_recipe_config(model) -> dict:
    keys = (
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "max_position_embeddings",
        "vocab_size",
    )
    return {"model_type": "bert", **{k: getattr(model.config, k) for k in keys}}


@pytest.fixture
def teacher(make_context, tiny_bert):
    """(trained 4-layer teacher, tokenizer, its dev accuracy); trained once per module, copied per test."""
    from transformers import BertForSequenceClassification

    base, tokenizer = tiny_bert
    if "model" not in _CACHE:
        config = copy.deepcopy(base.config)
        config.num_hidden_layers = TEACHER["num_hidden_layers"]
        torch.manual_seed(0)
        model = BertForSequenceClassification(config)
        ctx = make_context(
            f"- {{name: ft, uses: train, with: {{{TRAIN_FAST}}}}}",
            model,
            tokenizer,
            overrides=(),
            config=teacher_recipe_config(model),
        )
        model, _ = train_model(ctx, model)
        _CACHE["model"] = model
        _CACHE["accuracy"] = evaluate(model, tokenizer, ctx.task, ctx.recipe["evaluate"], ctx.device).value
    return copy.deepcopy(_CACHE["model"]), tokenizer, _CACHE["accuracy"]


def distill_context(make_context, model, tokenizer, settings: str):
    return make_context(
        f"- {{name: kd, uses: distill, with: {settings}}}", model, tokenizer, config=teacher_recipe_config(model)
    )


def test_distill_shrinks_and_the_student_learns_from_the_teacher(make_context, teacher):
    model, tokenizer, teacher_accuracy = teacher
    assert teacher_accuracy >= 0.9
    ctx = distill_context(
        make_context,
        model,
        tokenizer,
        "{student: {config: {num_hidden_layers: 1, hidden_size: 16, intermediate_size: 32}}, "
        f"training: {{{TRAIN_FAST}}}}}",
    )
    result = ctx.plugin_host.stage("distill").run(ctx)
    student = result.model
    accuracy = evaluate(student, tokenizer, ctx.task, ctx.recipe["evaluate"], ctx.device).value
    assert accuracy >= 0.85  # chance is 0.5; a random student of this size sits near it
    details = result.details
    assert details["teacher_params"] == count_parameters(model)
    assert details["student_params"] == count_parameters(student) < count_parameters(model) / 2
    assert details["student"]["config_differences"]["hidden_size"] == [32, 16]
    assert details["student"]["config_differences"]["num_hidden_layers"] == [4, 1]
    assert details["student"]["embeddings_copied"] is False  # widths differ
    assert details["loss"]["terms"] == ["soft", "hard"]
    assert details["training"]["steps"] == 4 * 16
    # the teacher is given back as it came: trainable, sdpa attention
    assert all(p.requires_grad for p in model.parameters())


def test_from_teacher_every_other_copies_the_right_layers(make_context, teacher):
    model, tokenizer, _ = teacher
    ctx = distill_context(make_context, model, tokenizer, "{}")  # the default student: every other layer
    student, info = distill.build_student(ctx, model)
    assert info["teacher_layers"] == [0, 2]
    assert student.config.num_hidden_layers == 2 and len(student.bert.encoder.layer) == 2
    for s_index, t_index in ((0, 0), (1, 2)):
        s_state = student.bert.encoder.layer[s_index].state_dict()
        t_state = model.bert.encoder.layer[t_index].state_dict()
        assert s_state.keys() == t_state.keys()
        assert all(torch.equal(s_state[k], t_state[k]) for k in s_state)
    for part in ("bert.embeddings", "bert.pooler", "classifier"):
        s_state = student.get_submodule(part).state_dict()
        t_state = model.get_submodule(part).state_dict()
        assert all(torch.equal(s_state[k], t_state[k]) for k in s_state)
    # a copy, not shared weights: training the student leaves the teacher alone
    assert student.bert.encoder.layer[0].output.dense.weight is not model.bert.encoder.layer[0].output.dense.weight

    ctx = distill_context(make_context, model, tokenizer, "{student: {from_teacher: {layers: [3, 1]}}}")
    student, info = distill.build_student(ctx, model)
    assert info["teacher_layers"] == [3, 1]
    s_weight, t_weight = (
        student.bert.encoder.layer[0].output.dense.weight,
        model.bert.encoder.layer[3].output.dense.weight,
    )
    assert torch.equal(s_weight, t_weight)


def test_attention_and_hidden_matching_train_then_restore_attention(make_context, teacher):
    model, tokenizer, _ = teacher
    ctx = distill_context(
        make_context,
        model,
        tokenizer,
        "{loss: {hidden: {weight: 1.0}, attention: {weight: 1.0}}, training: {max_steps: 12, learning_rate: 3.0e-3, "
        "batch_size: 16, eval_every_epoch: false}}",
    )
    result = ctx.plugin_host.stage("distill").run(ctx)
    loss = result.details["loss"]
    assert loss["terms"] == ["soft", "hard", "hidden", "attention"]
    assert loss["layer_map"] == [1, 3]  # uniform: student layer i <- teacher layer (i+1)*4/2 - 1
    assert loss["hidden_projection"] is None  # same width
    assert loss["values"]["last_50_batches"]["attention"] > 0
    # eager attention and zero attention dropout only while training
    for m in (model, result.model):
        assert m.config._attn_implementation == "sdpa"
    assert result.model.bert.encoder.layer[0].attention.self.dropout.p == model.config.attention_probs_dropout_prob


def test_hidden_matching_uses_a_trained_projection_when_widths_differ(make_context, teacher):
    model, tokenizer, _ = teacher
    ctx = distill_context(
        make_context,
        model,
        tokenizer,
        "{student: {config: {num_hidden_layers: 2, hidden_size: 16}}, "
        "loss: {soft: {weight: 0}, hard: {weight: 0}, hidden: {weight: 1.0}}, "
        "training: {max_steps: 32, learning_rate: 1.0e-2, batch_size: 16, warmup_ratio: 0, eval_every_epoch: false}}",
    )
    result = ctx.plugin_host.stage("distill").run(ctx)
    loss = result.details["loss"]
    assert loss["terms"] == ["hidden"]
    assert loss["hidden_projection"] == [16, 32]
    first, last = loss["values"]["first_batch"]["hidden"], loss["values"]["last_50_batches"]["hidden"]
    assert last < 0.75 * first  # the mean over all 32 steps, the first ones included


def _one_batch(ctx, size=8):
    return next(iter(ctx.task.batches("train", ctx.tokenizer, size)))


@pytest.mark.parametrize("term", ["soft", "hard", "hidden", "attention"])
def test_each_term_alone_equals_the_loss_computed_by_hand(make_context, teacher, term):
    model, tokenizer, _ = teacher
    weights = {name: 0 for name in ("soft", "hard", "hidden", "attention")}
    weights[term] = 1.0
    loss_yaml = ", ".join(f"{name}: {{weight: {w}}}" for name, w in weights.items())
    settings_yaml = f"{{student: {{from_teacher: {{layers: [1, 3]}}}}, loss: {{{loss_yaml}, layer_map: [0, 2]}}}}"
    ctx = distill_context(make_context, model, tokenizer, settings_yaml)
    settings = dict(ctx.settings["loss"])
    settings["soft"] = {"weight": weights["soft"], "temperature": 3.0}
    student, _ = distill.build_student(ctx, model)
    for m in (model, student):
        m.set_attn_implementation("eager")
        m.eval()  # no dropout: the two computations must see the same forward
    loss_fn = DistillationLoss(model, settings, [0, 2])
    batch = _one_batch(ctx)
    value = loss_fn(student, batch)

    inputs = {k: v for k, v in batch.items() if k != "labels"}
    mask = inputs["attention_mask"].float()
    with torch.no_grad():
        t = model(**inputs, output_hidden_states=True, output_attentions=True)
        s = student(**inputs, output_hidden_states=True, output_attentions=True)
        if term == "soft":
            p_t = F.softmax(t.logits / 3.0, -1)
            kl = (p_t * (p_t.log() - F.log_softmax(s.logits / 3.0, -1))).sum(-1).mean()
            expected = kl * 9.0
        elif term == "hard":
            expected = F.cross_entropy(s.logits, batch["labels"])
        elif term == "hidden":
            per_layer = [
                (((s.hidden_states[i + 1] - t.hidden_states[j + 1]) ** 2).mean(-1) * mask).sum() / mask.sum()
                for i, j in ((0, 0), (1, 2))
            ]
            expected = sum(per_layer) / 2
        else:
            per_layer = []
            for i, j in ((0, 0), (1, 2)):
                p_s, p_t = s.attentions[i], t.attentions[j]
                rows = torch.where(p_t > 0, p_t * (p_t.log() - p_s.log()), torch.zeros_like(p_t)).sum(-1).mean(1)
                per_layer.append((rows * mask).sum() / mask.sum())
            expected = sum(per_layer) / 2
    assert value.item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-6)
    assert value.item() > 0
    assert list(loss_fn.first) == [term]


def test_distilled_student_artifact_reloads(make_context, teacher, tmp_path, host):
    model, tokenizer, _ = teacher
    ctx = distill_context(
        make_context,
        model,
        tokenizer,
        "{student: {config: {num_hidden_layers: 1, num_attention_heads: 2}}, training: {max_steps: 4, batch_size: 16}}",
    )
    student = ctx.plugin_host.stage("distill").run(ctx).model
    folder = save_artifact(student, tokenizer, tmp_path / "student", ctx.task.kind)
    reloaded, reloaded_tokenizer = load_artifact(folder, host)
    assert reloaded_tokenizer is not None
    assert reloaded.config.num_hidden_layers == 1 and reloaded.config.num_attention_heads == 2
    batch = _one_batch(ctx)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        assert torch.allclose(student(**inputs).logits, reloaded(**inputs).logits, atol=1e-5)


def test_attention_matching_with_different_heads_is_a_clear_error(make_context, teacher, tiny_bert):
    model, tokenizer, _ = teacher
    with pytest.raises(RecipeError, match="same number of heads"):
        distill_context(
            make_context,
            model,
            tokenizer,
            "{student: {config: {num_attention_heads: 2}}, loss: {attention: {weight: 1.0}}}",
        )
    # Known only at run time: the recipe's config says 4 heads, the model coming in has 2.
    config = copy.deepcopy(model.config)
    config.num_attention_heads = 2
    two_heads = type(model)(config)
    ctx = make_context(
        "- {name: kd, uses: distill, with: {student: {config: {num_attention_heads: 4}}, "
        "loss: {attention: {weight: 1.0}}}}",
        two_heads,
        tokenizer,
        config=teacher_recipe_config(model),
    )
    with pytest.raises(ValueError, match="student layer 0 has 4 and teacher layer 0 has 2"):
        ctx.plugin_host.stage("distill").run(ctx)


@pytest.mark.parametrize(
    "settings, message",
    [
        ("{loss: {soft: {weight: 0}, hard: {weight: 0}}}", "every loss weight is 0"),
        ("{student: {from_teacher: {layers: [0, 4]}}}", r"teacher layer\(s\) \[4\] do not exist"),
        ("{loss: {hidden: {weight: 1}, layer_map: [1, 2, 3]}}", "layer_map has 3 entries but the student has 2"),
        ("{student: {config: {hidden_size: 24, num_attention_heads: 5}}}", "not a multiple"),
        ("{student: {config: {hidden_size: 16}, path: /tmp}}", "exactly one student source"),
        ("{student: {config: {copy_embeddings: false}}}", "at least one size to override"),
    ],
)
def test_invalid_settings_are_recipe_errors(make_context, teacher, settings, message):
    model, tokenizer, _ = teacher
    with pytest.raises(RecipeError, match=message):
        distill_context(make_context, model, tokenizer, settings)


def test_distill_needs_a_trained_model(make_context, tiny_bert):
    model, tokenizer = tiny_bert
    with pytest.raises(RecipeError, match="needs a model that is trained on the task"):
        make_context("- {name: kd, uses: distill}", model, tokenizer, overrides=())


def test_describe_names_student_and_loss_terms(host):
    from compose.recipe.schema import fill_defaults, inline_shared_refs

    schema = inline_shared_refs(host.stage("distill").schema)
    settings = fill_defaults({"loss": {"attention": {"weight": 0.5}}}, schema)
    text = distill.describe(settings)
    assert "every other layer" in text
    assert "soft-target KL at T=2.0" in text and "hard labels" in text and "attention KL x0.5" in text
    assert "hidden-state" not in text
    assert "teacher run every step (layer matching" in text  # no cached logits: it needs attentions


def test_recipe_apply_train_then_distill_end_to_end(write_recipe, tmp_path):
    from compose.cli.main import main

    recipe = write_recipe(
        f"""\
        - {{name: finetune, uses: train, with: {{{TRAIN_FAST}}}}}
        - name: shrink
          uses: distill
          with:
            student: {{config: {{num_hidden_layers: 1, hidden_size: 16, intermediate_size: 32}}}}
            training: {{{TRAIN_FAST}}}
        """
    )
    out = tmp_path / "run"
    assert main(["apply", str(recipe), "--output", str(out), "-q"]) == 0
    report = json.loads((out / "report.json").read_text())
    rows = {row["name"]: row for row in report["stages"]}
    assert report["status"] == "passed"
    assert rows["shrink"]["plugin"] == "distill"
    assert rows["shrink"]["params"] < rows["finetune"]["params"] / 2
    assert rows["shrink"]["details"]["student_params"] == rows["shrink"]["params"]
    assert report["baseline"]["stage"] == "finetune"
    assert rows["shrink"]["metric"]["value"] >= 0.8
    reloaded, _ = load_artifact(rows["shrink"]["artifact"])
    assert reloaded.config.hidden_size == 16


# ---------------------------------------------------------------------------
# Decoders (Llama) and encoder-decoders (T5)
# ---------------------------------------------------------------------------

#: 4-layer teachers (both stacks of the T5), so that students can keep 2 layers.
FAMILY_TEACHERS = {
    "decoder": ("LlamaForCausalLM", {"num_hidden_layers": 4}),
    "encoder-decoder": ("T5ForConditionalGeneration", {"num_layers": 4, "num_decoder_layers": 4}),
}
TRAIN_LM = "max_steps: 40, learning_rate: 1.0e-2, batch_size: 16, warmup_ratio: 0, eval_every_epoch: false"
DISTIL_LM = "max_steps: 16, learning_rate: 3.0e-3, batch_size: 16, warmup_ratio: 0, eval_every_epoch: false"


def family_config(family: str) -> dict:
    from tests.conftest import TINY_LLAMA, TINY_T5

    return {**(TINY_LLAMA if family == "decoder" else TINY_T5), **FAMILY_TEACHERS[family][1]}


def trained_teacher(request, make_context, family: str):
    """(family, trained 4-layer teacher, tokenizer): trained once per module per family, copied per test."""
    import transformers

    base, tokenizer = request.getfixturevalue("tiny_llama" if family == "decoder" else "tiny_t5")
    if family not in _CACHE:
        config = copy.deepcopy(base.config)
        for key, value in FAMILY_TEACHERS[family][1].items():
            setattr(config, key, value)
        torch.manual_seed(0)
        model = getattr(transformers, FAMILY_TEACHERS[family][0])(config)
        ctx = make_context(
            f"- {{name: ft, uses: train, with: {{{TRAIN_LM}}}}}",
            model,
            tokenizer,
            overrides=(),
            config=family_config(family),
            family=family,
        )
        _CACHE[family], _ = train_model(ctx, model)
        _CACHE[family].eval()
    return family, copy.deepcopy(_CACHE[family]), tokenizer


@pytest.fixture(params=["decoder", "encoder-decoder"])
def lm_teacher(request, make_context):
    return trained_teacher(request, make_context, request.param)


@pytest.fixture
def t5_teacher(request, make_context):
    return trained_teacher(request, make_context, "encoder-decoder")


def lm_context(make_context, family, model, tokenizer, settings: str):
    return make_context(
        f"- {{name: kd, uses: distill, with: {settings}}}",
        model,
        tokenizer,
        config=family_config(family),
        family=family,
    )


def dev_loss(model, ctx) -> float:
    """The model's own loss (next-token / target cross-entropy), averaged over the dev batches."""
    model.eval()
    with torch.no_grad():
        losses = [model(**batch).loss.item() for batch in ctx.task.batches("dev", ctx.tokenizer, 32)]
    return sum(losses) / len(losses)


def stack_layers(model, family):
    if family == "decoder":
        return {"layers": model.model.layers}
    return {"encoder": model.encoder.block, "decoder": model.decoder.block}


def test_student_from_teacher_layers_keeps_those_layers_renumbered(make_context, lm_teacher):
    family, model, tokenizer = lm_teacher
    ctx = lm_context(make_context, family, model, tokenizer, "{student: {from_teacher: {layers: [1, 3]}}}")
    student, info = distill.build_student(ctx, model)
    kept = [1, 3]
    expected = kept if family == "decoder" else {"encoder": kept, "decoder": kept}
    assert info["teacher_layers"] == expected
    for stack, layers in stack_layers(student, family).items():
        teacher_layers = stack_layers(model, family)[stack]
        assert len(layers) == 2
        for s_index, t_index in enumerate(kept):
            s_state, t_state = layers[s_index].state_dict(), teacher_layers[t_index].state_dict()
            extra = set(s_state) - set(t_state)
            # T5: the first block owns the relative position bias, copied from the teacher's block 0
            assert extra == (
                {"layer.0.SelfAttention.relative_attention_bias.weight"}
                if family != "decoder" and s_index == 0
                else set()
            )
            assert all(torch.equal(s_state[k], t_state[k]) for k in t_state)
            assert {m.layer_idx for m in layers[s_index].modules() if hasattr(m, "layer_idx")} == {s_index}
        if family != "decoder":
            bias = layers[0].layer[0].SelfAttention.relative_attention_bias.weight
            assert torch.equal(bias, teacher_layers[0].layer[0].SelfAttention.relative_attention_bias.weight)
            assert not layers[1].layer[0].SelfAttention.has_relative_attention_bias
    if family == "decoder":
        assert student.config.num_hidden_layers == 2
        assert info["copied"] == ["model.embed_tokens", "model.norm", "lm_head"]
        assert torch.equal(student.lm_head.weight, model.lm_head.weight)
    else:
        assert (student.config.num_layers, student.config.num_decoder_layers) == (2, 2)
        assert torch.equal(student.shared.weight, model.shared.weight)
    assert (
        student.model.layers[0].mlp.up_proj.weight is not model.model.layers[1].mlp.up_proj.weight
        if family == "decoder"
        else student.encoder.block[0].layer[1].DenseReluDense.wi.weight
        is not model.encoder.block[1].layer[1].DenseReluDense.wi.weight
    )

    # the renumbered layers use the key/value cache right: cached generation equals uncached
    batch = next(iter(ctx.task.batches("dev", tokenizer, 4)))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if family == "decoder":
        inputs = {k: v[:, :6] for k, v in inputs.items()}
    student.eval()
    cached = student.generate(**inputs, max_new_tokens=6, do_sample=False, use_cache=True)
    uncached = student.generate(**inputs, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_t5_decoder_layers_and_the_relative_bias_reload(make_context, t5_teacher, tmp_path, host):
    family, model, tokenizer = t5_teacher
    # teacher block 0 kept second: it gives up its bias, which the new first block gets
    ctx = lm_context(
        make_context,
        family,
        model,
        tokenizer,
        "{student: {from_teacher: {layers: every_other, decoder_layers: [2, 0, 3]}}}",
    )
    student, info = distill.build_student(ctx, model)
    assert info["teacher_layers"] == {"encoder": [0, 2], "decoder": [2, 0, 3]}
    assert (student.config.num_layers, student.config.num_decoder_layers) == (2, 3)
    flags = [b.layer[0].SelfAttention.has_relative_attention_bias for b in student.decoder.block]
    assert flags == [True, False, False]
    assert not hasattr(student.decoder.block[1].layer[0].SelfAttention, "relative_attention_bias")
    folder = save_artifact(student, tokenizer, tmp_path / "student", ctx.task.kind)
    reloaded, _ = load_artifact(folder, host)
    batch = next(iter(ctx.task.batches("dev", tokenizer, 8)))
    with torch.no_grad():
        assert torch.allclose(student(**batch).logits, reloaded(**batch).logits, atol=1e-5)


def test_distill_lm_student_learns_from_the_teacher(make_context, lm_teacher):
    family, model, tokenizer = lm_teacher
    layer_map = "[1, 3]" if family == "decoder" else "{encoder: null, decoder: [1, 3]}"
    ctx = lm_context(
        make_context,
        family,
        model,
        tokenizer,
        f"{{loss: {{hidden: {{weight: 0.1}}, attention: {{weight: 0.5}}, layer_map: {layer_map}}}, "
        f"training: {{{DISTIL_LM}}}}}",
    )
    before = dev_loss(distill.build_student(ctx, model)[0], ctx)
    result = ctx.plugin_host.stage("distill").run(ctx)
    after = dev_loss(result.model, ctx)
    loss = result.details["loss"]
    assert loss["terms"] == ["soft", "hard", "hidden", "attention"]
    expected_map = [1, 3] if family == "decoder" else {"encoder": [1, 3], "decoder": [1, 3]}
    assert loss["layer_map"] == expected_map
    first, last = loss["values"]["first_batch"], loss["values"]["last_50_batches"]
    assert all(math.isfinite(v) and v > 0 for v in [*first.values(), *last.values()])
    assert last["soft"] < first["soft"]
    assert after < before  # the student got better at the task itself
    assert result.details["training"]["steps"] == 16
    for m in (model, result.model):
        assert m.config._attn_implementation == "sdpa"  # eager only while matching attentions


def test_attention_matching_switches_t5s_stacks_to_eager_and_back(make_context, t5_teacher):
    """T5's stacks read copies of the config: an sdpa stack under an eager top config returns no weights."""
    family, model, tokenizer = t5_teacher
    model.set_attn_implementation("sdpa")
    model.config._attn_implementation_internal = "eager"  # the top config alone says eager
    assert {model.encoder.config._attn_implementation, model.decoder.config._attn_implementation} == {"sdpa"}
    ctx = lm_context(
        make_context,
        family,
        model,
        tokenizer,
        f"{{loss: {{attention: {{weight: 1.0}}, layer_map: {{encoder: null, decoder: [1, 3]}}}}, "
        f"training: {{{DISTIL_LM}}}}}",
    )
    result = ctx.plugin_host.stage("distill").run(ctx)
    assert result.details["loss"]["values"]["last_50_batches"]["attention"] > 0
    # each config is given back as it was
    assert model.config._attn_implementation == "eager"
    assert {model.encoder.config._attn_implementation, model.decoder.config._attn_implementation} == {"sdpa"}


@pytest.mark.parametrize("term", ["soft", "hidden", "attention"])
def test_lm_terms_equal_the_loss_computed_by_hand(make_context, lm_teacher, term):
    family, model, tokenizer = lm_teacher
    weights = {name: (1.0 if name == term else 0) for name in ("soft", "hard", "hidden", "attention")}
    loss_yaml = ", ".join(f"{name}: {{weight: {w}}}" for name, w in weights.items())
    ctx = lm_context(make_context, family, model, tokenizer, f"{{loss: {{{loss_yaml}}}}}")
    student, _ = distill.build_student(ctx, model)
    for m in (model, student):
        use_eager_attention(m)  # the weights for the hand computation (sdpa returns none)
        m.eval()
    maps = {"layers": [1, 3]} if family == "decoder" else {"encoder": [1, 3], "decoder": [1, 3]}
    loss_fn = DistillationLoss(model, ctx.settings["loss"], maps, family=family)
    batch = next(iter(ctx.task.batches("train", tokenizer, 8)))
    if family == "decoder":  # blocks are full: pad the end of row 0 so that the masks matter
        batch["attention_mask"][0, 10:] = 0
        batch["labels"][0, 10:] = -100
    value = loss_fn(student, batch).item()

    labels = batch["labels"]
    with torch.no_grad():  # the models shift labels themselves here (T5: decoder inputs from labels)
        t = model(**batch, output_hidden_states=True, output_attentions=True)
        s = student(**batch, output_hidden_states=True, output_attentions=True)
    if family == "decoder":
        soft_mask = torch.zeros_like(labels, dtype=torch.bool)
        soft_mask[:, :-1] = labels[:, 1:] != -100  # position i predicts token i + 1
        stacks = {"layers": ("hidden_states", "attentions", batch["attention_mask"].bool())}
    else:
        soft_mask = labels != -100
        stacks = {
            "encoder": ("encoder_hidden_states", "encoder_attentions", batch["attention_mask"].bool()),
            "decoder": ("decoder_hidden_states", "decoder_attentions", labels != -100),
        }
    if term == "soft":
        p_t = F.softmax(t.logits / 2.0, -1)
        kl = (p_t * (p_t.log() - F.log_softmax(s.logits / 2.0, -1))).sum(-1)
        expected = kl[soft_mask].mean() * 4.0
    else:
        per_layer = []
        for stack, (states_key, attentions_key, mask) in stacks.items():
            for i, j in enumerate(maps[stack]):
                if term == "hidden":
                    s_h, t_h = getattr(s, states_key)[i + 1], getattr(t, states_key)[j + 1]
                    per_layer.append(((s_h - t_h) ** 2).mean(-1)[mask].mean())
                else:
                    p_s, p_t = getattr(s, attentions_key)[i], getattr(t, attentions_key)[j]
                    rows = torch.where(p_t > 0, p_t * (p_t.log() - p_s.log()), torch.zeros_like(p_t)).sum(-1).mean(1)
                    per_layer.append(rows[mask].mean())
        expected = sum(per_layer) / len(per_layer)
    assert value == pytest.approx(expected.item(), rel=1e-4, abs=1e-6)
    assert value > 0


def test_lm_student_from_config_trains_and_reloads(make_context, lm_teacher, tmp_path, host):
    family, model, tokenizer = lm_teacher
    sizes = (
        "{num_hidden_layers: 1, hidden_size: 16, num_attention_heads: 2}"
        if family == "decoder"
        else "{num_layers: 1, num_decoder_layers: 1, d_model: 16, num_heads: 2, d_ff: 32}"
    )
    ctx = lm_context(
        make_context,
        family,
        model,
        tokenizer,
        f"{{student: {{config: {sizes}}}, loss: {{hidden: {{weight: 0.1}}}}, training: {{{DISTIL_LM}}}}}",
    )
    result = ctx.plugin_host.stage("distill").run(ctx)
    student, details = result.model, result.details
    assert details["loss"]["hidden_projection"] == [16, 32]
    assert details["student_params"] < details["teacher_params"] / 3
    if family == "decoder":
        # Llama's derived sizes follow: head_dim = 16 / 2, key/value heads as many as heads
        assert (student.config.head_dim, student.config.num_key_value_heads) == (8, 2)
        assert details["student"]["config_differences"]["num_hidden_layers"] == [4, 1]
    else:
        assert (student.config.d_model, student.config.num_heads, student.config.d_kv) == (16, 2, 8)
        assert details["student"]["layers"] == {"encoder": 1, "decoder": 1}
    assert all(math.isfinite(v) for v in details["loss"]["values"]["last_50_batches"].values())
    folder = save_artifact(student, tokenizer, tmp_path / "student", ctx.task.kind)
    reloaded, _ = load_artifact(folder, host)
    batch = next(iter(ctx.task.batches("dev", tokenizer, 8)))
    with torch.no_grad():
        assert torch.allclose(student(**batch).logits, reloaded(**batch).logits, atol=1e-5)


#: GPT-2 keeps its layers in transformer.h and counts them in n_layer.
TINY_GPT2 = {"model_type": "gpt2", "n_layer": 4, "n_embd": 32, "n_head": 4, "n_positions": 64}


def test_gpt2_student_from_teacher_distils_and_reloads(make_context, tiny_bpe_tokenizer_dir, tmp_path, host):
    from tests.conftest import _tiny_model

    model, tokenizer = _tiny_model("GPT2LMHeadModel", TINY_GPT2, tiny_bpe_tokenizer_dir, "causal-lm")
    ctx = make_context(
        "- {name: kd, uses: distill, with: {student: {from_teacher: {layers: [0, 3]}}, "
        "loss: {hidden: {weight: 1.0}, attention: {weight: 1.0}}, "
        f"training: {{{DISTIL_LM}}}}}}}",
        model,
        tokenizer,
        config=TINY_GPT2,
        family="decoder",
    )
    student, _ = distill.build_student(ctx, model)
    assert student.config.n_layer == 2 and len(student.transformer.h) == 2
    assert [block.attn.layer_idx for block in student.transformer.h] == [0, 1]
    for s_index, t_index in ((0, 0), (1, 3)):
        s_state, t_state = student.transformer.h[s_index].state_dict(), model.transformer.h[t_index].state_dict()
        assert s_state.keys() == t_state.keys() and all(torch.equal(s_state[k], t_state[k]) for k in s_state)

    result = ctx.plugin_host.stage("distill").run(ctx)
    student = result.model
    assert result.details["loss"]["layer_map"] == [1, 3]
    values = result.details["loss"]["values"]["last_50_batches"]
    assert set(values) == {"soft", "hard", "hidden", "attention"} and all(math.isfinite(v) for v in values.values())
    assert student.transformer.h[0].attn.attn_dropout.p == model.config.attn_pdrop  # restored after matching
    folder = save_artifact(student, tokenizer, tmp_path / "student", ctx.task.kind)
    reloaded, _ = load_artifact(folder, host)
    batch = next(iter(ctx.task.batches("dev", tokenizer, 8)))
    with torch.no_grad():
        assert torch.allclose(student(**batch).logits, reloaded(**batch).logits, atol=1e-5)
    # GPT-2 states its FFN width as n_inner: the architecture table maps intermediate_size to it
    ctx = make_context(
        "- {name: kd, uses: distill, with: {student: {config: {intermediate_size: 32}}}}",
        model,
        tokenizer,
        config=TINY_GPT2,
        family="decoder",
    )
    student, _ = distill.build_student(ctx, model)
    assert student.config.n_inner == 32 and student.transformer.h[0].mlp.c_fc.weight.shape[1] == 32


@pytest.mark.parametrize(
    "family, settings, message",
    [
        ("decoder", "{student: {config: {d_model: 16}}}", "d_model does not apply to decoder models.*use hidden_size"),
        (
            "encoder-decoder",
            "{student: {config: {hidden_size: 16}}}",
            "hidden_size does not apply to encoder-decoder models.*use d_model",
        ),
        (
            "encoder-decoder",
            "{student: {config: {num_hidden_layers: 1}}}",
            r"use num_layers \(encoder\) and num_decoder_layers",
        ),
        ("encoder", "{student: {config: {num_key_value_heads: 2}}}", "num_key_value_heads does not apply to encoder"),
        ("decoder", "{student: {config: {num_key_value_heads: 3}}}", "not a multiple of its num_key_value_heads 3"),
        ("decoder", "{student: {from_teacher: {decoder_layers: [0]}}}", "applies only to encoder-decoder models"),
        ("encoder-decoder", "{loss: {hidden: {weight: 1}, layer_map: [0]}}", "an encoder-decoder has two stacks"),
        (
            "decoder",
            "{loss: {hidden: {weight: 1}, layer_map: {encoder: null, decoder: null}}}",
            "is for encoder-decoder models",
        ),
        (
            "encoder-decoder",
            "{student: {from_teacher: {layers: [0], decoder_layers: [0, 2]}}}",
            r"teacher decoder layer\(s\) \[2\] do not exist",
        ),
        (
            "encoder-decoder",
            "{loss: {hidden: {weight: 1}, layer_map: {encoder: null, decoder: [0, 1, 1]}}}",
            "layer_map.decoder has 3 entries but the student decoder has 1",
        ),
        (
            "encoder-decoder",
            "{student: {config: {num_heads: 2}}, loss: {attention: {weight: 1}}}",
            "same number of heads.*keep num_heads at 4",
        ),
    ],
)
def test_family_settings_are_checked_before_running(
    make_context, tiny_bert, tiny_llama, tiny_t5, family, settings, message
):
    model, tokenizer = {"encoder": tiny_bert, "decoder": tiny_llama, "encoder-decoder": tiny_t5}[family]
    with pytest.raises(RecipeError, match=message):
        make_context(f"- {{name: kd, uses: distill, with: {settings}}}", model, tokenizer, family=family)


def test_describe_names_the_decoder_layers(host):
    from compose.recipe.schema import fill_defaults, inline_shared_refs

    schema = inline_shared_refs(host.stage("distill").schema)
    settings = fill_defaults({"student": {"from_teacher": {"layers": [0, 1], "decoder_layers": "every_other"}}}, schema)
    assert "keeping layers [0, 1] of the encoder and every other layer of the decoder" in distill.describe(settings)
    settings = fill_defaults({"student": {"config": {"d_model": 16, "num_decoder_layers": 1}}}, schema)
    assert "but num_decoder_layers=1, d_model=16" in distill.describe(settings)


@pytest.mark.parametrize("family", ["decoder", "encoder-decoder"])
def test_recipe_apply_train_then_distill_end_to_end_on_language_models(write_recipe, tmp_path, family):
    from compose.cli.main import main

    recipe = write_recipe(
        f"""\
        - {{name: finetune, uses: train, with: {{{TRAIN_LM}}}}}
        - {{name: shrink, uses: distill, with: {{training: {{{DISTIL_LM}}}}}}}
        """,
        config=family_config(family),
        family=family,
    )
    out = tmp_path / "run"
    assert main(["apply", str(recipe), "--output", str(out), "-q"]) == 0
    report = json.loads((out / "report.json").read_text())
    rows = {row["name"]: row for row in report["stages"]}
    assert report["status"] == "passed"
    assert rows["shrink"]["details"]["student"]["source"] == "from_teacher"
    assert rows["shrink"]["params"] < rows["finetune"]["params"]
    assert math.isfinite(rows["shrink"]["metric"]["value"])
    reloaded, _ = load_artifact(rows["shrink"]["artifact"])
    if family == "decoder":
        assert rows["shrink"]["metric"]["name"] == "perplexity"
        assert rows["shrink"]["details"]["student"]["teacher_layers"] == [0, 2]
        assert reloaded.config.num_hidden_layers == 2
    else:
        assert rows["shrink"]["metric"]["name"] == "exact_match"
        assert rows["shrink"]["details"]["student"]["layers"] == {"encoder": 2, "decoder": 2}
        assert (reloaded.config.num_layers, reloaded.config.num_decoder_layers) == (2, 2)


# -- the teacher's logits, cached per example ------------------------------------------------


def _cached_and_live(model, student, settings, batches, family="encoder"):
    """(losses with a TeacherCache, losses with the live teacher) over ``batches``, and the cache."""
    from compose.plugins.shared.distillation.teacher_cache import TeacherCache

    cache = TeacherCache(max_megabytes=64)
    cached = DistillationLoss(model, settings, None, family=family, teacher_cache=cache)
    live = DistillationLoss(model, settings, None, family=family)
    with torch.no_grad():
        return [cached(student, b).item() for b in batches], [live(student, b).item() for b in batches], cache


def test_the_cached_teacher_gives_the_live_teachers_loss_and_runs_once_per_example(make_context, teacher):
    model, tokenizer, _ = teacher
    ctx = distill_context(make_context, model, tokenizer, "{student: {from_teacher: {layers: [1, 3]}}}")
    student, _ = distill.build_student(ctx, model)
    for m in (model, student):
        m.eval()
    batch = _one_batch(ctx)
    padded = {k: torch.nn.functional.pad(v, (0, 5)) if v.dim() == 2 else v for k, v in batch.items()}  # longer padding
    cached, live, cache = _cached_and_live(model, student, ctx.settings["loss"], [batch, batch, padded])
    assert cached == pytest.approx(live, rel=1e-5)
    assert cache.misses == 8 and cache.hits == 16  # the same 8 examples, whatever their padding: one teacher run
    assert cache.summary()["examples"] == 8


def test_the_cached_teacher_keeps_a_language_models_logits_per_position(make_context, request):
    family, model, tokenizer = trained_teacher(request, make_context, "decoder")
    ctx = lm_context(make_context, family, model, tokenizer, "{}")
    student, _ = distill.build_student(ctx, model)
    for m in (model, student):
        m.eval()
    batch = next(iter(ctx.task.batches("train", tokenizer, 8)))
    batch["attention_mask"][0, 10:] = 0  # a padded row: its padding positions are not kept
    batch["labels"][0, 10:] = -100
    cached, live, cache = _cached_and_live(model, student, ctx.settings["loss"], [batch, batch], family)
    assert cached == pytest.approx(live, rel=1e-5) and cache.hits == 8
    assert cache.bytes == (7 * 16 + 10) * model.config.vocab_size * 4


def test_the_teacher_cache_is_used_only_where_it_is_exact():
    from compose.plugins.shared.distillation.teacher_cache import why_not_cached

    base = {
        "loss": {"soft": {"weight": 1.0}, "hidden": {"weight": 0}, "attention": {"weight": 0}},
        "teacher_cache": {"enabled": True},
    }
    assert why_not_cached(base, "encoder") is None and why_not_cached(base, "decoder") is None
    assert "encoder-decoder" in why_not_cached(base, "encoder-decoder")
    matching = {**base, "loss": {**base["loss"], "hidden": {"weight": 1.0}}}
    assert "layer matching" in why_not_cached(matching, "encoder")
    assert "enabled is false" in why_not_cached({**base, "teacher_cache": {"enabled": False}}, "encoder")
