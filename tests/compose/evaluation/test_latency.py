"""Serving speed: batch-1 latency percentiles and throughput of real tiny models, at a stated thread count."""

import json

import pytest
import torch

from compose.cli.main import main
from compose.evaluation.evaluator import evaluate
from compose.evaluation.latency import measure_latency, percentile
from compose.recipe.load import load_recipe
from compose.tasks import build_task

FEW = {
    "enabled": True,
    "threads": 1,
    "batch1_samples": 6,
    "throughput_batch_size": 16,
    "throughput_batches": 2,
    "warmup": 1,
}
TRAIN = "- {name: ft, uses: train, with: {max_steps: 4, batch_size: 16, learning_rate: 3.0e-3}}\n"


def task_for(write_recipe, host, family="encoder"):
    recipe = load_recipe(write_recipe(TRAIN, family=family), host=host)
    return build_task(recipe.data["task"], recipe.data["seed"])


def test_percentile_interpolates_between_order_statistics():
    assert percentile([3.0], 95) == 3.0
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile(list(map(float, range(101))), 95) == 95.0
    assert percentile([1.0, 2.0], 95) == pytest.approx(1.95)


@pytest.mark.parametrize("family", ["encoder", "decoder", "encoder-decoder"])
def test_every_family_gets_positive_numbers_at_the_stated_thread_count(write_recipe, host, family, request):
    fixture = {"encoder": "tiny_bert", "decoder": "tiny_llama", "encoder-decoder": "tiny_t5"}[family]
    model, tokenizer = request.getfixturevalue(fixture)
    task = task_for(write_recipe, host, family)
    before = torch.get_num_threads()
    latency = measure_latency(model, tokenizer, task, "dev", FEW, torch.device("cpu"))
    assert latency.threads == 1 and torch.get_num_threads() == before  # set for the measurement only
    assert 0 < latency.batch1_p50_ms <= latency.batch1_p95_ms
    assert latency.batch1_samples == 6 and latency.throughput_batches == 2
    assert latency.throughput_per_s > 0 and latency.batch_size == 16
    assert json.loads(json.dumps(latency.to_json()))["batch1_p95_ms"] == latency.batch1_p95_ms


def test_any_object_the_task_predicts_with_is_measured_and_threads_apply_inside(tiny_bert, write_recipe, host):
    """Not a torch module (as an ONNX Runtime session wrapped for the task is not): only task.predict calls it."""
    model, tokenizer = tiny_bert
    seen_threads, sizes = set(), []

    class Served:  # no eval(), no parameters(): a callable that answers like the model
        def __call__(self, **inputs):
            seen_threads.add(torch.get_num_threads())
            sizes.append(len(inputs["input_ids"]))
            return model(**inputs)

    settings = {**FEW, "throughput_batch_size": 100}  # the dev split has 64 rows: one batch of 64
    latency = measure_latency(
        Served(), tokenizer, task_for(write_recipe, host), "dev", settings, torch.device("cpu"), threads=1
    )
    assert seen_threads == {1}
    assert latency.batch_size == 64 and latency.throughput_batches == 2  # the one batch, timed twice
    assert sizes.count(1) == 1 + 6 and sizes.count(64) == 1 + 2  # warm-up + timed calls, no labels needed
    assert latency.throughput_per_s > 0
    task = task_for(write_recipe, host)  # evaluation calls it the same way
    settings = {"split": "dev", "batch_size": 32, "latency_batches": 1}
    served = evaluate(Served(), tokenizer, task, settings, torch.device("cpu"))
    assert served.value == evaluate(model, tokenizer, task, settings, torch.device("cpu")).value


def test_a_run_reports_speed_per_stage_and_a_resumed_run_keeps_it(write_recipe, tmp_path, capsys):
    recipe = write_recipe(TRAIN)
    out = tmp_path / "run"
    overrides = [
        "evaluate.latency.threads=1",
        "evaluate.latency.batch1_samples=4",
        "evaluate.latency.throughput_batches=2",
    ]
    assert main(["apply", str(recipe), *overrides, "--output", str(out), "-q"]) == 0
    capsys.readouterr()
    report = json.loads((out / "report.json").read_text())
    for stage in report["stages"]:
        latency = stage["latency"]
        assert latency["threads"] == 1 and latency["batch1_samples"] == 4 and latency["batch_size"] == 64
        assert 0 < latency["batch1_p50_ms"] <= latency["batch1_p95_ms"] and latency["throughput_per_s"] > 0
    ft = report["stages"][1]
    assert report["baseline"]["stage"] == "ft" and ft["speedup"] == 1.0 and ft["size_ratio"] == 1.0
    assert report["stages"][0]["speedup"] > 0
    assert main(["apply", str(recipe), *overrides, "--output", str(out), "-q"]) == 0
    again = json.loads((out / "report.json").read_text())
    assert again["reused_stages"] == ["input", "ft"]
    assert [s["latency"] for s in again["stages"]] == [s["latency"] for s in report["stages"]]
    # other latency settings are another evaluation: every stage is measured again, none retrained
    assert main(["apply", str(recipe), "evaluate.latency.threads=2", *overrides[1:], "--output", str(out), "-q"]) == 0
    third = json.loads((out / "report.json").read_text())
    assert third["remeasured_stages"] == ["input", "ft"] and {s["latency"]["threads"] for s in third["stages"]} == {2}
    assert third["stages"][1]["details"] == report["stages"][1]["details"]  # the training that ran the first time


def test_latency_can_be_switched_off(write_recipe, tmp_path):
    out = tmp_path / "run"
    assert main(["apply", str(write_recipe(TRAIN)), "evaluate.latency.enabled=false", "--output", str(out), "-q"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert all(s["latency"] is None and s["speedup"] is None for s in report["stages"])
    assert report["stages"][1]["size_ratio"] == 1.0
