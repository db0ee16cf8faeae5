"""A ``minutes`` training budget inside the shared loop: time the first steps, fix the count, keep it.

After ``TIMED_STEPS`` steps (the first two warm up and are not timed) the step count is fixed
from their time (``budget.after_timing``, within the epochs cap), the learning-rate schedule is
made anew over that count and advanced to the steps taken, and the count is written into the
stage's work folder so that a resumed run keeps it. With several processes rank 0's timing
decides for every rank.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from compose import atomic
from compose.run.budget import TIMED_STEPS, Budget, after_timing

#: In a training stage's work folder: the step count a minutes budget fixed (a resumed run keeps it).
BUDGET_FILE = "training-budget.json"


class MinutesBudget:
    def __init__(self, loop):
        self.loop = loop
        self.timing_from = time.perf_counter()

    def after_step(self) -> bool:
        """Called after each optimizer step; True when it fixed the step count (``loop.total_steps`` changed)."""
        loop = self.loop
        if loop.budget.decided_after is not None:
            return False
        if loop.step == 2:
            self.timing_from = time.perf_counter()  # the first steps warm up: not timed
            return False
        if loop.step > 2 and loop.step >= min(TIMED_STEPS, loop.total_steps):
            self._decide()
            return True
        return False

    def _decision(self) -> Budget:
        loop = self.loop
        now = time.perf_counter()
        return after_timing(
            loop.budget, loop.settings["minutes"], now - loop.start, loop.step, now - self.timing_from, loop.step - 2
        )

    def _decide(self) -> None:
        import torch

        loop = self.loop
        decided = [self._decision()]
        if loop.accelerator.num_processes > 1 and torch.distributed.is_initialized():
            torch.distributed.broadcast_object_list(decided, src=0)  # every rank stops at the same step
        self._use(decided[0], advance=True)
        if loop.ctx.work_dir is not None:
            atomic.write_json(
                Path(loop.ctx.work_dir) / BUDGET_FILE, {"fingerprint": loop.ctx.fingerprint, **decided[0].to_json()}
            )
        loop.ctx.log(f"{loop.settings['minutes']} minutes on this machine: {decided[0].describe()}")

    def _use(self, budget: Budget, advance: bool) -> None:
        """Train for ``budget``'s steps: a new schedule over them (advanced to the steps already taken)."""
        loop = self.loop
        loop.budget, loop.total_steps = budget, budget.steps
        schedule = loop._schedule()
        for _ in range(loop.step * loop.accelerator.num_processes if advance else 0):
            schedule.step()
        loop.scheduler.scheduler = schedule  # accelerate's wrapper steps the new schedule from here on

    def resume(self) -> None:
        """Before a checkpoint's schedule is restored: the step count fixed before the kill, if one was."""
        loop = self.loop
        if loop.ctx.work_dir is None:
            return
        try:
            saved = json.loads((Path(loop.ctx.work_dir) / BUDGET_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if saved.get("fingerprint") == loop.ctx.fingerprint:
            budget = loop.budget
            self._use(
                Budget(
                    "minutes",
                    saved["steps"],
                    budget.steps_per_pass,
                    budget.tokens_per_pass,
                    saved.get("decided_after_steps"),
                ),
                advance=False,
            )
