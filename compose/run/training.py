"""The shared training loop: every stage that trains (train, distill, third-party) uses it.

It runs through accelerate, so mixed precision, gradient accumulation and
distributed data parallelism come from the ``Accelerator`` the
``compose_training_setup`` hook lets plugins configure.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compose.run import interrupts
from compose.run.budget import planned, unit_of
from compose.run.distributed import gather_objects
from compose.run.early_stopping import EarlyStopping
from compose.run.minutes import MinutesBudget
from compose.run.optimizers import decay_groups, optimizer_for
from compose.run.training_types import TrainingSetup, TrainingStep, TrainingSummary

if TYPE_CHECKING:
    import torch

# torch, the checkpoints and evaluation are imported where training runs: plugins
# import this module's types at load time, and validation must not pay for torch.


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
    _check_declared_training(ctx)
    settings = dict(ctx.settings if settings is None else settings)
    setup = _setup_extensions(ctx, ctx.model if model is None else model, settings)
    loop = _TrainingLoop(ctx, setup, settings, loss_fn or default_loss, list(extra_modules))
    loop.resume()
    loop.train()
    return loop.finish()


def _setup_extensions(ctx, model, settings: dict) -> TrainingSetup:
    """The training extensions' settings (amp, checkpointing, parallel...) and every
    ``compose_training_setup`` hook applied to a fresh ``TrainingSetup``."""
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
    return setup


class _TrainingLoop:
    """One run of the shared loop: accelerate's objects, the position in training, and its steps."""

    def __init__(self, ctx, setup: TrainingSetup, settings: dict, loss_fn: Callable, extra_modules: list):
        self.ctx, self.setup, self.settings, self.loss_fn = ctx, setup, settings, loss_fn
        self.accelerator = fresh_accelerator(**setup.accelerator_kwargs)
        if self.accelerator.device.type != ctx.device.type:  # model, batches and evaluation share one device
            raise RuntimeError(
                f"accelerate placed training on {self.accelerator.device} but the stage computes on "
                f"{ctx.device}; set the device through the executor, not accelerate's config"
            )
        self._prepare(setup.model, extra_modules)
        # where training is
        self.step, self.epoch, self.consumed, self.skip = 0, 0, 0, 0
        self.window, self.last_loss, self.pending, self.random_state = [], None, None, None
        self.real_tokens = self.computed_tokens = 0  # tensors on the device once counting starts (read once at the end)
        self.history = []
        self.judge = EarlyStopping(self.stopping) if self.stopping else None
        host = ctx.plugin_host
        step_hooks = host.hook.compose_training_step_end.get_hookimpls() if host is not None else []
        self.watched = bool(setup.on_step_end or step_hooks)  # someone reads every step's loss
        self.every = settings["checkpoint_every"] if setup.prepare_model and ctx.work_dir is not None else None
        self.folder = Path(ctx.work_dir) / _checkpoint().FOLDER if self.every else None
        self.position = None
        self.start = time.perf_counter()

    def _prepare(self, model, extra_modules: list) -> None:
        """The data loader, optimizer and schedule, prepared by accelerate with the model."""
        ctx, setup, settings, accelerator = self.ctx, self.setup, self.settings, self.accelerator
        self.stopping = settings.get("early_stopping")
        split = settings["split"]
        if self.stopping:  # the rows early stopping judges on are never trained on
            split, self.stop_split = ctx.task.carve(split, self.stopping["held_out"], ctx.seed, "early-stop")
        self.train_split = split
        loader = ctx.task.batches(
            split,
            ctx.tokenizer,
            settings["batch_size"],
            shuffle=True,
            seed=ctx.seed,
            shard=setup.data_shard,
            group_by_length=settings["group_by_length"],
        )
        # Its pass number fixes the order (EpochShuffle, or LengthGroupedBatches when grouping).
        self.sampler = loader.batch_sampler if hasattr(loader.batch_sampler, "epoch") else loader.sampler
        if len(loader) == 0:
            raise ValueError(f"split '{settings['split']}' has no rows to train on")
        optimizer = optimizer_for(settings, decay_groups([model, *extra_modules], settings["weight_decay"]))
        prepared = accelerator.prepare(optimizer, *extra_modules)
        self.optimizer, *self.extra_modules = prepared if extra_modules else (prepared,)
        self.model = accelerator.prepare(model) if setup.prepare_model else model
        self.loader = accelerator.prepare(loader) if setup.data_shard is None else loader
        self.clip = setup.clip_grad_norm or accelerator.clip_grad_norm_
        self.steps_per_epoch = max(1, math.ceil(len(self.loader) / settings["gradient_accumulation_steps"]))
        tokens = ctx.task.tokens_per_pass(split, ctx.tokenizer) if unit_of(settings) != "max_steps" else None
        self.budget = planned(settings, self.steps_per_epoch, tokens)
        self.total_steps = self.budget.steps
        self.minutes = MinutesBudget(self) if self.budget.unit == "minutes" else None
        self.scheduler = accelerator.prepare(self._schedule())
        self.trainable = [p for m in [self.model, *self.extra_modules] for p in m.parameters() if p.requires_grad]

    def _schedule(self):
        """The learning-rate schedule over ``total_steps``. accelerate steps a prepared scheduler once per
        process for every optimizer step (the global batch is num_processes times larger), so it counts so."""
        from transformers import get_scheduler

        settings, scale = self.settings, self.accelerator.num_processes
        return get_scheduler(
            settings["scheduler"] if settings["scheduler"] != "constant" else "constant_with_warmup",
            self.optimizer,
            num_warmup_steps=int(settings["warmup_ratio"] * self.total_steps) * scale,
            num_training_steps=self.total_steps * scale,
        )

    def _unwrapped_extras(self) -> list:
        return [self.accelerator.unwrap_model(m) for m in self.extra_modules]

    def resume(self) -> None:
        """Continue a killed run of this same stage from its last checkpoint, if there is one."""
        checkpoint = _checkpoint()
        self.position = checkpoint.find(self.folder, self.ctx.fingerprint) if self.every else None
        if self.position is None:
            return
        if self.minutes is not None:
            self.minutes.resume()  # the step count it fixed before the kill: the schedule it ran
        self.random_state = checkpoint.restore(
            self.folder,
            self.accelerator.unwrap_model(self.model),
            self._unwrapped_extras(),
            self.optimizer,
            self.scheduler,
        )
        position = self.position
        self.step, self.epoch, self.skip, self.last_loss = (
            position.step,
            position.epoch - 1,
            position.batches_in_epoch,
            position.last_loss,
        )
        self.sampler.epoch = self.epoch  # replay the interrupted pass in the same order
        self.accelerator.step = self.skip  # where gradient accumulation was in that pass
        self.ctx.log(f"resuming from the checkpoint at step {self.step}")

    def train(self) -> None:
        self.model.train()
        with self.ctx.progress.track(f"{self.ctx.name}: training", total=self.total_steps, completed=self.step) as bar:
            while self.step < self.total_steps:
                self.epoch += 1
                self._one_pass(bar)
                if self.stopping and self.judge.after_pass(self):
                    break
                between = self.settings["eval_every_epoch"] and self.setup.evaluate_between_epochs
                if between and self.step < self.total_steps:  # the stage's own evaluation follows the last
                    self._evaluate_epoch()

    def _one_pass(self, bar) -> None:
        """One pass over the training batches, or what is left of it when training ends inside it."""
        self.consumed = 0
        for batch in self.loader:
            self.consumed += 1
            if self.skip:  # batches the checkpointed run had already trained on
                self.skip -= 1
                if not self.skip:  # where the checkpoint was taken: dropout, and what follows, draws as then
                    _checkpoint().set_random_state(self.random_state)
                    self.random_state = None
                continue
            self._forward_backward(batch)
            if not self.accelerator.sync_gradients:
                continue  # accumulating gradients: not an optimizer step yet
            if self._after_step(bar):
                break

    def _forward_backward(self, batch) -> None:
        accelerator, settings = self.accelerator, self.settings
        self.real_tokens, self.computed_tokens = _count_tokens(batch, self.real_tokens, self.computed_tokens)
        with accelerator.accumulate(self.model):
            loss = self.loss_fn(self.model, batch)
            accelerator.backward(loss)
            if accelerator.sync_gradients and settings["max_grad_norm"]:
                self.clip(self.trainable, settings["max_grad_norm"])
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad()
        self.window.append(loss.detach().float())

    def _after_step(self, bar) -> bool:
        """Progress, loss, step callbacks and checkpoints after an optimizer step; True when training is done."""
        import torch

        settings, ctx = self.settings, self.ctx
        self.step += 1
        interrupts.point(f"{ctx.name}/step {self.step}")
        if self.minutes is not None and self.minutes.after_step():
            bar.update(total=self.total_steps)
        # The mean stays on the device: reading it waits for the GPU to finish the step, so
        # it is read only when something needs the number (not on every step).
        self.pending, self.window = torch.stack(self.window).mean(), []
        bar.advance()
        done = self.step >= self.total_steps
        saving = bool(self.every) and self.step % self.every == 0
        if self.watched or self.step % settings["log_every"] == 0 or done or saving:
            self.last_loss, self.pending = self.pending.item(), None
        if self.watched:
            info = TrainingStep(ctx.name, self.step, self.total_steps, self.epoch, self.last_loss, self.model)
            for callback in self.setup.on_step_end:
                callback(info)
            if ctx.plugin_host is not None:
                ctx.plugin_host.hook.compose_training_step_end(step=info)
        if self.step % settings["log_every"] == 0:
            bar.update(description=f"{ctx.name}: training (loss {self.last_loss:.4f})")
        if done:
            return True
        if saving:
            self._save_checkpoint()
        return False

    def _save_checkpoint(self) -> None:
        checkpoint = _checkpoint()
        if self.accelerator.is_main_process:
            position = checkpoint.Position(self.step, self.epoch, self.consumed, self.last_loss)
            checkpoint.save(
                self.folder,
                self.ctx.fingerprint,
                position,
                self.accelerator.unwrap_model(self.model),
                self._unwrapped_extras(),
                self.optimizer,
                self.scheduler,
            )
        self.accelerator.wait_for_everyone()

    def _evaluate_epoch(self) -> None:
        from compose.evaluation.evaluator import evaluate

        ctx = self.ctx
        result = evaluate(
            self.model,
            ctx.tokenizer,
            ctx.task,
            ctx.recipe["evaluate"],
            self.accelerator.device,
            ctx.progress,
            f"{ctx.name}: evaluating epoch {self.epoch}",
        )
        self.history.append({"epoch": self.epoch, "step": self.step, result.metric: result.value})
        if self.pending is not None:
            self.last_loss, self.pending = self.pending.item(), None
        ctx.log(f"epoch {self.epoch}: {result.metric} {result.value:.4f}, loss {self.last_loss:.4f}")

    def finish(self) -> tuple[Any, TrainingSummary]:
        """The trained model, unwrapped and handed through ``on_train_end``, and the summary."""
        accelerator = self.accelerator
        if self.pending is not None:
            self.last_loss = self.pending.item()
        if self.folder is not None and accelerator.is_main_process:
            _checkpoint().remove(self.folder)  # the stage's artifact is the result now
        model = accelerator.unwrap_model(self.model, keep_fp32_wrapper=False)  # no autocast left on forward
        if self.judge is not None:
            self.judge.restore(model)
        for callback in self.setup.on_train_end:
            model = callback(model) or model
        model.eval()
        summary = TrainingSummary(
            self.step,
            round(self.step / self.steps_per_epoch, 3),
            self.last_loss,
            time.perf_counter() - self.start,
            self.history,
            setup=self.setup.notes,
            resumed_from_step=self.position.step if self.position else None,
            tokens={"real": int(self.real_tokens), "computed": int(self.computed_tokens)},
            early_stopping=self.judge.summary() if self.judge is not None else None,
            budget=replace(self.budget, steps=self.step).to_json(),  # what ran (early stopping may end sooner)
        )
        if accelerator.num_processes > 1:  # after on_train_end, every rank holds the whole model
            digests = gather_objects(parameters_digest(model))
            summary.processes = len(digests)
            summary.parameters_in_sync = len(set(digests)) == 1
        return model, summary


def _checkpoint():
    """compose.run.checkpoint, imported when training runs (it imports torch)."""
    from compose.run import checkpoint

    return checkpoint
