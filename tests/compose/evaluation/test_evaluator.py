"""Evaluation keeps per-example records: the metrics come from them, and later stages are
compared with the baseline's on the same examples (in-process and through a whole run)."""

import copy
import json

import pytest
import torch

from compose.cli.main import main
from compose.evaluation.evaluator import evaluate
from compose.recipe.load import load_recipe
from compose.tasks import build_task


def _task(write_recipe, host, family):
    recipe = load_recipe(write_recipe("- {name: t, uses: train, with: {epochs: 1}}", family=family), [], host)
    return build_task(recipe.data["task"], recipe.data["seed"]), dict(recipe.data["evaluate"], limit=8, batch_size=3)


def test_a_language_models_kl_over_the_whole_vocabulary_is_the_exact_kl(write_recipe, host, tiny_llama):
    model, tokenizer = tiny_llama
    task, settings = _task(write_recipe, host, "decoder")
    other = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    vocabulary = model.config.vocab_size
    base = evaluate(model, tokenizer, task, settings, torch.device("cpu"), keep_reference=vocabulary)
    full = evaluate(other, tokenizer, task, settings, torch.device("cpu"), reference=base.records)
    truncated_base = evaluate(model, tokenizer, task, settings, torch.device("cpu"), keep_reference=4)
    truncated = evaluate(other, tokenizer, task, settings, torch.device("cpu"), reference=truncated_base.records)
    batch = next(iter(task.batches(settings["split"], tokenizer, 8)))
    with torch.no_grad():
        p = torch.log_softmax(model(**batch).logits[:, :-1].double(), -1)
        q = torch.log_softmax(other(**batch).logits[:, :-1].double(), -1)
    exact = (p.exp() * (p - q)).sum(-1).mean().item()
    assert task.kl(base.records, full.records) == pytest.approx(exact, rel=1e-3)
    assert 0 < task.kl(truncated_base.records, truncated.records) <= exact * (1 + 1e-6)  # the coarse KL: a lower bound
    agreement = task.agreement(base.records, full.records)
    assert agreement == pytest.approx((p.argmax(-1) == q.argmax(-1)).double().mean().item())
    assert base.records["ids"].tolist() == list(range(8))  # in split order, across the batches of 3


def test_metrics_from_records_match_the_batches(write_recipe, host, tiny_bert):
    model, tokenizer = tiny_bert
    task, settings = _task(write_recipe, host, "encoder")
    result = evaluate(model, tokenizer, task, settings, torch.device("cpu"))
    batch = next(iter(task.batches(settings["split"], tokenizer, 8)))
    with torch.no_grad():
        predictions = model(**batch).logits.argmax(-1)
    assert result.value == pytest.approx((predictions == batch["labels"]).double().mean().item())
    assert set(result.metrics) == {"accuracy", "f1", "f1_macro", "matthews"}
    assert torch.equal(result.records["predictions"], predictions)


def test_every_stage_in_the_report_carries_its_interval_agreement_and_kl(write_recipe, tmp_path):
    stages = (
        "- {name: ft, uses: train, with: {max_steps: 4, batch_size: 8}}\n"
        "- {name: prune, uses: prune-heads, with: {ratio: 0.5}}\n"
    )
    out = tmp_path / "run"
    recipe = write_recipe(stages)
    common = ["evaluate.latency.enabled=false", "--output", str(out), "-q"]
    assert main(["apply", str(recipe), *common]) in (0, 1)
    report = json.loads(out.joinpath("report.json").read_text())
    rows = {row["name"]: row for row in report["stages"]}
    assert report["baseline"]["stage"] == "ft"
    assert report["comparison"] == {"bootstrap_samples": 1000, "confidence": 0.95, "top_k": 16, "unit": "example"}
    assert rows["ft"]["retained_ci"] == [1.0, 1.0] and rows["ft"]["agreement"] == 1.0 and rows["ft"]["kl"] == 0.0
    for name in ("input", "prune"):  # the input row is compared once the baseline exists
        low, high = rows[name]["retained_ci"]
        assert low <= rows[name]["retained"] <= high
        assert 0.0 <= rows[name]["agreement"] <= 1.0 and rows[name]["kl"] >= 0.0
    assert (out / "stages" / "01-ft" / "evaluation.pt").is_file()
    # resumed with one more stage: the reused baseline's records compare the new stage
    stages += "- {name: again, uses: prune-heads, with: {ratio: 0.5}}\n"
    assert main(["apply", str(write_recipe(stages)), *common]) in (0, 1)
    report = json.loads(out.joinpath("report.json").read_text())
    assert report["reused_stages"] == ["input", "ft", "prune"]
    again = report["stages"][-1]
    assert again["name"] == "again" and again["agreement"] is not None and again["retained_ci"] is not None
