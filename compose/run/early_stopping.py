"""Early stopping for the shared training loop (``early_stopping:`` in the training settings).

After each pass the model is evaluated, with the task's metric, on rows held out of the
training split (``Task.carve``: never trained on); the best pass so far is remembered (its
weights too, with ``restore_best``); after ``patience`` passes without an improvement of
``min_delta`` training stops, within the budget, which stays the cap. As transformers'
``EarlyStoppingCallback``, with the held-out rows taken from the training data so that the
evaluation split the report judges on is never used to choose.
"""

from __future__ import annotations


class EarlyStopping:
    def __init__(self, settings):
        self.settings = settings
        self.history: list[dict] = []
        self.best: float | None = None
        self.best_pass: int | None = None
        self.best_state: dict | None = None
        self.waited = 0
        self.metric: str | None = None
        self.stopped_after: int | None = None

    def after_pass(self, loop) -> bool:
        """Judge the pass ``loop`` just finished; True when training should stop."""
        from compose.evaluation.evaluator import evaluate

        ctx = loop.ctx
        settings = {**ctx.recipe["evaluate"], "split": loop.stop_split, "limit": None}
        result = evaluate(
            loop.model,
            ctx.tokenizer,
            ctx.task,
            settings,
            loop.accelerator.device,
            ctx.progress,
            f"{ctx.name}: early-stopping check after pass {loop.epoch}",
        )
        loop.model.train()
        self.metric = result.metric
        delta = self.settings["min_delta"]
        if self.best is None:
            better = True
        else:
            better = result.value > self.best + delta if result.higher_is_better else result.value < self.best - delta
        self.history.append({"pass": loop.epoch, "step": loop.step, result.metric: result.value})
        if better:
            self.best, self.best_pass, self.waited = result.value, loop.epoch, 0
            if self.settings["restore_best"]:
                model = loop.accelerator.unwrap_model(loop.model)
                self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        else:
            self.waited += 1
        ctx.log(
            f"pass {loop.epoch}: {result.metric} {result.value:.4f} on the held-out rows (best: pass {self.best_pass})"
        )
        if self.waited >= self.settings["patience"] and loop.step < loop.total_steps:
            self.stopped_after = loop.epoch
            ctx.log(f"early stopping after pass {loop.epoch}: no improvement for {self.waited} pass(es)")
            return True
        return False

    def restore(self, model) -> None:
        """Put the best pass's weights back into the trained (unwrapped) model, where another pass was last."""
        last = self.history[-1]["pass"] if self.history else None
        if self.best_state is not None and self.best_pass != last:
            model.load_state_dict(self.best_state)

    def summary(self) -> dict:
        last = self.history[-1]["pass"] if self.history else None
        return {
            "metric": self.metric,
            "history": self.history,
            "best_pass": self.best_pass,
            "stopped_after_pass": self.stopped_after,
            "restored_best": bool(self.best_state is not None and self.best_pass != last),
            **{k: self.settings[k] for k in ("patience", "min_delta", "held_out")},
        }
