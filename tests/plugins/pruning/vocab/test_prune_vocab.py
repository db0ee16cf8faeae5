"""The `prune-vocab` stage: the tokens the training data uses stay, the model computes what it
computed on text made of them, reloads, and its exported folder still reads words it dropped."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, GPT2LMHeadModel, LlamaForCausalLM

from compose.api import load_artifact
from compose.cli.main import main
from compose.plugins.pruning.vocab import stage as prune_vocab
from compose.plugins.pruning.vocab.model import keep_rows
from compose.plugins.pruning.vocab.tokenizer import character_ids, pruned_tokenizer, tokenizer_json
from compose.recipe.load import load_recipe
from compose.run.artifacts import save_artifact
from tests.conftest import sentiment_rows
from tests.plugins.export.test_export import _onnx_alone

#: Words the training split below never uses (the dev split does).
UNSEEN = {"superb", "weak", "plot"}
STAGE = "- {name: vocab, uses: prune-vocab}"


@pytest.fixture(scope="module")
def narrow_data_dir(tmp_path_factory) -> Path:
    """train.tsv without the UNSEEN words; dev.tsv with every word."""
    folder = tmp_path_factory.mktemp("narrow")
    train = [(s, y) for s, y in sentiment_rows(400, 7) if not UNSEEN & set(s.split())]
    dev = sentiment_rows(64, 8)
    for name, rows in (("train", train), ("dev", dev)):
        lines = ["sentence\tlabel"] + [f"{s}\t{y}" for s, y in rows]
        (folder / f"{name}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def _narrow(folder: Path) -> list[str]:
    return [f"task.data.{split}.path={folder / (split + '.tsv')}" for split in ("train", "dev")]


def _logits(model, tokenizer, texts, **extra):
    with torch.no_grad():
        return model(**tokenizer(texts, padding=True, return_tensors="pt"), **extra).logits


def test_bert_keeps_the_used_words_and_computes_the_same_on_them(make_context, tiny_bert, narrow_data_dir, tmp_path):
    model, tokenizer = tiny_bert
    ctx = make_context(STAGE, model, tokenizer, ("model.fine_tuned=true", *_narrow(narrow_data_dir)))
    seen = ["good film and a fun story", "the acting was dull and bad"]
    before = _logits(model, tokenizer, seen)
    unseen_ids = tokenizer.convert_tokens_to_ids(sorted(UNSEEN))

    result = prune_vocab.run(ctx)

    pruned, new_tokenizer = result.model, result.tokenizer
    assert result.details["vocabulary_before"] == len(tokenizer) == 31
    assert result.details["vocabulary_after"] == 28 == len(new_tokenizer)
    assert pruned.bert.embeddings.word_embeddings.weight.shape == (28, 32) and pruned.config.vocab_size == 28
    assert result.details["parameters_removed"] == 3 * 32
    assert result.details["dev_tokens_dropped"] > 0
    kept_rows = [i for i in range(31) if i not in unseen_ids]
    assert torch.equal(pruned.bert.embeddings.word_embeddings.weight, model.bert.embeddings.word_embeddings.weight)
    assert torch.allclose(_logits(pruned, new_tokenizer, seen), before, atol=1e-6)
    assert new_tokenizer.convert_ids_to_tokens(list(range(28))) == tokenizer.convert_ids_to_tokens(kept_rows)
    assert new_tokenizer("superb plot")["input_ids"] == [new_tokenizer.cls_token_id] + [
        new_tokenizer.unk_token_id
    ] * 2 + [new_tokenizer.sep_token_id]
    assert new_tokenizer.pad_token_id == 0 and pruned.config.pad_token_id == 0

    folder = save_artifact(pruned, new_tokenizer, tmp_path / "saved", "sequence-classification")
    reloaded, reloaded_tokenizer = load_artifact(folder)
    assert len(reloaded_tokenizer) == 28
    assert torch.allclose(_logits(reloaded.eval(), reloaded_tokenizer, seen), before, atol=1e-6)


def test_min_count_drops_rare_tokens_and_keep_first_keeps_a_margin(make_context, tiny_bert, narrow_data_dir):
    model, tokenizer = tiny_bert
    common = ("model.fine_tuned=true", *_narrow(narrow_data_dir))
    rare = prune_vocab.run(
        make_context(
            "- {name: v, uses: prune-vocab, with: {min_count: 100000}}", copy.deepcopy(model), tokenizer, common
        )
    )
    # nothing is that common: what stays is the special tokens and the one-character piece 'a'
    assert rare.details["kept_by_reason"] == {"used": 0, "special": 5, "characters": 1, "first": 0, "merge parts": 0}
    margin = prune_vocab.run(
        make_context("- {name: v, uses: prune-vocab, with: {keep_first: 31}}", model, tokenizer, common)
    )
    assert margin.details["vocabulary_after"] == 31


def _byte_level_counts(tokenizer, texts):
    from collections import Counter

    return Counter(i for text in texts for i in tokenizer(text)["input_ids"])


def test_byte_level_bpe_keeps_the_merges_its_pieces_need_and_spells_unseen_words(tiny_bpe_tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bpe_tokenizer_dir)
    seen_text = "the film was good and fun"
    from compose.plugins.pruning.vocab.selection import select_tokens

    config = AutoConfig.for_model("llama", vocab_size=len(tokenizer))
    settings = {"min_count": 1, "keep_characters": True, "keep_first": 0}
    data = tokenizer_json(tokenizer)
    counts = _byte_level_counts(tokenizer, [seen_text])
    selection = select_tokens(counts, tokenizer, data, config, len(tokenizer), settings)
    assert selection.by_reason["characters"] >= 200  # the byte alphabet
    assert selection.by_reason["merge parts"] > 0  # 'film' is built from pieces the text never shows alone
    new_tokenizer = pruned_tokenizer(tokenizer, data, selection.kept)
    new_id = {old: new for new, old in enumerate(selection.kept)}
    assert new_tokenizer(seen_text)["input_ids"] == [new_id[i] for i in tokenizer(seen_text)["input_ids"]]
    unseen = "superb weak plot"
    assert new_tokenizer.decode(new_tokenizer(unseen)["input_ids"], skip_special_tokens=True) == unseen
    assert len(new_tokenizer(unseen)["input_ids"]) > len(tokenizer(unseen)["input_ids"])


def test_character_pieces_are_recognised_in_each_model_kind():
    wordpiece = {
        "model": {"type": "WordPiece", "continuing_subword_prefix": "##", "vocab": {"a": 0, "##b": 1, "ab": 2, "##": 3}}
    }
    unigram = {
        "model": {"type": "Unigram", "vocab": [["\u2581a", 0.0], ["\u2581ab", 0.0], ["b", 0.0], ["\u2581", 0.0]]}
    }
    assert character_ids(wordpiece) == {0, 1}
    assert character_ids(unigram) == {0, 2, 3}


@pytest.mark.parametrize("tied", [True, False])
def test_a_language_model_head_tied_or_not_keeps_the_same_rows(tied):
    if tied:
        config = AutoConfig.for_model("gpt2", vocab_size=50, n_embd=32, n_layer=1, n_head=4, n_positions=16)
        model = GPT2LMHeadModel(config).eval()
    else:
        config = AutoConfig.for_model(
            "llama",
            vocab_size=50,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=4,
            tie_word_embeddings=False,
            pad_token_id=3,
        )
        model = LlamaForCausalLM(config).eval()
    kept = [0, 1, 3, 7, 8, 20, 49]
    ids = torch.tensor([[7, 8, 20, 1, 49]])
    with torch.no_grad():
        before = model(input_ids=ids).logits[..., kept]
        keep_rows(model, kept)
        after = model(input_ids=torch.tensor([[3, 4, 5, 1, 6]])).logits
    assert after.shape[-1] == len(kept) and torch.allclose(after, before, atol=1e-5)
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied
    assert model.config.vocab_size == len(kept)
    if not tied:
        assert model.config.pad_token_id == 2


def test_t5_shares_one_pruned_table_and_answers_the_same(make_context, tiny_t5, narrow_data_dir):
    model, tokenizer = tiny_t5
    ctx = make_context(
        STAGE, model, tokenizer, ("model.fine_tuned=true", *_narrow(narrow_data_dir)), family="encoder-decoder"
    )
    texts = ["good film and a fun story"]
    labels = tokenizer(["positive"], return_tensors="pt")["input_ids"]
    before = _logits(model, tokenizer, texts, labels=labels)

    result = prune_vocab.run(ctx)

    pruned, new_tokenizer = result.model, result.tokenizer
    kept = result.details["vocabulary_after"]
    assert kept < result.details["vocabulary_before"]
    assert pruned.encoder.embed_tokens.weight is pruned.shared.weight is pruned.decoder.embed_tokens.weight
    assert pruned.shared.weight.shape[0] == pruned.lm_head.weight.shape[0] == kept
    new_labels = new_tokenizer(["positive"], return_tensors="pt")["input_ids"]
    after = _logits(pruned, new_tokenizer, texts, labels=new_labels)
    kept_ids = tokenizer.convert_tokens_to_ids(new_tokenizer.convert_ids_to_tokens(list(range(kept))))
    assert torch.allclose(after, before[..., kept_ids], atol=1e-5)


def test_causal_lm_is_refused_at_validation(write_recipe, host):
    from compose.errors import RecipeError

    with pytest.raises(RecipeError, match="perplexity"):
        load_recipe(write_recipe(STAGE, family="decoder"), [], host)


def test_train_prune_vocab_export_reads_unseen_words_with_onnx_runtime_alone(write_recipe, tmp_path, narrow_data_dir):
    stages = (
        "- {name: ft, uses: train, with: {epochs: 1, batch_size: 32, eval_every_epoch: false}}\n"
        f"{STAGE}\n"
        "- {name: deploy, uses: export, with: {weights: fp32, embeddings: fp32}}\n"
    )
    out = tmp_path / "run"
    recipe = write_recipe(stages)
    assert main(["apply", str(recipe), *_narrow(narrow_data_dir), "--output", str(out), "--json", "-q"]) == 0
    report = json.loads((out / "report.json").read_text())
    ft, vocab, deploy = report["stages"][1:]
    assert vocab["details"]["vocabulary_after"] == 28 and vocab["params"] == ft["params"] - 3 * 32
    assert deploy["params"] == vocab["params"] and vocab["retained"] is not None
    seen = ["good film and a fun story", "the acting was dull and bad"]
    model, tokenizer = load_artifact(vocab["artifact"])
    expected = _logits(model.eval(), tokenizer, seen)
    alone = _onnx_alone(deploy["artifact"], seen + ["superb weak plot, zebra quokka!"])
    assert torch.allclose(torch.tensor(alone["logits"][:2]), expected, atol=1e-4)
    assert len(alone["labels"]) == 3
