"""Classification metrics, single and batched over bootstrap resamples."""

import pytest
import torch

from compose.evaluation import metrics


def test_f1_is_the_positive_class_and_f1_macro_the_mean_of_both():
    # 6 examples: positives predicted 2 of 3 right, one negative predicted positive
    labels = torch.tensor([1, 1, 1, 0, 0, 0])
    predictions = torch.tensor([1, 1, 0, 1, 0, 0])
    positive_f1 = 2 * (2 / 3) * (2 / 3) / (4 / 3)  # precision 2/3, recall 2/3
    negative_f1 = 2 * (2 / 3) * (2 / 3) / (4 / 3)
    assert metrics.f1_positive(predictions, labels, 2).item() == pytest.approx(positive_f1)
    # an imbalanced case where the two differ: every prediction positive
    predictions = torch.ones(6, dtype=torch.long)
    assert metrics.f1_positive(predictions, labels, 2).item() == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert metrics.f1_macro(predictions, labels, 2).item() == pytest.approx((2 * 0.5 / 1.5 + 0.0) / 2)
    assert negative_f1 > 0


def test_f1_refuses_more_than_two_classes():
    with pytest.raises(ValueError, match="use f1_macro"):
        metrics.f1_positive(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]), 3)


def test_matthews_is_one_for_perfect_zero_for_constant_and_minus_one_for_inverted():
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    assert metrics.matthews(labels, labels, 2).item() == pytest.approx(1.0)
    assert metrics.matthews(torch.zeros(6, dtype=torch.long), labels, 2).item() == 0.0
    assert metrics.matthews(1 - labels, labels, 2).item() == pytest.approx(-1.0)


@pytest.mark.parametrize("name", sorted(metrics.CLASSIFICATION))
def test_batched_resamples_equal_one_at_a_time(name):
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (50,), generator=generator)
    predictions = torch.where(torch.rand(50, generator=generator) < 0.8, labels, 1 - labels)
    index = torch.randint(0, 50, (7, 50), generator=generator)
    function = metrics.CLASSIFICATION[name]
    batched = function(predictions[index], labels[index], 2)
    one_by_one = torch.stack([function(predictions[i], labels[i], 2) for i in index])
    assert batched.shape == (7,) and torch.allclose(batched, one_by_one)
