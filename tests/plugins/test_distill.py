"""The `distill` stage on tiny real BERTs: students shrink, learn from a trained teacher, and reload."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from compose.api import count_parameters, load_artifact, save_artifact, train_model
from compose.errors import RecipeError
from compose.evaluation import evaluate
from compose.plugins import distill

#: The teacher: the tiny BERT of conftest with 4 layers, so that a student can keep 2 of them.
TEACHER = {"num_hidden_layers": 4}
_CACHE: dict = {}

TRAIN_FAST = "epochs: 4, learning_rate: 3.0e-3, batch_size: 16, eval_every_epoch: false"


def teacher_recipe_config(model) -> dict:
    keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "max_position_embeddings", "vocab_size")  # fmt: skip
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
        ctx = make_context(f"- {{name: ft, uses: train, with: {{{TRAIN_FAST}}}}}", model, tokenizer,
                           overrides=(), config=teacher_recipe_config(model))  # fmt: skip
        model, _ = train_model(ctx, model)
        _CACHE["model"] = model
        _CACHE["accuracy"] = evaluate(model, tokenizer, ctx.task, ctx.recipe["evaluate"], ctx.device).value
    return copy.deepcopy(_CACHE["model"]), tokenizer, _CACHE["accuracy"]


def distill_context(make_context, model, tokenizer, settings: str):
    return make_context(f"- {{name: kd, uses: distill, with: {settings}}}", model, tokenizer,
                        config=teacher_recipe_config(model))  # fmt: skip


def test_distill_shrinks_and_the_student_learns_from_the_teacher(make_context, teacher):
    model, tokenizer, teacher_accuracy = teacher
    assert teacher_accuracy >= 0.9
    ctx = distill_context(
        make_context, model, tokenizer,
        "{student: {config: {num_hidden_layers: 1, hidden_size: 16, intermediate_size: 32}}, "
        f"training: {{{TRAIN_FAST}}}}}",
    )  # fmt: skip
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
    s_weight, t_weight = student.bert.encoder.layer[0].output.dense.weight, model.bert.encoder.layer[3].output.dense.weight
    assert torch.equal(s_weight, t_weight)


def test_attention_and_hidden_matching_train_then_restore_attention(make_context, teacher):
    model, tokenizer, _ = teacher
    ctx = distill_context(
        make_context, model, tokenizer,
        "{loss: {hidden: {weight: 1.0}, attention: {weight: 1.0}}, training: {max_steps: 12, learning_rate: 3.0e-3, "
        "batch_size: 16, eval_every_epoch: false}}",
    )  # fmt: skip
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
        make_context, model, tokenizer,
        "{student: {config: {num_hidden_layers: 2, hidden_size: 16}}, "
        "loss: {soft: {weight: 0}, hard: {weight: 0}, hidden: {weight: 1.0}}, "
        "training: {max_steps: 32, learning_rate: 1.0e-2, batch_size: 16, warmup_ratio: 0, eval_every_epoch: false}}",
    )  # fmt: skip
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
    loss_fn = distill.DistillationLoss(model, settings, [0, 2])
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
            per_layer = [(((s.hidden_states[i + 1] - t.hidden_states[j + 1]) ** 2).mean(-1) * mask).sum() / mask.sum()
                         for i, j in ((0, 0), (1, 2))]  # fmt: skip
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
        make_context, model, tokenizer,
        "{student: {config: {num_hidden_layers: 1, num_attention_heads: 2}}, training: {max_steps: 4, batch_size: 16}}",
    )  # fmt: skip
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
        distill_context(make_context, model, tokenizer,
                        "{student: {config: {num_attention_heads: 2}}, loss: {attention: {weight: 1.0}}}")  # fmt: skip
    # Known only at run time: the recipe's config says 4 heads, the model coming in has 2.
    config = copy.deepcopy(model.config)
    config.num_attention_heads = 2
    two_heads = type(model)(config)
    ctx = make_context("- {name: kd, uses: distill, with: {student: {config: {num_attention_heads: 4}}, "
                       "loss: {attention: {weight: 1.0}}}}", two_heads, tokenizer,
                       config=teacher_recipe_config(model))  # fmt: skip
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
    from compose.schema import fill_defaults, inline_shared_refs

    schema = inline_shared_refs(host.stage("distill").schema)
    settings = fill_defaults({"loss": {"attention": {"weight": 0.5}}}, schema)
    text = distill.describe(settings)
    assert "every other layer" in text
    assert "soft-target KL at T=2.0" in text and "hard labels" in text and "attention KL x0.5" in text
    assert "hidden-state" not in text


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
