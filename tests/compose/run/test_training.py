"""compose.run.training: the shared loop learns, stops where told, and a killed run resumes to the same weights."""

import copy
import dataclasses

import pytest
import torch
import transformers

from compose import hookimpl
from compose.run import checkpoint
from compose.run.training import TrainingSummary, parameters_digest, train_model


def context(make_context, model, tokenizer, settings: str, overrides=()):
    return make_context(f"- {{name: ft, uses: train, with: {settings}}}", model, tokenizer, overrides=overrides)


def varied_lengths(folder) -> str:
    """An override pointing the training split at 256 rows of 1 to 12 words, so that grouping by length matters."""
    import random

    rng = random.Random(7)
    words = ["good", "great", "bad", "awful", "the", "film", "plot", "was"]
    rows = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 12))) + f"\t{i % 2}" for i in range(256)]
    path = folder / "varied.tsv"
    path.write_text("sentence\tlabel\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return f"task.data.train.path={path}"


def fixed_batch_loss(model, ctx) -> float:
    batch = next(iter(ctx.task.batches("dev", ctx.tokenizer, 64)))
    model.eval()
    with torch.no_grad():
        return model(**batch).loss.item()


def test_training_lowers_the_loss_and_stops_at_max_steps(make_context, tiny_bert):
    model, tokenizer = tiny_bert
    ctx = context(
        make_context,
        copy.deepcopy(model),
        tokenizer,
        "{max_steps: 24, batch_size: 16, learning_rate: 3.0e-3, warmup_ratio: 0, scheduler: constant, "
        "eval_every_epoch: false, log_every: 4}",
    )
    before = fixed_batch_loss(ctx.model, ctx)
    seen = []
    trained, summary = train_model(ctx, loss_fn=lambda m, batch: seen.append(batch) or m(**batch).loss)
    assert len(seen) == 24 and summary.steps == 24
    assert summary.tokens == {
        "real": sum(int(b["attention_mask"].sum()) for b in seen),
        "computed": sum(b["input_ids"].numel() for b in seen),
    }
    assert summary.epochs == 1.5  # 256 rows in batches of 16: 16 steps a pass
    assert summary.resumed_from_step is None and summary.processes == 1
    assert not trained.training  # handed back in eval mode
    assert fixed_batch_loss(trained, ctx) < 0.8 * before
    assert summary.final_loss is not None and summary.final_loss < before
    assert not (ctx.work_dir / checkpoint.FOLDER).exists()  # the checkpoint went with the finished stage


def test_epochs_and_gradient_accumulation_count_optimizer_steps(make_context, tiny_bert):
    model, tokenizer = tiny_bert
    ctx = context(
        make_context,
        model,
        tokenizer,
        "{epochs: 0.5, batch_size: 32, gradient_accumulation_steps: 2, eval_every_epoch: false}",
    )
    batches = []

    def loss_fn(m, batch):
        batches.append(len(batch["labels"]))
        return m(**batch).loss

    _, summary = train_model(ctx, loss_fn=loss_fn)
    # 256 rows / 32 = 8 batches a pass = 4 optimizer steps; half a pass: 2 steps of 2 batches
    assert summary.steps == 2 and len(batches) == 4 and summary.epochs == 0.5


def test_step_callbacks_see_every_step_and_train_end_can_replace_the_model(make_context, tiny_bert):
    model, tokenizer = tiny_bert
    ctx = context(make_context, model, tokenizer, "{max_steps: 3, batch_size: 16, eval_every_epoch: false}")
    steps = []
    replacement = copy.deepcopy(model)

    class Setup:
        @hookimpl
        def compose_training_setup(self, setup):
            setup.on_step_end.append(lambda info: steps.append((info.step, info.total_steps, info.epoch, info.loss)))
            setup.on_train_end.append(lambda m: replacement)
            setup.notes["seen"] = True

    ctx.plugin_host.register(Setup())
    try:
        trained, summary = train_model(ctx)
    finally:
        ctx.plugin_host.unregister("Setup")
    assert [s[:3] for s in steps] == [(1, 3, 1), (2, 3, 1), (3, 3, 1)]
    assert all(isinstance(s[3], float) for s in steps) and summary.final_loss == steps[-1][3]
    assert trained is replacement and summary.setup == {"seen": True}


def test_a_stage_not_declared_as_training_may_not_train(make_context, tiny_bert):
    model, tokenizer = tiny_bert
    ctx = context(make_context, model, tokenizer, "{max_steps: 1}")
    assert ctx.plugin_host.stage("gptq").trains is False
    with pytest.raises(TypeError, match="stage type 'gptq' runs the shared training loop .* trains=False"):
        train_model(dataclasses.replace(ctx, plugin="gptq"))


def run(ctx, model, stop_after_batches=None):
    """train_model as the executor runs a stage (seeded first); a KeyboardInterrupt after some batches."""
    transformers.set_seed(ctx.seed)
    batches = []

    def loss_fn(m, batch):
        if stop_after_batches is not None and len(batches) >= stop_after_batches:
            raise KeyboardInterrupt
        batches.append(batch["input_ids"].clone())
        return m(**batch).loss

    trained, summary = train_model(ctx, copy.deepcopy(model), loss_fn=loss_fn)
    return trained, summary, batches


# 256 rows in batches of 64: 4 batches a pass; 10 steps run into a third pass.
RESUMABLE = "{max_steps: 10, batch_size: 64, learning_rate: 1.0e-3, checkpoint_every: %d, eval_every_epoch: %s}"


@pytest.mark.parametrize(
    "every, killed_in_step, resumed_from, evaluate, lengths",
    [
        (3, 8, 6, "false", "equal"),
        (4, 6, 4, "false", "equal"),
        (4, 6, 4, "true", "equal"),
        (3, 8, 6, "false", "varied"),
    ],
    ids=[
        "checkpoint-mid-pass",
        "checkpoint-at-the-end-of-a-pass",
        "checkpoint-before-an-evaluation-between-passes",
        "checkpoint-mid-pass-of-length-grouped-batches",
    ],
)
def test_a_killed_run_resumes_to_the_uninterrupted_result(
    make_context, tiny_bert, tmp_path, every, killed_in_step, resumed_from, evaluate, lengths
):
    model, tokenizer = tiny_bert
    assert model.config.hidden_dropout_prob > 0  # dropout draws random numbers: the random state must resume too
    overrides = [varied_lengths(tmp_path)] if lengths == "varied" else []
    ctx = context(make_context, model, tokenizer, RESUMABLE % (every, evaluate), overrides)
    ctx = dataclasses.replace(ctx, fingerprint="stage-fingerprint")
    reference, ref_summary, ref_batches = run(dataclasses.replace(ctx, work_dir=tmp_path / "reference"), model)

    work = tmp_path / "killed"
    work.mkdir()
    killed = dataclasses.replace(ctx, work_dir=work)
    with pytest.raises(KeyboardInterrupt):
        run(killed, model, stop_after_batches=killed_in_step - 1)
    assert checkpoint.find(work / checkpoint.FOLDER, "stage-fingerprint").step == resumed_from
    resumed, summary, batches = run(killed, model)

    assert summary.resumed_from_step == resumed_from and summary.steps == ref_summary.steps == 10
    assert [b.tolist() for b in batches] == [b.tolist() for b in ref_batches[resumed_from:]]  # the same order
    if lengths == "varied":  # the batches were grouped: each spans a few of the split's 12 lengths
        real = [(b != tokenizer.pad_token_id).sum(1) for b in ref_batches]
        assert ctx.settings["group_by_length"] and max(int(r.max() - r.min()) for r in real) <= 4
    assert parameters_digest(resumed) == parameters_digest(reference)
    assert summary.final_loss == ref_summary.final_loss
    assert summary.history == ref_summary.history and len(summary.history) == (2 if evaluate == "true" else 0)
    assert not (work / checkpoint.FOLDER).exists()


def test_a_checkpoint_of_other_settings_is_not_resumed(make_context, tiny_bert, tmp_path):
    model, tokenizer = tiny_bert
    ctx = dataclasses.replace(context(make_context, model, tokenizer, RESUMABLE % (3, "false")), fingerprint="first")
    with pytest.raises(KeyboardInterrupt):
        run(ctx, model, stop_after_batches=4)
    assert checkpoint.find(ctx.work_dir / checkpoint.FOLDER, "first").step == 3
    _, summary, batches = run(dataclasses.replace(ctx, fingerprint="changed"), model)
    assert summary.resumed_from_step is None and len(batches) == 10


def test_parameters_digest_sees_every_bit(tiny_bert):
    model, _ = tiny_bert
    twin = copy.deepcopy(model)
    assert parameters_digest(twin) == parameters_digest(model)
    with torch.no_grad():
        weight = twin.classifier.weight
        weight.view(torch.int32)[0, 0] ^= 1  # the lowest bit of one float
    assert parameters_digest(twin) != parameters_digest(model)


def test_summary_json():
    summary = TrainingSummary(steps=3, epochs=0.5, final_loss=0.25, seconds=1.23456, history=[{"epoch": 1}])
    assert summary.to_json() == {
        "steps": 3,
        "epochs": 0.5,
        "final_loss": 0.25,
        "seconds": 1.235,
        "history": [{"epoch": 1}],
        "processes": 1,
        "setup": {},
        "resumed_from_step": None,
        "parameters_in_sync": None,
        "tokens": {},
        "budget": {},
        "early_stopping": None,
    }
