"""A recipe's search space: the settings `recipe tune` may change, as overrides of the recipe.

Each entry of ``search.space`` is a recipe path as ``recipe apply`` overrides spell it
(``stages.prune-ffn.with.ratio``) with a range or a list of choices, or a stage a trial
may leave out (``optional: true``). A trial's parameters become overrides
(``stages.prune-ffn.with.ratio=0.55``, ``~stages.distill``) applied to the recipe, so a
trial is an ordinary recipe and runs through the same executor as ``recipe apply``.

Validation (``check_search``) tries every edge of the space before anything runs: the
ends of each range and every choice are applied to the recipe one at a time, and what
the recipe's own validation would refuse (an unknown path, a value a stage's schema
refuses, an order a left-out stage breaks) is reported at the line of its space entry.
Nothing here imports torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compose.errors import Problem, RecipeError
from compose.recipe.composition import CompositionError, apply_overrides


@dataclass(frozen=True)
class Dimension:
    """One entry of the space: where it applies (``path``) and what values it takes."""

    path: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple | None = None
    optional: bool = False

    @property
    def integer(self) -> bool:
        return all(isinstance(v, int) and not isinstance(v, bool) for v in (self.low, self.high, self.step or 1))

    def suggest(self, trial) -> Any:
        """The value an Optuna trial picks for this dimension (named by its path)."""
        if self.optional:
            return trial.suggest_categorical(self.path, [True, False])
        if self.choices is not None:
            # Optuna's categorical values must be plain scalars: lists and maps travel as JSON text.
            picked = trial.suggest_categorical(self.path, [_as_choice(c) for c in self.choices])
            return choice_value(picked)
        if self.integer:
            return trial.suggest_int(self.path, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        value = trial.suggest_float(self.path, float(self.low), float(self.high), step=self.step, log=self.log)
        return round(value, 10)  # 0.6000000000000001 (low + k * step in floating point) as written: 0.6

    def edges(self) -> list:
        """The values validation tries: both ends of a range, every choice, leaving an optional stage out."""
        if self.optional:
            return [False]
        if self.choices is not None:
            return list(self.choices)
        return [self.low, self.high]

    def override(self, value) -> str:
        """The ``recipe apply`` override that sets this dimension to ``value``."""
        if self.optional:
            return "" if value else f"~{self.path}"  # kept: nothing to override
        return f"{self.path}={json.dumps(value)}"

    def describe(self) -> str:
        if self.optional:
            return f"{self.path}: kept or left out"
        if self.choices is not None:
            return f"{self.path}: one of {', '.join(json.dumps(c) for c in self.choices)}"
        scale = ", log scale" if self.log else ""
        step = f", step {self.step}" if self.step else ""
        return f"{self.path}: {self.low} to {self.high}{step}{scale}"


def _as_choice(value):
    return value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value)


def choice_value(value):
    """A categorical value as Optuna stores it (lists and maps as JSON text) as the value it stands for."""
    if isinstance(value, str) and value[:1] in "[{":
        return json.loads(value)
    return value


def dimensions(search: dict) -> list[Dimension]:
    """The space of a (schema-valid) ``search`` section."""
    return [
        Dimension(
            path=entry["path"],
            low=entry.get("low"),
            high=entry.get("high"),
            step=entry.get("step"),
            log=bool(entry.get("log", False)),
            choices=tuple(entry["choices"]) if "choices" in entry else None,
            optional=bool(entry.get("optional", False)),
        )
        for entry in search["space"]
    ]


def trial_overrides(space: list[Dimension], params: dict) -> list[str]:
    """The overrides that make the recipe one trial's recipe."""
    found = []
    for dimension in space:
        if dimension.path in params:
            text = dimension.override(params[dimension.path])
            if text:
                found.append(text)
    # a left-out stage first: paths inside it then no longer apply (they are skipped below)
    removed = [o[1:] for o in found if o.startswith("~")]
    return [o for o in found if o.startswith("~") or not any(o.startswith(r + ".") for r in removed)]


def _shape_problems(entry: dict) -> str | None:
    """What is wrong with an entry's form (the schema cannot say it), or None."""
    ranged = "low" in entry or "high" in entry
    kinds = sum((ranged, "choices" in entry, bool(entry.get("optional"))))
    if kinds != 1:
        return "give a range (low and high), a list of choices, or optional: true (one of them)"
    if ranged:
        if "low" not in entry or "high" not in entry:
            return "a range needs both low and high"
        if entry["low"] >= entry["high"]:
            return f"low ({entry['low']}) must be below high ({entry['high']})"
        if entry.get("log") and entry["low"] <= 0:
            return "a log-scale range needs low > 0"
        if entry.get("step") and entry.get("log"):
            return "a range is either stepped or on a log scale, not both"
        step = entry.get("step")
        steps = (entry["high"] - entry["low"]) / step if step else 0
        if step and abs(steps - round(steps)) > 1e-6:
            return f"step {step} does not divide the range {entry['low']} to {entry['high']}"
    elif "low" in entry or "step" in entry:
        return "low, high, step and log belong to ranges"
    if entry.get("optional"):
        parts = entry["path"].split(".")
        if len(parts) != 2 or parts[0] != "stages":
            return "optional: true applies to a whole stage: path stages.NAME"
    return None


def check_search(doc, cwd: Path, validate) -> list[Problem]:
    """Every problem of ``doc``'s search section, located at its space entry.

    ``validate(doc)`` validates a recipe document (raising ``RecipeError``); every edge of
    the space is applied to ``doc`` (without its search section) and validated.
    """
    from compose.recipe.validation import SchemaChecker

    search = doc.get("search")
    if not isinstance(search, dict):
        return []
    checker = SchemaChecker(doc)
    base = _without_search(doc)
    problems = []
    seen = set()
    for index, entry in enumerate(search.get("space") or []):
        where = ("search", "space", index)
        if entry["path"] in seen:
            problems.append(checker.problem(where + ("path",), f"'{entry['path']}' is in the space twice"))
            continue
        seen.add(entry["path"])
        shape = _shape_problems(entry)
        if shape:
            problems.append(checker.problem(where, f"search.space entry '{entry['path']}': {shape}"))
            continue
        (dimension,) = dimensions({"space": [entry]})
        for value in dimension.edges():
            override = dimension.override(value)
            why = _refused(base, override, cwd, validate)
            if why:
                problems.append(
                    checker.problem(where + ("path",), f"trying {override}: {why}; change this search.space entry")
                )
                break
    if search.get("selection_share") is not None and search.get("selection_split") is not None:
        problems.append(
            checker.problem(
                ("search", "selection_share"),
                "give selection_split (a split of task.data) or selection_share (carved from train), not both",
            )
        )
    if search.get("selection_share") is not None and "train" not in ((doc.get("task") or {}).get("data") or {}):
        problems.append(
            checker.problem(
                ("search", "selection_share"), "selection_share carves from task.data.train, which is missing"
            )
        )
    if "trials" in search and search["trials"] is None and search.get("minutes") is None:
        problems.append(
            checker.problem(
                ("search", "trials"), "trials and minutes are both null: the study would never end; set one"
            )
        )
    return problems


def _without_search(doc):
    import copy

    base = copy.deepcopy(doc)
    base.pop("search", None)
    return base


def _refused(base, override: str, cwd: Path, validate) -> str | None:
    """Why the recipe with ``override`` is invalid (its first problem), or None."""
    try:
        candidate = apply_overrides(base, [override], cwd)
        validate(candidate)
    except (CompositionError, RecipeError) as exc:
        first = exc.problems[0]
        return first.message
    return None
