"""compose.recipe.task_kinds: the metrics of each task kind, read without torch."""

from compose.recipe.task_kinds import METRICS, TASK_METRICS, metric_names


def test_every_kinds_metrics_are_known_and_the_default_comes_first():
    for kind, names in TASK_METRICS.items():
        assert names and all(name in METRICS for name in names), kind
    assert TASK_METRICS["causal-lm"][0] == "perplexity" and not METRICS["perplexity"].higher_is_better


def test_binary_only_metrics_go_for_three_classes():
    two = {"kind": "sequence-classification", "labels": ["neg", "pos"]}
    three = {"kind": "sequence-classification", "labels": ["a", "b", "c"]}
    assert "f1" in metric_names(two) and "f1" not in metric_names(three)
    assert "matthews" in metric_names(three)
