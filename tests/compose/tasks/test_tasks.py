"""The three task kinds on tiny real models: batches, metrics, what evaluation reports."""

import math

import pytest
import torch

from compose.evaluation.evaluator import evaluate
from compose.recipe.load import load_recipe
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

    class Echo:  # "generates" exactly the targets
        sequences = batch["labels"].masked_fill(batch["labels"] == -100, tokenizer.pad_token_id)

    Echo.tokenizer = tokenizer
    records = task.example_records(Echo, batch)
    assert task.metric_from_records(records).item() == 1.0


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


NAMED = "task.labels={0: negative, 1: positive}"


def test_named_labels_keep_the_data_values_and_accept_the_names_in_the_data(write_recipe, host, tiny_bert, tmp_path):
    model, tokenizer = tiny_bert
    path = write_recipe("- {name: t, uses: train, with: {epochs: 1}}")
    recipe = load_recipe(path, [NAMED], host)
    task = build_task(recipe.data["task"], recipe.data["seed"])
    assert task.labels == ["0", "1"] and task.label_names == ["negative", "positive"] and task.num_labels == 2
    by_value = next(iter(task.batches("dev", tokenizer, 64)))["labels"]
    named = tmp_path / "named.tsv"  # the same rows with the class names instead of 0/1
    rows = task.rows("dev")
    named.write_text(
        "sentence\tlabel\n" + "".join(f"{r['sentence']}\t{task.label_names[int(r['label'])]}\n" for r in rows),
        encoding="utf-8",
    )
    task = build_task(load_recipe(path, [NAMED, f"task.data.dev.path={named}"], host).data["task"], 0)
    assert torch.equal(next(iter(task.batches("dev", tokenizer, 64)))["labels"], by_value)
    named.write_text("sentence\tlabel\ngood film\tneutral\n", encoding="utf-8")
    from compose.errors import RecipeError

    with pytest.raises(RecipeError, match=r"label 'neutral', which is not in task.labels \(0, 1, negative, positive\)"):
        load_recipe(path, [NAMED, f"task.data.dev.path={named}"], host)  # validation reads a sample of the data
    with pytest.raises(RecipeError, match=r"label 'neutral', which is not in task.labels \(0, 1\); fix the data"):
        load_recipe(path, [f"task.data.dev.path={named}"], host)
    listed = build_task(load_recipe(path, [], host).data["task"], 0)
    assert listed.labels == [0, 1] and listed.label_names == ["0", "1"]  # the list form: values as names


def test_label_names_must_not_repeat_or_be_another_class_value(write_recipe, host):
    from compose.errors import RecipeError

    path = write_recipe("- {name: t, uses: train, with: {epochs: 1}}")
    with pytest.raises(RecipeError, match="'good' name more than one class"):
        load_recipe(path, ["task.labels={0: good, 1: good}"], host)
    with pytest.raises(RecipeError, match="class 0 is named '1', which is also the value of class 1"):
        load_recipe(path, ["task.labels={0: '1', 1: '0'}"], host)
    with pytest.raises(RecipeError, match="task.labels"):
        load_recipe(path, ["task.labels={0: negative}"], host)  # one class is no classification


def test_every_saved_model_names_its_classes_in_config_json(write_recipe, host, tmp_path, tiny_bert):
    import json

    from transformers import AutoModelForSequenceClassification

    from compose.cli.main import main
    from compose.run.modeling import name_labels

    stages = "- {name: ft, uses: train, with: {max_steps: 2, batch_size: 16}}\n"
    out = tmp_path / "run"
    assert (
        main(["apply", str(write_recipe(stages)), NAMED, "evaluate.latency.enabled=false", "--output", str(out), "-q"])
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    for stage in report["stages"]:
        config = json.loads((tmp_path / stage["artifact"] / "config.json").read_text())
        assert config["id2label"] == {"0": "negative", "1": "positive"}
        assert config["label2id"] == {"negative": 0, "positive": 1}
    served = AutoModelForSequenceClassification.from_pretrained(report["stages"][-1]["artifact"])
    assert served.config.id2label == {0: "negative", 1: "positive"}
    # a model a stage builds without the names (e.g. from a bare config) gets them before it is saved
    model, _ = tiny_bert
    assert model.config.id2label == {0: "LABEL_0", 1: "LABEL_1"}
    task = build_task(load_recipe(write_recipe(stages), [NAMED], host).data["task"], 0)
    name_labels(model, task)
    model.save_pretrained(tmp_path / "student")
    assert json.loads((tmp_path / "student" / "config.json").read_text())["id2label"] == {
        "0": "negative",
        "1": "positive",
    }


# -- length-grouped batches (training) ----------------------------------------------------


def varied_task(write_recipe, host, tmp_path, rows=300):
    """A classification task whose training rows are 1 to 14 words long."""
    import random

    rng = random.Random(5)
    words = ["good", "great", "bad", "awful", "the", "film", "plot", "was"]
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 14))) + f"\t{i % 2}" for i in range(rows)]
    data = tmp_path / "varied.tsv"
    data.write_text("sentence\tlabel\n" + "\n".join(lines) + "\n", encoding="utf-8")
    recipe = load_recipe(
        write_recipe("- {name: t, uses: train, with: {epochs: 1}}"), [f"task.data.train.path={data}"], host
    )
    return build_task(recipe.data["task"], recipe.data["seed"])


def test_grouped_batches_cover_every_example_once_per_pass_in_an_order_fixed_by_the_seed():
    from compose.tasks.base import LengthGroupedBatches

    lengths = [(7 * i) % 23 + 1 for i in range(1000)]
    grouped = LengthGroupedBatches(lengths, batch_size=8, seed=3)
    first, second = list(grouped), list(grouped)  # two passes
    assert len(first) == len(grouped) == 125
    for batches in (first, second):
        assert sorted(i for b in batches for i in b) == list(range(1000))
    assert first != second  # a new order every pass
    again = LengthGroupedBatches(lengths, batch_size=8, seed=3)
    assert list(again) == first and list(again) == second  # the same seed replays the same passes
    again.epoch = 1
    assert list(again) == second  # resuming at pass 1 replays pass 1 (the training loop sets epoch)
    assert list(LengthGroupedBatches(lengths, batch_size=8, seed=4)) != first
    # within a window of 50 batches the lengths are sorted, so a batch spans few lengths
    spread = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in first]
    assert sum(spread) / len(spread) < 1.0


def test_grouped_batches_are_mostly_real_tokens_where_random_ones_are_mostly_padding(
    write_recipe, host, tiny_bert, tmp_path
):
    _, tokenizer = tiny_bert
    task = varied_task(write_recipe, host, tmp_path)

    def real_share(loader):
        real = total = 0
        for batch in loader:
            real += int(batch["attention_mask"].sum())
            total += batch["attention_mask"].numel()
        return real / total

    grouped = task.batches("train", tokenizer, 16, shuffle=True, seed=0, group_by_length=True)
    plain = task.batches("train", tokenizer, 16, shuffle=True, seed=0)
    assert len(grouped) == len(plain) == 19
    assert real_share(grouped) > 0.9 > 0.7 > real_share(plain)
    seen = [
        int(x)
        for batch in task.batches("train", tokenizer, 300, shuffle=True, group_by_length=True)
        for x in batch["labels"]
    ]
    assert len(seen) == 300


def test_grouped_batches_give_each_process_a_disjoint_share(write_recipe, host, tiny_bert, tmp_path):
    """Both ways the loop shards: accelerate's batch-sampler shards (data parallel), and task rows (tp groups)."""
    from accelerate.data_loader import BatchSamplerShard

    from compose.tasks.base import LengthGroupedBatches

    lengths = [(5 * i) % 17 + 1 for i in range(256)]
    shares = [
        {
            i
            for b in BatchSamplerShard(
                LengthGroupedBatches(lengths, batch_size=16, seed=0), num_processes=2, process_index=rank
            )
            for i in b
        }
        for rank in (0, 1)
    ]
    assert not shares[0] & shares[1] and shares[0] | shares[1] == set(range(256))

    _, tokenizer = tiny_bert
    task = varied_task(write_recipe, host, tmp_path, rows=64)
    texts = []
    for rank in (0, 1):
        loader = task.batches("train", tokenizer, 8, shuffle=True, shard=(rank, 2), group_by_length=True)
        texts.append([tokenizer.decode(ids, skip_special_tokens=True) for b in loader for ids in b["input_ids"]])
    assert len(texts[0]) == len(texts[1]) == 32
