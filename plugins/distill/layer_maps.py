"""Which teacher layer each student layer learns from (``loss.layer_map``): checked at plan
time against the layer counts, resolved at run time (uniform where not given)."""

from __future__ import annotations

import math


def uniform_layer_map(n_student: int, n_teacher: int) -> list[int]:
    """Student layer i learns from teacher layer (i+1)*T/S - 1: spread evenly, last matches last."""
    return [max(0, math.ceil((i + 1) * n_teacher / n_student) - 1) for i in range(n_student)]


def stack_label(stack: str) -> str:
    """How a message names the stack after "student" or "teacher": nothing for a one-stack
    model, " encoder" or " decoder" for an encoder-decoder."""
    return "" if stack == "layers" else f" {stack}"


def layer_map_form_problem(setting, two_stacks: bool) -> str | None:
    """Why the form of ``loss.layer_map`` does not fit a model with one or two stacks (None: it fits)."""
    if isinstance(setting, list) and two_stacks:
        return (
            "loss.layer_map is a list, but an encoder-decoder has two stacks of layers; give "
            "{encoder: [...] or null, decoder: [...] or null}"
        )
    if isinstance(setting, dict) and not two_stacks:
        return (
            "loss.layer_map with encoder/decoder entries is for encoder-decoder models; give a list "
            "(one teacher layer per student layer) or null"
        )
    return None


def layer_map_problems(setting, student_counts: dict, teacher_counts: dict) -> list[tuple]:
    """(message, settings path) for each entry of a well-formed ``loss.layer_map`` that does not fit.

    ``student_counts`` / ``teacher_counts``: {stack name: number of layers}.
    """
    given = setting if isinstance(setting, dict) else {"layers": setting}
    problems = []
    for stack, layer_map in given.items():
        if layer_map is None:
            continue
        name = "loss.layer_map" + ("" if stack == "layers" else f".{stack}")
        path = ("loss", "layer_map") + (() if stack == "layers" else (stack,))
        n_student, n_teacher = student_counts[stack], teacher_counts[stack]
        if len(layer_map) != n_student:
            problems.append(
                (
                    f"{name} has {len(layer_map)} entries but the student{stack_label(stack)} has {n_student} "
                    "layers; give one teacher layer per student layer (or null for the uniform mapping)",
                    path,
                )
            )
        bad = [j for j in layer_map if j >= n_teacher]
        if bad:
            problems.append(
                (
                    f"{name} names teacher{stack_label(stack)} layer(s) {bad}, but the teacher{stack_label(stack)} "
                    f"has {n_teacher} layers",
                    path,
                )
            )
    return problems


def resolve_layer_maps(setting, student_counts: dict, teacher_counts: dict) -> dict:
    """{stack name: teacher layer of each student layer}: the given maps, uniform where null."""
    wrong_form = layer_map_form_problem(setting, "layers" not in student_counts)
    if wrong_form:
        raise ValueError(wrong_form)
    problems = layer_map_problems(setting, student_counts, teacher_counts)
    if problems:
        raise ValueError(problems[0][0])
    given = setting if isinstance(setting, dict) else {"layers": setting}
    return {
        stack: list(given.get(stack) or uniform_layer_map(n_student, teacher_counts[stack]))
        for stack, n_student in student_counts.items()
    }
