"""The three task kinds on tiny real models: batches, metrics, what evaluation reports."""

import math

import pytest
import torch

from compose.evaluation import evaluate
from compose.recipe import load_recipe
from compose.tasks import build_task


def task_of(write_recipe, host, family):
    recipe = load_recipe(write_recipe("- {name: t, uses: train, with: {epochs: 1}}", family=family), [], host)
    return build_task(recipe.data["task"], recipe.data["seed"]), recipe


def test_causal_lm_cuts_the_text_into_equal_blocks_ending_lines_with_eos(write_recipe, host, tiny_llama):
    model, tokenizer = tiny_llama
    task, _ = task_of(write_recipe, host, "decoder")
    blocks = task.examples("dev", tokenizer)
    assert blocks and all(len(b) == 16 for b in blocks)
    lines = [t for t in task.texts("dev") if t.strip()]
    stream = []
    for line in lines:
        stream += tokenizer(line, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert sum(blocks, []) == stream[: 16 * len(blocks)]
    batch = next(iter(task.batches("dev", tokenizer, 4)))
    assert torch.equal(batch["labels"], batch["input_ids"]) and batch["input_ids"].shape == (4, 16)


def test_perplexity_is_exp_of_the_models_own_mean_loss(write_recipe, host, tiny_llama):
    model, tokenizer = tiny_llama
    task, recipe = task_of(write_recipe, host, "decoder")
    settings = dict(recipe.data["evaluate"], limit=8)
    result = evaluate(model, tokenizer, task, settings, torch.device("cpu"))
    batch = next(iter(task.batches("dev", tokenizer, 8)))
    with torch.no_grad():
        loss = model(**batch).loss.item()  # transformers' own shifted mean loss
    assert result.metric == "perplexity" and not result.higher_is_better
    assert result.value == pytest.approx(math.exp(loss), rel=1e-4)
    assert 0.0 <= result.metrics["next_token_accuracy"] <= 1.0
    # an untrained model over a vocabulary of ~320 is about as perplexed as uniform guessing
    assert 0.5 * len(tokenizer) < result.value < 2 * len(tokenizer)


def test_seq2seq_targets_map_labels_to_text_and_exact_match_reads_generations(write_recipe, host, tiny_t5):
    model, tokenizer = tiny_t5
    task, recipe = task_of(write_recipe, host, "encoder-decoder")
    row = task.rows("dev")[0]
    assert task.target(row) == {"0": "negative", "1": "positive"}[row["label"]]
    batch = next(iter(task.batches("dev", tokenizer, 4)))
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert model(**batch).loss.item() > 0
    labels = batch["labels"].masked_fill(batch["labels"] == -100, tokenizer.pad_token_id)
    assert tokenizer.batch_decode(labels, skip_special_tokens=True)[0] == task.target(task.rows("dev")[0])
    result = evaluate(model, tokenizer, task, dict(recipe.data["evaluate"], limit=16), torch.device("cpu"))
    assert result.metric == "exact_match" and result.examples == 16
    # a random model does not generate the exact words; a perfect predictor is scored 1.0
    state = task.new_metric_state()

    class Echo:  # "generates" exactly the targets
        sequences = batch["labels"].masked_fill(batch["labels"] == -100, tokenizer.pad_token_id)

    Echo.tokenizer = tokenizer
    task.update_metric(state, Echo, batch)
    assert task.compute_metric(state) == 1.0


def test_a_target_longer_than_max_target_length_is_an_error_that_names_the_fix(write_recipe, host, tiny_t5):
    from compose.errors import DataError

    _, tokenizer = tiny_t5
    task, _ = task_of(write_recipe, host, "encoder-decoder")
    task.spec = dict(task.spec, max_target_length=2)
    with pytest.raises(DataError, match="set task.max_target_length to [0-9]+ or more"):
        task.batches("dev", tokenizer, 4)


def test_the_task_decides_which_metrics_a_recipe_may_name(write_recipe, host):
    from compose.errors import RecipeError

    path = write_recipe("- {name: t, uses: train, with: {epochs: 1}}", family="decoder")
    with pytest.raises(RecipeError, match="a causal-lm task has no metric 'accuracy'.*next_token_accuracy"):
        load_recipe(path, ["task.metric=accuracy"], host)
    assert load_recipe(path, ["evaluate.metric=next_token_accuracy"], host).data["task"]["metric"] is None
    path = write_recipe("- {name: t, uses: train, with: {epochs: 1}}", family="encoder-decoder")
    with pytest.raises(RecipeError, match="needs its target text"):
        load_recipe(path, ["~task.targets"], host)
