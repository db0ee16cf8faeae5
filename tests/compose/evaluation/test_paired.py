"""Stages against the baseline: paired bootstrap interval of retained, agreement, KL."""

import math

import pytest
import torch

from compose.evaluation.paired import aligned, compare_with_baseline, concat_records
from compose.tasks import CausalLMTask, SequenceClassificationTask

SETTINGS = {"bootstrap_samples": 1000, "confidence": 0.95, "top_k": 16}
SPEC = {"kind": "sequence-classification", "labels": [0, 1], "metric": None}


def classification_records(correct: torch.Tensor, labels: torch.Tensor, confidence: float = 2.0) -> dict:
    predictions = torch.where(correct, labels, 1 - labels)
    logits = torch.nn.functional.one_hot(predictions, 2).float() * confidence
    log_probs = torch.log_softmax(logits, -1)
    return {"labels": labels, "predictions": predictions, "log_probs": log_probs, "ids": torch.arange(len(labels))}


def test_the_baseline_against_itself_retains_exactly_all_and_agrees_everywhere():
    task = SequenceClassificationTask(SPEC, 0)
    labels = torch.randint(0, 2, (300,), generator=torch.Generator().manual_seed(1))
    records = classification_records(torch.rand(300, generator=torch.Generator().manual_seed(2)) < 0.8, labels)
    found = compare_with_baseline(task, "accuracy", True, records, records, SETTINGS, seed=0)
    assert found.retained_ci == (1.0, 1.0) and found.agreement == 1.0 and found.kl == 0.0


def test_the_interval_is_paired_so_a_few_changed_predictions_give_a_narrow_one():
    task = SequenceClassificationTask(SPEC, 0)
    generator = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 2, (1000,), generator=generator)
    base_correct = torch.rand(1000, generator=generator) < 0.8
    stage_correct = base_correct.clone()
    flipped = torch.nonzero(base_correct)[:20, 0]  # the stage gets 20 of the baseline's right answers wrong
    stage_correct[flipped] = False
    base, stage = classification_records(base_correct, labels), classification_records(stage_correct, labels)
    found = compare_with_baseline(task, "accuracy", True, base, stage, SETTINGS, seed=0)
    retained = stage_correct.float().mean().item() / base_correct.float().mean().item()
    low, high = found.retained_ci
    assert low < retained < high
    # unpaired, each accuracy alone has a 95% interval of about +-2.5 points (+-3% of retained);
    # paired, only the 20 changed examples vary between the two models
    assert high - low < 0.025 and high < 1.0
    assert found.agreement == pytest.approx(0.98)
    assert found.kl > 0


def test_the_same_seed_gives_the_same_interval_and_more_examples_a_narrower_one():
    task = SequenceClassificationTask(SPEC, 0)
    widths = []
    for n in (200, 3200):
        generator = torch.Generator().manual_seed(n)
        labels = torch.randint(0, 2, (n,), generator=generator)
        base = classification_records(torch.rand(n, generator=generator) < 0.85, labels)
        stage = classification_records(torch.rand(n, generator=generator) < 0.80, labels)
        first = compare_with_baseline(task, "accuracy", True, base, stage, SETTINGS, seed=7)
        assert compare_with_baseline(task, "accuracy", True, base, stage, SETTINGS, seed=7) == first
        widths.append(first.retained_ci[1] - first.retained_ci[0])
    assert widths[1] < widths[0] / 2  # 16x the examples: about a quarter of the width


def test_the_interval_covers_the_true_retained_about_as_often_as_it_claims():
    # 60 simulated evaluations of two models whose true accuracies are 0.85 and 0.80
    task = SequenceClassificationTask(SPEC, 0)
    settings = dict(SETTINGS, bootstrap_samples=400)
    covered = 0
    for trial in range(60):
        generator = torch.Generator().manual_seed(100 + trial)
        labels = torch.randint(0, 2, (400,), generator=generator)
        draw = torch.rand(400, generator=generator)
        base = classification_records(draw < 0.85, labels)
        stage = classification_records(draw < 0.80, labels)  # correlated, as a compressed model's errors are
        low, high = compare_with_baseline(task, "accuracy", True, base, stage, settings, seed=trial).retained_ci
        covered += low <= 0.80 / 0.85 <= high
    assert 50 <= covered <= 60  # 95% of 60 is 57; a broken interval (e.g. unpaired or degenerate) misses this


def test_kl_of_classification_is_the_mean_kl_of_the_class_distributions():
    task = SequenceClassificationTask(SPEC, 0)
    labels = torch.tensor([0, 1, 1])
    base = classification_records(torch.tensor([True, True, False]), labels, confidence=3.0)
    stage = dict(base, log_probs=torch.log_softmax(torch.zeros(3, 2), -1))  # uniform: same argmax ties to 0
    p = base["log_probs"].exp()
    expected = (p * (base["log_probs"] - math.log(0.5))).sum(-1).mean().item()
    assert task.kl(base, stage) == pytest.approx(expected)


def test_a_lower_is_better_metric_retains_baseline_over_stage():
    task = CausalLMTask({"kind": "causal-lm", "metric": None}, 0)
    n = 64
    base = {
        "nll": torch.full((n,), 2.0 * 10, dtype=torch.float64),
        "tokens": torch.full((n,), 10),
        "correct": torch.full((n,), 3),
        "predicted": torch.zeros(n, 10, dtype=torch.int32),
        "ids": torch.arange(n),
    }
    stage = dict(base, nll=base["nll"] + torch.linspace(0, 4, n, dtype=torch.float64))
    found = compare_with_baseline(task, "perplexity", False, base, stage, SETTINGS, seed=0)
    point = task.metric_from_records(base, "perplexity") / task.metric_from_records(stage, "perplexity")
    assert found.retained_ci[0] < point.item() < found.retained_ci[1] < 1.0
    assert found.agreement == 1.0 and found.kl is None  # no KL: the stage was not evaluated against the baseline
    assert (
        compare_with_baseline(task, "perplexity", False, base, base, SETTINGS, seed=0).kl == 0.0
    )  # the baseline itself


def test_records_of_different_examples_are_compared_on_the_ones_both_have():
    labels = torch.tensor([0, 1, 0, 1])
    base = classification_records(torch.tensor([True, True, True, False]), labels)
    stage = classification_records(torch.tensor([True, False, True, True]), labels)
    stage = {k: v[[3, 1, 0]] for k, v in stage.items()}  # another order, one example missing
    pair = aligned(base, stage)
    assert pair[0]["ids"].tolist() == pair[1]["ids"].tolist() == [0, 1, 3]
    merged = concat_records([{"x": torch.zeros(2, 3), "t": ["a", "b"]}, {"x": torch.ones(1, 5), "t": ["c"]}])
    assert merged["x"].shape == (3, 5) and merged["x"][0, 4] == -1 and merged["t"] == ["a", "b", "c"]
