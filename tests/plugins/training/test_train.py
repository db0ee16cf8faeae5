"""The `train` stage on a tiny real BERT: it learns the tiny sentiment task."""

from compose.evaluation.evaluator import evaluate


def test_train_improves_accuracy_on_learnable_data(make_context, tiny_bert):
    model, tokenizer = tiny_bert
    ctx = make_context(
        "- {name: ft, uses: train, with: {epochs: 4, learning_rate: 3.0e-3, batch_size: 16, eval_every_epoch: false}}",
        model,
        tokenizer,
        overrides=(),
    )
    before = evaluate(model, tokenizer, ctx.task, ctx.recipe["evaluate"], ctx.device).value
    result = ctx.plugin_host.stage("train").run(ctx)
    after = evaluate(result.model, tokenizer, ctx.task, ctx.recipe["evaluate"], ctx.device).value
    assert after >= 0.9 > before
    training = result.details["training"]
    assert training["steps"] == 4 * 16  # 256 rows / batch 16, 4 epochs
    assert training["final_loss"] < 0.5


def test_train_lowers_a_decoders_perplexity(make_context, tiny_llama):
    model, tokenizer = tiny_llama
    ctx = make_context(
        "- {name: ft, uses: train, with: {epochs: 2, learning_rate: 3.0e-3, batch_size: 16}}",
        model,
        tokenizer,
        overrides=(),
        family="decoder",
    )
    before = evaluate(model, tokenizer, ctx.task, ctx.recipe["evaluate"], ctx.device)
    result = ctx.plugin_host.stage("train").run(ctx)
    after = evaluate(result.model, tokenizer, ctx.task, ctx.recipe["evaluate"], ctx.device)
    assert after.metric == "perplexity" and after.value < 0.25 * before.value
    assert after.metrics["next_token_accuracy"] > before.metrics["next_token_accuracy"] + 0.1


def test_train_teaches_t5_to_answer_in_words(make_context, tiny_t5):
    model, tokenizer = tiny_t5
    ctx = make_context(
        "- {name: ft, uses: train, with: {epochs: 3, learning_rate: 3.0e-3, batch_size: 16, eval_every_epoch: false}}",
        model,
        tokenizer,
        overrides=(),
        family="encoder-decoder",
    )
    result = ctx.plugin_host.stage("train").run(ctx)
    after = evaluate(result.model, tokenizer, ctx.task, ctx.recipe["evaluate"], ctx.device)
    assert after.metric == "exact_match" and after.value >= 0.9  # it answers "positive"/"negative" right


def test_each_training_run_starts_accelerate_afresh(make_context, tiny_bert):
    """accelerate's process-wide device state from an earlier run must not leak into the next one.

    A CPU run followed by a CUDA run in one process trained on the CPU while the batches were
    on the GPU, because ``AcceleratorState._reset_state()`` keeps ``PartialState``.
    """
    from accelerate.state import GradientState, PartialState

    from compose.run.training import fresh_accelerator, train_model

    model, tokenizer = tiny_bert
    ctx = make_context(
        "- {name: ft, uses: train, with: {max_steps: 2, eval_every_epoch: false}}", model, tokenizer, overrides=()
    )
    train_model(ctx)
    asked_cpu = ctx.device.type == "cpu"
    assert PartialState()._cpu is asked_cpu  # what decides accelerate's device
    fresh_accelerator(cpu=not asked_cpu)  # the next run asks for the other placement
    assert PartialState()._cpu is (not asked_cpu)
    assert GradientState().dataloader_references == [None]  # nothing left of the earlier run's data
    fresh_accelerator(cpu=asked_cpu)
    _, summary = train_model(ctx)  # and a run after that trains as usual
    assert summary.steps == 2
