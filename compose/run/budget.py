"""How long a training stage trains: a budget in the unit that carries to other data.

A recipe gives one of ``epochs`` (passes over the split, fractions allowed: the default),
``tokens`` (the split's rows as tokenized, after ``max_length``, padding not counted),
``minutes`` (on this machine: the first steps are timed and the step count fixed from
them) or ``max_steps`` (optimizer steps: means something else on every dataset and batch
size). ``max_steps`` wins over ``tokens``, ``tokens`` over ``minutes``, ``minutes`` over
``epochs``; validation refuses more than one of the first three (``budget_problems``).
Whatever the unit, the stage's details record the steps, passes and tokens it ran.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: The budget keys of the shared training settings, strongest first; ``epochs`` is the default and the cap.
UNITS = ("max_steps", "tokens", "minutes")
#: Steps timed to turn a minutes budget into steps (the first two, warming up, are not counted).
TIMED_STEPS = 10


def unit_of(settings) -> str:
    """Which budget a training settings block uses."""
    return next((unit for unit in UNITS if settings.get(unit) is not None), "epochs")


def budget_problems(settings) -> list[str]:
    """What is wrong with a training block's budget (more than one unit given)."""
    given = [unit for unit in UNITS if settings.get(unit) is not None]
    if len(given) > 1:
        return [
            f"give one training budget, not {' and '.join(given)}: {given[0]} would win and "
            f"{', '.join(given[1:])} would be ignored (epochs stays the cap of a minutes budget); remove all but one (on the command line: ~key.path)"
        ]
    return []


def describe_length(settings) -> str:
    """A training block's budget in the recipe's own unit, for ``describe``: "2 passes", "800 steps"..."""
    unit = unit_of(settings)
    if unit == "max_steps":
        return f"{settings['max_steps']:,} steps"
    if unit == "tokens":
        return f"{settings['tokens']:,.0f} tokens"
    if unit == "minutes":
        return f"about {settings['minutes']:g} minutes (at most {settings['epochs']:g} passes)"
    return f"{settings['epochs']:g} pass{'' if settings['epochs'] == 1 else 'es'}"


@dataclass
class Budget:
    """A stage's training length: its unit, the optimizer steps, and what a pass over the split is."""

    unit: str
    steps: int
    steps_per_pass: int
    tokens_per_pass: int | None = None
    decided_after: int | None = None  # minutes: the steps timed before the count was fixed

    @property
    def passes(self) -> float:
        return self.steps / self.steps_per_pass

    @property
    def tokens(self) -> int | None:
        return round(self.passes * self.tokens_per_pass) if self.tokens_per_pass is not None else None

    def to_json(self) -> dict:
        return {
            "unit": self.unit,
            "steps": self.steps,
            "passes": round(self.passes, 3),
            "tokens": self.tokens,
            "steps_per_pass": self.steps_per_pass,
            "tokens_per_pass": self.tokens_per_pass,
            **({"decided_after_steps": self.decided_after} if self.decided_after is not None else {}),
        }

    def describe(self) -> str:
        tokens = f", {self.tokens:,} tokens" if self.tokens is not None else ""
        return f"{self.steps:,} steps ({self.passes:.2f} passes{tokens}; budget in {self.unit})"


def planned(settings, steps_per_pass: int, tokens_per_pass: int | None) -> Budget:
    """The budget as far as it is known before training: for ``minutes``, the ``epochs`` cap (the steps are
    decided after ``TIMED_STEPS`` timed steps, ``after_timing``)."""
    unit = unit_of(settings)
    cap = max(1, math.ceil(settings["epochs"] * steps_per_pass))
    if unit == "max_steps":
        steps = int(settings["max_steps"])
    elif unit == "tokens":
        if not tokens_per_pass:
            raise ValueError(f"a tokens budget needs the split's token count, and split '{settings['split']}' has none")
        steps = max(1, math.ceil(settings["tokens"] / tokens_per_pass * steps_per_pass))
    else:
        steps = cap
    return Budget(unit, steps, steps_per_pass, tokens_per_pass)


def after_timing(
    budget: Budget, minutes: float, seconds: float, steps_done: int, timed_seconds: float, timed_steps: int
) -> Budget:
    """A minutes budget's steps, from the time training took so far (``seconds`` for ``steps_done`` steps)
    and the steady step time (``timed_seconds`` for ``timed_steps``): what fits in the rest, within the
    epochs cap, at least the steps done."""
    per_step = timed_seconds / max(1, timed_steps)
    left = max(0.0, minutes * 60 - seconds)
    steps = min(budget.steps, steps_done + int(left / per_step)) if per_step > 0 else budget.steps
    return Budget(budget.unit, max(steps_done, 1, steps), budget.steps_per_pass, budget.tokens_per_pass, steps_done)
