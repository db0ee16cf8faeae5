"""The shared training loop: every stage that trains (train, distill, third-party) uses it.

It runs through accelerate, so mixed precision, gradient accumulation and
distributed data parallelism come from the ``Accelerator`` the
``compose_training_setup`` hook lets plugins configure.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from compose.run import interrupts
from compose.run.distributed import gather_objects

if TYPE_CHECKING:
    import torch

# torch, the checkpoints and evaluation are imported where training runs: plugins
# import this module's types at load time, and validation must not pay for torch.


@dataclass
class TrainingSetup:
    """What ``compose_training_setup`` implementations may change before training starts.

    stage:              name of the stage that trains.
    settings:           the training settings (schemas/training.schema.json).
    model:              the model to train; a hook may wrap or replace it.
    accelerator_kwargs: keyword arguments for ``accelerate.Accelerator``.
    on_step_end:        callables ``f(TrainingStep)`` run after every optimizer step.
    on_train_end:       callables ``f(model) -> model | None`` run on the trained
                        (unwrapped) model, e.g. to undo a training-only change; a
                        returned model replaces it (e.g. gathered from shards).
    prepare_model:      False if the hook parallelised the model itself, so that
                        accelerate must not wrap it (no DDP).
    data_shard:         ``(index, count)``: each process reads every count-th batch
                        row from index on, instead of accelerate's split across all
                        processes (tensor parallelism: ranks of a group share data).
    clip_grad_norm:     ``f(parameters, max_norm)`` replacing accelerate's clipping
                        (parameters sharded over several device meshes).
    evaluate_between_epochs: False where evaluation cannot run mid-training.
    notes:              JSON-serialisable facts for the report (``details.training.setup``).
    device:             the torch device the stage computes on.
    announce:           lines the training loop logs as training starts (what a
                        setting chose on this machine, e.g. ``amp: auto -> bf16``).
    """

    stage: str
    settings: dict
    model: Any
    accelerator_kwargs: dict = field(default_factory=dict)
    on_step_end: list = field(default_factory=list)
    on_train_end: list = field(default_factory=list)
    prepare_model: bool = True
    data_shard: tuple | None = None
    clip_grad_norm: Callable | None = None
    evaluate_between_epochs: bool = True
    notes: dict = field(default_factory=dict)
    device: Any = None
    announce: list = field(default_factory=list)


@dataclass(frozen=True)
class TrainingStep:
    stage: str
    step: int
    total_steps: int
    epoch: int
    loss: float
    model: Any


@dataclass
class TrainingSummary:
    steps: int
    epochs: float
    final_loss: float | None
    seconds: float
    history: list = field(default_factory=list)  # per-epoch evaluations
    processes: int = 1
    setup: dict = field(default_factory=dict)  # TrainingSetup.notes
    resumed_from_step: int | None = None  # the in-stage checkpoint this run resumed from
    #: With several processes: whether every rank ended with bit-identical parameters.
    parameters_in_sync: bool | None = None
    #: Tokens this process trained on (resumed runs: since the resume): ``real`` (attention
    #: mask set) and ``computed`` (the padded batches' size), so real/computed is how much of
    #: the work was not padding.
    tokens: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "steps": self.steps,
            "epochs": self.epochs,
            "final_loss": self.final_loss,
            "seconds": round(self.seconds, 3),
            "history": self.history,
            "processes": self.processes,
            "setup": self.setup,
            "resumed_from_step": self.resumed_from_step,
            "parameters_in_sync": self.parameters_in_sync,
            "tokens": self.tokens,
        }


def parameters_digest(model) -> str:
    """A hash of every parameter's bytes (to compare replicas across processes)."""
    import torch

    digest = hashlib.sha256()
    for name, param in sorted(model.state_dict().items()):
        tensor = param.full_tensor() if hasattr(param, "full_tensor") else param
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def default_loss(model, batch):
    return model(**batch).loss


def _decay_groups(modules: Iterable[torch.nn.Module], weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    seen = set()
    for module in modules:
        for name, param in module.named_parameters():
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _optimizer(settings: dict, groups: list[dict]):
    """AdamW (fused into one kernel per step where every parameter is a plain CPU or CUDA tensor:
    MiniLM's 60-step bench ran 1.44x the steps/s, as the per-step update of its 23M parameters,
    most of them the embedding table, dominates short-sequence steps), or SGD with momentum."""
    import torch

    if settings["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=settings["learning_rate"], momentum=0.9)
    params = [p for group in groups for p in group["params"]]
    plain = all(type(p) is torch.nn.Parameter and p.device.type in ("cpu", "cuda") and p.is_floating_point()
                for p in params)  # fmt: skip
    return torch.optim.AdamW(groups, lr=settings["learning_rate"], fused=plain and bool(params))


def fresh_accelerator(**kwargs):
    """An ``accelerate.Accelerator`` that inherits nothing from an earlier one in this process.

    accelerate keeps process-wide state: ``AcceleratorState`` (mixed precision),
    ``PartialState`` (the device, fixed by the first Accelerator: a CPU run first and a
    CUDA run after it in the same process trained on the CPU while its batches were on
    the GPU) and ``GradientState`` (the dataloaders of a run that raised mid-epoch). All
    three start afresh; a process group a launcher set up is kept (PartialState joins it again).
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    return Accelerator(**kwargs)


def _check_declared_training(ctx) -> None:
    """Only a stage type registered with ``trains=True`` may run the shared loop: the
    declaration is what tells users, ``recipe plugins`` and the rules that it trains."""
    host = getattr(ctx, "plugin_host", None)
    stages = getattr(host, "stages", None) or {}
    registered = stages.get(ctx.plugin)
    if registered is not None and not registered.stage.trains:
        raise TypeError(
            f"stage type '{ctx.plugin}' runs the shared training loop (train_model) but was registered with "
            "trains=False; register it with StageType(..., trains=True)"
        )


def _count_tokens(batch: dict, real, computed):
    """Add a batch's real (attention mask set) and computed (padded) token counts; on the device."""
    ids = batch.get("input_ids")
    if ids is None:
        return real, computed
    mask = batch.get("attention_mask")
    return real + (mask.sum() if mask is not None else ids.numel()), computed + ids.numel()


def train_model(
    ctx,
    model=None,
    settings: dict | None = None,
    *,
    loss_fn: Callable | None = None,
    extra_modules: Iterable[torch.nn.Module] = (),
) -> tuple[Any, TrainingSummary]:
    """Train ``model`` (default ``ctx.model``) on ``settings['split']`` with the shared loop.

    ``settings`` follows schemas/training.schema.json (default: ``ctx.settings``).
    ``loss_fn(model, batch) -> loss`` replaces the model's own loss (distillation
    passes one that also calls the teacher). ``extra_modules`` are trained along
    with the model (e.g. projection layers of a loss). Returns the trained model
    (unwrapped from any distributed wrapper) and a ``TrainingSummary``.
    """
    import torch
    from transformers import get_scheduler

    from compose.run import checkpoint
    from compose.evaluation.evaluator import evaluate

    _check_declared_training(ctx)
    model = ctx.model if model is None else model
    settings = dict(ctx.settings if settings is None else settings)
    loss_fn = loss_fn or default_loss
    extra_modules = list(extra_modules)

    setup = TrainingSetup(
        stage=ctx.name,
        settings=settings,
        model=model,
        device=ctx.device,
        accelerator_kwargs={
            "cpu": ctx.device.type == "cpu",
            "gradient_accumulation_steps": settings["gradient_accumulation_steps"],
        },
    )
    if ctx.plugin_host is not None:
        for name, registered in ctx.plugin_host.training_extensions.items():
            value = settings.get(name, registered.extension.schema["default"])
            if value != registered.extension.schema["default"]:
                registered.extension.setup(setup, value)
        ctx.plugin_host.hook.compose_training_setup(setup=setup)
    for line in setup.announce:
        ctx.log(line)
    model = setup.model
    accelerator = fresh_accelerator(**setup.accelerator_kwargs)
    if accelerator.device.type != ctx.device.type:  # model, batches and evaluation share one device
        raise RuntimeError(f"accelerate placed training on {accelerator.device} but the stage computes on "
                           f"{ctx.device}; set the device through the executor, not accelerate's config")  # fmt: skip

    loader = ctx.task.batches(settings["split"], ctx.tokenizer, settings["batch_size"], shuffle=True, seed=ctx.seed,
                              shard=setup.data_shard, group_by_length=settings["group_by_length"])  # fmt: skip
    # Its pass number fixes the order (EpochShuffle, or LengthGroupedBatches when grouping).
    sampler = loader.batch_sampler if hasattr(loader.batch_sampler, "epoch") else loader.sampler
    if len(loader) == 0:
        raise ValueError(f"split '{settings['split']}' has no rows to train on")
    optimizer = _optimizer(settings, _decay_groups([model, *extra_modules], settings["weight_decay"]))
    prepared = accelerator.prepare(optimizer, *extra_modules)
    optimizer, *extra_modules = prepared if extra_modules else (prepared,)
    if setup.prepare_model:
        model = accelerator.prepare(model)
    if setup.data_shard is None:
        loader = accelerator.prepare(loader)
    clip = setup.clip_grad_norm or accelerator.clip_grad_norm_
    steps_per_epoch = max(1, math.ceil(len(loader) / settings["gradient_accumulation_steps"]))
    total_steps = settings["max_steps"] or max(1, math.ceil(settings["epochs"] * steps_per_epoch))
    # accelerate steps a prepared scheduler once per process for every optimizer step
    # (the global batch is num_processes times larger), so the schedule is counted that way.
    scale = accelerator.num_processes
    scheduler = get_scheduler(
        settings["scheduler"] if settings["scheduler"] != "constant" else "constant_with_warmup",
        optimizer,
        num_warmup_steps=int(settings["warmup_ratio"] * total_steps) * scale,
        num_training_steps=total_steps * scale,
    )
    scheduler = accelerator.prepare(scheduler)
    trainable = [p for m in [model, *extra_modules] for p in m.parameters() if p.requires_grad]

    start = time.perf_counter()
    step, epoch, window, last_loss, pending = 0, 0, [], None, None
    real_tokens = computed_tokens = 0  # tensors on the device once counting starts (read once at the end)
    host = ctx.plugin_host
    step_hooks = host.hook.compose_training_step_end.get_hookimpls() if host is not None else []
    watched = bool(setup.on_step_end or step_hooks)  # someone reads every step's loss
    history = []
    every = settings["checkpoint_every"] if setup.prepare_model and ctx.work_dir is not None else None
    folder = Path(ctx.work_dir) / checkpoint.FOLDER if every else None
    position = checkpoint.find(folder, ctx.fingerprint) if every else None
    skip, random_state = 0, None
    if position is not None:  # resume a killed run of this same stage
        random_state = checkpoint.restore(folder, accelerator.unwrap_model(model), [accelerator.unwrap_model(m) for m in extra_modules],
                           optimizer, scheduler)  # fmt: skip
        step, epoch, skip, last_loss = position.step, position.epoch - 1, position.batches_in_epoch, position.last_loss
        sampler.epoch = epoch  # replay the interrupted pass in the same order
        accelerator.step = skip  # where gradient accumulation was in that pass
        ctx.log(f"resuming from the checkpoint at step {step}")
    model.train()
    with ctx.progress.track(f"{ctx.name}: training", total=total_steps, completed=step) as bar:
        while step < total_steps:
            epoch += 1
            consumed = 0
            for batch in loader:
                consumed += 1
                if skip:  # batches the checkpointed run had already trained on
                    skip -= 1
                    if not skip:  # where the checkpoint was taken: dropout, and what follows, draws as then
                        checkpoint.set_random_state(random_state)
                        random_state = None
                    continue
                real_tokens, computed_tokens = _count_tokens(batch, real_tokens, computed_tokens)
                with accelerator.accumulate(model):
                    loss = loss_fn(model, batch)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and settings["max_grad_norm"]:
                        clip(trainable, settings["max_grad_norm"])
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                window.append(loss.detach().float())
                if not accelerator.sync_gradients:
                    continue
                step += 1
                interrupts.point(f"{ctx.name}/step {step}")
                # The mean stays on the device: reading it waits for the GPU to finish the step, so
                # it is read only when something needs the number (not on every step).
                pending = torch.stack(window).mean()
                window = []
                bar.advance()
                wanted = watched or step % settings["log_every"] == 0 or step >= total_steps
                if wanted or (every and step % every == 0):
                    last_loss, pending = pending.item(), None
                if watched:
                    info = TrainingStep(ctx.name, step, total_steps, epoch, last_loss, model)
                    for callback in setup.on_step_end:
                        callback(info)
                    if ctx.plugin_host is not None:
                        ctx.plugin_host.hook.compose_training_step_end(step=info)
                if step % settings["log_every"] == 0:
                    bar.update(description=f"{ctx.name}: training (loss {last_loss:.4f})")
                if step >= total_steps:
                    break
                if every and step % every == 0:
                    if accelerator.is_main_process:
                        checkpoint.save(folder, ctx.fingerprint, checkpoint.Position(step, epoch, consumed, last_loss),
                                        accelerator.unwrap_model(model),
                                        [accelerator.unwrap_model(m) for m in extra_modules], optimizer, scheduler)  # fmt: skip
                    accelerator.wait_for_everyone()
            between = settings["eval_every_epoch"] and setup.evaluate_between_epochs
            if between and step < total_steps:  # the stage's own evaluation follows the last
                result = evaluate(model, ctx.tokenizer, ctx.task, ctx.recipe["evaluate"], accelerator.device,
                                  ctx.progress, f"{ctx.name}: evaluating epoch {epoch}")  # fmt: skip
                history.append({"epoch": epoch, "step": step, result.metric: result.value})
                if pending is not None:
                    last_loss, pending = pending.item(), None
                ctx.log(f"epoch {epoch}: {result.metric} {result.value:.4f}, loss {last_loss:.4f}")
    if pending is not None:
        last_loss = pending.item()
    if folder is not None and accelerator.is_main_process:
        checkpoint.remove(folder)  # the stage's artifact is the result now
    model = accelerator.unwrap_model(model, keep_fp32_wrapper=False)  # no autocast left on forward
    for callback in setup.on_train_end:
        model = callback(model) or model
    model.eval()
    epochs_done = step / steps_per_epoch
    summary = TrainingSummary(step, round(epochs_done, 3), last_loss, time.perf_counter() - start, history,
                              setup=setup.notes, resumed_from_step=position.step if position else None,
                              tokens={"real": int(real_tokens), "computed": int(computed_tokens)})  # fmt: skip
    if accelerator.num_processes > 1:  # after on_train_end, every rank holds the whole model
        digests = gather_objects(parameters_digest(model))
        summary.processes = len(digests)
        summary.parameters_in_sync = len(set(digests)) == 1
    return model, summary
