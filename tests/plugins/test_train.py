"""The `train` stage on a tiny real BERT: it learns the tiny sentiment task."""

from compose.evaluation import evaluate


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
    ctx = make_context("- {name: ft, uses: train, with: {epochs: 2, learning_rate: 3.0e-3, batch_size: 16}}",
                       model, tokenizer, overrides=(), family="decoder")  # fmt: skip
    before = evaluate(model, tokenizer, ctx.task, ctx.recipe["evaluate"], ctx.device)
    result = ctx.plugin_host.stage("train").run(ctx)
    after = evaluate(result.model, tokenizer, ctx.task, ctx.recipe["evaluate"], ctx.device)
    assert after.metric == "perplexity" and after.value < 0.25 * before.value
    assert after.metrics["next_token_accuracy"] > before.metrics["next_token_accuracy"] + 0.1


def test_train_teaches_t5_to_answer_in_words(make_context, tiny_t5):
    model, tokenizer = tiny_t5
    ctx = make_context("- {name: ft, uses: train, with: {epochs: 3, learning_rate: 3.0e-3, batch_size: 16, "
                       "eval_every_epoch: false}}", model, tokenizer, overrides=(), family="encoder-decoder")  # fmt: skip
    result = ctx.plugin_host.stage("train").run(ctx)
    after = evaluate(result.model, tokenizer, ctx.task, ctx.recipe["evaluate"], ctx.device)
    assert after.metric == "exact_match" and after.value >= 0.9  # it answers "positive"/"negative" right
