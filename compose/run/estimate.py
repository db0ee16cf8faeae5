"""How long each stage will take on this machine, estimated before anything runs (``recipe plan --time``).

One short calibration measures the recipe's own model: a few real training steps through the
shared loop (its mixed precision and extensions, batches of the data's real lengths) and an
evaluation forward pass. Each stage's time is then its training steps (``data_plan``) times
that step time, scaled by the stage's batch size and by what the stages before it left (a
3-layer student steps faster than its 6-layer teacher): stage types say so with
``StageType.cost`` (``compose.api.StageCost``). Plus its evaluation, a forward pass over the
evaluation split. Setup, calibration of pruning, exports and latency measurements are not
estimated (seconds on a small model).
"""

from __future__ import annotations

import copy
import math
import time

from compose import hookimpl

#: Steps of a calibration run: the first WARM warm up; the median time between the next TIMED is a step's.
WARM, TIMED = 3, 10


def _context(recipe, host, task, tokenizer, model, stage, settings):
    import torch

    from compose.progress import Progress
    from compose.stage import StageContext

    return StageContext(
        name=f"{stage['name']} (calibration)",
        plugin=stage["uses"],
        settings=settings,
        model=model,
        tokenizer=tokenizer,
        task=task,
        family=recipe.family,
        work_dir=None,
        seed=recipe.data["seed"],
        device=torch.device("cpu"),
        progress=Progress(enabled=False),
        recipe=recipe.data,
        plugin_host=host,
    )


class _StepClock:
    """A plugin, registered only while calibrating, that notes when each optimizer step ends."""

    def __init__(self):
        self.ends: list[float] = []

    @hookimpl
    def compose_training_step_end(self, step):
        self.ends.append(time.perf_counter())


def _per_step(recipe, host, task, tokenizer, model, stage, block, batch_size: int) -> tuple[float, float, float]:
    """(seconds, padded tokens, real tokens) of one training step at ``batch_size``: the median time between
    steps after ``WARM`` warm-up steps, through the real loop (its precision and extensions)."""
    import statistics

    from compose.plugin_host import PluginInfo
    from compose.run.training import train_model

    settings = {
        **block,
        "batch_size": batch_size,
        "max_steps": WARM + TIMED,
        "tokens": None,
        "minutes": None,
        "early_stopping": None,
        "group_by_length": False,  # random batches: a length-grouped pass starts with its longest
        "eval_every_epoch": False,
        "checkpoint_every": None,
    }
    clock = _StepClock()
    name = f"calibration-clock-{id(clock)}"
    host.register(clock, PluginInfo(name=name, package="recipe-compose", version="", module=__name__))
    try:
        ctx = _context(recipe, host, task, tokenizer, copy.deepcopy(model), stage, settings)
        _, summary = train_model(ctx, settings=settings)
    finally:
        host.unregister(name)
    gaps = [later - earlier for earlier, later in zip(clock.ends[WARM - 1 :], clock.ends[WARM:])]
    steps = max(1, summary.steps)
    return statistics.median(gaps), summary.tokens["computed"] / steps, summary.tokens["real"] / steps


def calibrate(recipe, host, task, tokenizer, stage, block) -> dict:
    """A training step's time on this machine as ``fixed + per_token x tokens`` (the optimizer's step costs the
    same for any batch; the forward and backward passes grow with the tokens), from steps of the recipe's own
    model at two batch sizes through the shared loop (``block``: the first training stage's settings); and the
    time of an evaluation batch."""
    import torch

    from compose.evaluation.evaluator import evaluate
    from compose.run.modeling import load_model

    model = load_model(recipe.data["model"], task, tokenizer=tokenizer)
    large, small = block["batch_size"], max(1, block["batch_size"] // 4)
    (t_large, c_large, r_large), (t_small, c_small, _) = (
        _per_step(recipe, host, task, tokenizer, model, stage, block, size) for size in (large, small)
    )
    per_token = max(0.0, (t_large - t_small) / max(1.0, c_large - c_small))
    fixed = max(0.0, t_large - per_token * c_large)
    evaluation = recipe.data["evaluate"]
    evaluate(model, tokenizer, task, {**evaluation, "limit": evaluation["batch_size"]}, torch.device("cpu"))  # warm-up
    started = time.perf_counter()
    result = evaluate(
        model, tokenizer, task, {**evaluation, "limit": 4 * evaluation["batch_size"]}, torch.device("cpu")
    )
    per_batch = (time.perf_counter() - started) / max(1, math.ceil(result.examples / evaluation["batch_size"]))
    single = _single_example_seconds(model, tokenizer, task, evaluation["split"])
    save = _save_seconds(model, tokenizer, task)
    return {
        "fixed_seconds": round(fixed, 4),
        "seconds_per_token": per_token,
        "padding": round(c_large / max(1.0, r_large), 3),  # padded tokens per real token of a random batch
        "step_seconds": round(t_large, 4),
        "batch_size": large,
        "eval_batch_seconds": round(per_batch, 4),
        "single_example_seconds": round(single, 5),
        "save_seconds": round(save, 3),
    }


def _save_seconds(model, tokenizer, task) -> float:
    """Saving the recipe's model as a stage saves its artifact (every stage does once)."""
    import tempfile
    from pathlib import Path

    from compose.run.artifacts import save_artifact

    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        save_artifact(model, tokenizer, Path(folder) / "model", task.kind)
        return time.perf_counter() - started


def _single_example_seconds(model, tokenizer, task, split: str) -> float:
    """A batch-1 forward pass of the recipe's model (what latency measurements time, 50 of them a stage)."""
    import torch

    batches = iter(task.batches(split, tokenizer, 1))
    first = next(batches)
    with torch.no_grad():
        model.eval()(**{k: v for k, v in first.items() if k != "labels"})
        started, count = time.perf_counter(), 0
        for batch in batches:
            model(**{k: v for k, v in batch.items() if k != "labels"})
            count += 1
            if count == 8:
                break
    return (time.perf_counter() - started) / max(1, count)


#: Padded tokens per real token in a length-grouped pass (batches of similar lengths pad little).
GROUPED_PADDING = 1.05


def token_seconds(calibration: dict, block: dict) -> float:
    """The part of a training step of the recipe's model that grows with ``block``'s batches' tokens."""
    real = (block["tokens_per_pass"] or 0) / max(1, block["steps_per_pass"])
    padding = GROUPED_PADDING if block.get("group_by_length", True) else calibration["padding"]
    return calibration["seconds_per_token"] * real * padding


def step_seconds(calibration: dict, block: dict) -> float:
    """A training step of the recipe's model with ``block``'s batches (``data_plan``'s budget row)."""
    return calibration["fixed_seconds"] + token_seconds(calibration, block)


def estimate(recipe, host, task, training: list[dict], calibration: dict) -> list[dict]:
    """Per stage: estimated seconds of training and of its evaluation. ``training``: ``data_plan``'s budgets."""
    from compose.recipe.model_source import model_config_dict

    evaluation = recipe.data["evaluate"]
    eval_batches = math.ceil(len(task.rows(evaluation["split"])) / evaluation["batch_size"])
    latency = evaluation["latency"]
    measuring = 0.0
    if latency["enabled"]:  # batch-1 examples and full batches, as the evaluation's forward passes
        measuring = (
            latency["batch1_samples"] * calibration["single_example_seconds"]
            + (latency["throughput_batches"] * calibration["eval_batch_seconds"] * latency["throughput_batch_size"])
            / evaluation["batch_size"]
        )
    per_token_step = calibration["step_seconds"] / calibration["batch_size"]  # a forward and backward, per example
    config = model_config_dict(recipe.data["model"]) or {}
    factor = 1.0  # compute of the model entering the stage, relative to the recipe's model
    parameters = 1.0  # its parameters, likewise
    found = []
    for stage, stage_type in zip(recipe.stages, recipe.stage_types):
        cost = stage_type.cost(stage["with"], config) if stage_type.cost is not None else None
        step = cost.step if cost is not None else 1.0
        blocks = [b for b in training if b["stage"] == stage["name"]]
        # the model this stage trains is the one it leaves (a student, a pruned model): its parameters set an
        # optimizer step's fixed part; the tokens cost what the entering model's compute, times ``step``, costs
        trained = parameters * (cost.leaves_parameters if cost is not None else 1.0)
        train = sum(
            b["steps"] * (calibration["fixed_seconds"] * trained + token_seconds(calibration, b) * factor * step)
            for b in blocks
        )
        if cost is not None:
            train += cost.extra_passes * cost.extra_batch_size * per_token_step * factor * (2 / 3)  # no optimizer step
            factor *= cost.leaves
        parameters = trained
        seconds = (
            train
            + (eval_batches * calibration["eval_batch_seconds"] + measuring) * factor
            + calibration.get("save_seconds", 0.0) * parameters
        )
        found.append({"stage": stage["name"], "training_seconds": round(train, 3), "seconds": round(seconds, 3)})
    return found
