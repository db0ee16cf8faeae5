"""Rules between stages, checked in one place.

Plugins declare, per stage type, the facts it ``needs`` about the model when it
starts and the facts it ``leaves`` behind (see ``compose.api.StageType``). This
module walks the recipe's stages in order, tracking the facts, and reports each
stage whose needs are not met, with an order of the same stages that would work,
or the kind of stage that is missing. It also checks model families and runs
each stage type's own ``check``.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from compose.recipe.model_source import model_config_dict
from compose.recipe.schema import training_settings_paths
from compose.run.budget import budget_problems
from compose.stage import Check, StageType, TrainingExtension, describe_fact

#: Up to this many stages, every order is tried to find one that works.
MAX_PERMUTED_STAGES = 8


@dataclass(frozen=True)
class PlanView:
    """What a stage's ``check`` callable sees of the recipe.

    family:    "encoder", "decoder" or "encoder-decoder".
    task_kind: the recipe's task.kind.
    stages:    every stage as (name, uses, settings), in order.
    index:     the position of the stage being checked.
    facts:     the facts about the model when the stage starts.
    recipe:    the whole resolved recipe (plain dicts).
    model_config: the model's config.json as a dict, where it can be read without
               loading the model (inline config, local folder, package); else None.
    set_by:    fact -> the name of the stage that last set it (facts the recipe's model
               starts with are absent), to name that stage in a message.
    stage_types: the ``StageType`` of every stage, in order (for ``next_quantization``).
    entering_config: the config.json (as a dict) of the model entering this stage: the recipe's
               model's, or the one an earlier stage replaced it with (``StageType.replaces_model``);
               None where it cannot be read before running.
    """

    family: str
    task_kind: str
    stages: tuple
    index: int
    facts: Mapping[str, bool]
    recipe: Mapping[str, Any] = field(default_factory=dict)
    model_config: Mapping[str, Any] | None = None
    set_by: Mapping[str, str] = field(default_factory=dict)
    stage_types: tuple = ()
    entering_config: Mapping[str, Any] | None = None

    def next_quantization(self, name: str | None = None):
        """(position, ``QuantizationScheme``) of the first later stage that declares a quantization (the one
        named ``name``, if given), from its validated settings; None if no later stage does."""
        from compose.quantization_scheme import next_quantization

        stages = [(n, t, s) for (n, _uses, s), t in zip(self.stages, self.stage_types)]
        return next_quantization(stages, self.index, self.family, name)


@dataclass(frozen=True)
class RuleFinding:
    stage_index: int
    message: str
    severity: str = "error"
    path: tuple = ()  # inside the stage


def initial_facts(recipe: Mapping[str, Any]) -> dict:
    return {"task_trained": bool(recipe["model"].get("fine_tuned", False))}


def _unmet(stage: StageType, facts: Mapping[str, bool]) -> list[tuple[str, bool]]:
    return [(fact, want) for fact, want in stage.needs.items() if bool(facts.get(fact, False)) != want]


def _walk(order: list[StageType], facts: dict) -> bool:
    facts = dict(facts)
    for stage in order:
        if _unmet(stage, facts):
            return False
        facts.update(stage.leaves)
    return True


def _working_order(stages: list[tuple[str, StageType]], facts: dict) -> list[str] | None:
    if len(stages) > MAX_PERMUTED_STAGES:
        return None
    for perm in itertools.permutations(stages):
        if _walk([s for _, s in perm], facts):
            return [name for name, _ in perm]
    return None


def check_order(
    named: list[tuple[str, StageType]], recipe: Mapping[str, Any], providers: Mapping[str, StageType]
) -> list[RuleFinding]:
    """Findings about stage order (needs and leaves). ``providers``: all known stage types."""
    facts = initial_facts(recipe)
    findings = []
    broken = False
    for index, (name, stage) in enumerate(named):
        for fact, want in _unmet(stage, facts):
            broken = True
            have = describe_fact(fact, bool(facts.get(fact, False)))
            need = describe_fact(fact, want)
            culprit = _who_set(named[:index], fact)
            why = f" ('{culprit}' left it {have})" if culprit else f" (it is {have} at this point)"
            findings.append(RuleFinding(index, f"stage '{name}' ({stage.name}) needs a model that is {need}{why}"))
        facts.update(stage.leaves)
    if broken:
        order = _working_order(named, initial_facts(recipe))
        if order:
            findings.append(RuleFinding(-1, "an order that works: " + " -> ".join(order)))
        else:
            findings.append(RuleFinding(-1, _missing_advice(named, recipe, providers)))
    return findings


def _who_set(before: list[tuple[str, StageType]], fact: str) -> str | None:
    for name, stage in reversed(before):
        if fact in stage.leaves:
            return name
    return None


def _missing_advice(named, recipe, providers) -> str:
    facts = initial_facts(recipe)
    for _, stage in named:
        for fact, want in _unmet(stage, facts):
            makers = sorted(n for n, s in providers.items() if s.leaves.get(fact) == want)
            if fact == "task_trained" and want:
                extra = " or set model.fine_tuned: true if the checkpoint is already trained on this task"
            else:
                extra = ""
            if makers:
                return (
                    f"no order of these stages works: add a stage that leaves the model "
                    f"{describe_fact(fact, want)} before it (provided by: {', '.join(makers)}){extra}"
                )
            return f"no order of these stages works: nothing leaves the model {describe_fact(fact, want)}{extra}"
        facts.update(stage.leaves)
    return "no order of these stages works"


def check_families(named: list[tuple[str, StageType]], family: str) -> list[RuleFinding]:
    return [
        RuleFinding(
            index,
            f"stage '{name}' ({stage.name}) does not work on {family} models "
            f"(it supports: {', '.join(stage.families)})",
            path=("uses",),
        )
        for index, (name, stage) in enumerate(named)
        if family not in stage.families
    ]


def run_stage_checks(
    named: list[tuple[str, StageType]],
    settings: list[Mapping],
    recipe: Mapping,
    family: str,
    extensions: Mapping[str, TrainingExtension] | None = None,
) -> list[RuleFinding]:
    """Each stage type's own ``check``, and the checks of the training extensions it uses."""
    model_config = model_config_dict(recipe["model"])
    facts = initial_facts(recipe)
    set_by: dict[str, str] = {}
    stages = tuple((name, stage.name, s) for (name, stage), s in zip(named, settings))
    entering = dict(model_config) if isinstance(model_config, Mapping) else None
    findings = []
    for index, ((name, stage), stage_settings) in enumerate(zip(named, settings)):
        view = PlanView(
            family,
            recipe["task"]["kind"],
            stages,
            index,
            dict(facts),
            recipe,
            model_config,
            dict(set_by),
            tuple(stage for _, stage in named),
            entering,
        )
        checks = []
        if stage.check is not None:
            checks.append((stage.check, stage_settings, ()))
        for at in training_settings_paths(stage.schema):
            training = _get(stage_settings, at)
            if not isinstance(training, Mapping):
                continue  # e.g. an optional training block left out (recovery: null)
            findings += [
                RuleFinding(index, f"stage '{name}': {problem}", "error", ("with",) + tuple(at))
                for problem in budget_problems(training)
            ]
            for ext_name, ext in (extensions or {}).items():
                value = training.get(ext_name, ext.schema.get("default"))
                if ext.check is not None and value != ext.schema.get("default"):
                    checks.append((ext.check, value, at + (ext_name,)))
        for check, value, at in checks:
            for found in check(value, view) or ():
                if isinstance(found, str):
                    found = Check(found)
                path = ("with",) + tuple(at) + tuple(found.path)
                findings.append(RuleFinding(index, f"stage '{name}': {found.message}", found.severity, path))
        facts.update(stage.leaves)
        set_by.update(dict.fromkeys(stage.leaves, name))
        if stage.replaces_model is not None and isinstance(stage_settings, Mapping):
            replaced = stage.replaces_model(stage_settings)
            if replaced is not None:
                entering = dict(replaced) or None
    return findings


def _get(settings: Mapping, path: tuple):
    for key in path:
        settings = settings.get(key) if isinstance(settings, Mapping) else None
    return settings
