"""Tokenizers trained from the task's data, and models built from a config around them."""

import pytest

from compose.errors import RecipeError
from compose.recipe.load import load_recipe
from compose.run.modeling import load_model, load_tokenizer, train_tokenizer
from compose.tasks import build_task

TEXTS = ["the film was good", "the plot was <unk> and dull", "a lovely story"] * 20


def test_a_trained_tokenizer_is_deterministic_keeps_unk_whole_and_ends_texts_with_eos():
    first = train_tokenizer(TEXTS, {"vocab_size": 300, "min_frequency": 1})
    second = train_tokenizer(TEXTS, {"vocab_size": 300, "min_frequency": 1})
    assert first.get_vocab() == second.get_vocab() and len(first) <= 300
    ids = first("the plot was <unk>")["input_ids"]
    assert ids[-1] == first.eos_token_id and first.unk_token_id in ids
    assert first.decode(ids, skip_special_tokens=True) == "the plot was "
    assert first.pad_token_id == 0 and first.eos_token_id == 1  # T5's conventions
    assert "token_type_ids" not in first("a")


def test_tokenizer_train_in_a_recipe_learns_from_the_split_and_sizes_the_model(write_recipe, host):
    path = write_recipe("- {name: t, uses: train, with: {epochs: 1}}", family="decoder")
    recipe = load_recipe(path, ["~model.tokenizer.path", "model.tokenizer.train.vocab_size=280"], host)
    assert recipe.data["model"]["tokenizer"]["train"] == {"split": "train", "vocab_size": 280, "min_frequency": 2}
    task = build_task(recipe.data["task"], recipe.data["seed"])
    tokenizer = load_tokenizer(recipe.data["model"], task)
    model = load_model(recipe.data["model"], task, tokenizer=tokenizer)
    assert model.config.vocab_size == len(tokenizer) <= 280
    assert (model.config.pad_token_id, model.config.eos_token_id) == (tokenizer.pad_token_id, tokenizer.eos_token_id)
    with pytest.raises(RecipeError, match="split 'trian' is not in task.data.*did you mean 'train'"):
        load_recipe(path, ["~model.tokenizer.path", "model.tokenizer.train.split=trian"], host)


def test_a_config_value_wins_over_the_tokenizers(write_recipe, host, tiny_bpe_tokenizer_dir):
    path = write_recipe("- {name: t, uses: train, with: {epochs: 1}}", family="encoder-decoder")
    recipe = load_recipe(path, ["model.config.vocab_size=512"], host)
    task = build_task(recipe.data["task"], recipe.data["seed"])
    tokenizer = load_tokenizer(recipe.data["model"], task)
    model = load_model(recipe.data["model"], task, tokenizer=tokenizer)
    assert model.config.vocab_size == 512 and model.config.decoder_start_token_id == tokenizer.pad_token_id
