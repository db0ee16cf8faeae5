"""Read a recipe: compose it, validate everything, fill in defaults, resolve paths.

``load_recipe`` either returns a ``Recipe`` that is safe to run, or raises
``RecipeError`` with every problem found (schema, plugins, rules between stages).
Nothing heavy (no model, no data) is loaded here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from compose.errors import Problem, RecipeError
from compose.recipe.composition import PATH_KEYS, CompositionError, apply_overrides, load_composed, path_base
from compose.recipe.data_check import check_data
from compose.recipe.model_check import check_model_source
from compose.recipe.model_source import model_family, model_folder
from compose.recipe.rules import check_families, check_order, run_stage_checks
from compose.recipe.schema import fill_defaults, fill_recipe_defaults, recipe_schema
from compose.recipe.task_kinds import BINARY_ONLY_METRICS, TASK_METRICS, metric_names
from compose.recipe.validation import SchemaChecker, did_you_mean
from compose.recipe.yaml_comments import advice, comment_eaten
from compose.recipe.yaml_source import format_path, locate, to_plain
from compose.stage import StageType


@dataclass
class Recipe:
    """A validated, fully resolved recipe."""

    source: Path  # the recipe file
    data: dict  # plain dicts and lists, defaults filled, paths absolute
    family: str
    stage_types: list[StageType]
    warnings: list[Problem] = field(default_factory=list)

    @property
    def stages(self) -> list[dict]:
        return self.data["stages"]


def load_recipe(path, overrides=(), host=None, cwd: Path | None = None) -> Recipe:
    """The recipe at ``path`` with ``overrides`` applied, validated whole (its search section too)."""
    path = Path(path)
    cwd = cwd or Path.cwd()
    doc = load_document(path, overrides, cwd)
    recipe = validate_document(doc, path, host)
    if "search" in doc:
        from compose.recipe.search_space import check_search

        problems = check_search(doc, cwd, lambda candidate: validate_document(candidate, path, host))
        if problems:
            raise RecipeError(_sorted(problems))
    return recipe


def load_document(path: Path, overrides=(), cwd: Path | None = None):
    """The composed recipe document (``extends:`` merged, overrides applied), not validated yet."""
    try:
        doc = load_composed(Path(path))
        return apply_overrides(doc, list(overrides), cwd or Path.cwd())
    except CompositionError as exc:
        raise RecipeError(exc.problems) from None


def validate_document(doc, path: Path, host) -> Recipe:
    checker = SchemaChecker(doc)
    schema = recipe_schema()
    problems = checker.check(doc, schema)
    commented = comment_eaten(doc)  # values YAML took for comments: said as errors' hints or as warnings
    eaten = {format_path(at): advice(str(at[-1]), text) for at, (_, text) in commented.items()}
    stage_types: list[StageType | None] = []
    stages = doc.get("stages") if isinstance(doc, dict) else None
    known = host.stages if host is not None else {}
    if isinstance(stages, list):
        seen = {}
        for i, stage in enumerate(stages):
            stage_types.append(None)
            if not isinstance(stage, dict):
                continue
            name = stage.get("name")
            if isinstance(name, str):
                if name in seen:
                    problems.append(
                        checker.problem(
                            ("stages", i, "name"),
                            f"stage name '{name}' is used twice (also stages[{seen[name]}]); names must be unique",
                        )
                    )
                seen.setdefault(name, i)
            uses = stage.get("uses")
            if not isinstance(uses, str):
                continue
            if uses not in known:
                installed = ", ".join(sorted(known)) or "none"
                problems.append(
                    checker.problem(
                        ("stages", i, "uses"),
                        f"no installed plugin provides stage '{uses}'{did_you_mean(uses, known)}; "
                        f"installed: {installed} (see `recipe plugins`)",
                    )
                )
                continue
            stage_type = known[uses].stage
            stage_types[i] = stage_type
            settings = stage.get("with", {})
            if isinstance(settings, dict):
                problems.extend(checker.check(settings, stage_type.schema, prefix=("stages", i, "with")))
        problems.extend(_check_references(doc, checker, seen))
    problems.extend(_check_split_references(doc, doc, checker, defaults=False))
    problems = [replace(p, message=f"{p.message}: {eaten[p.path]}") if p.path in eaten else p for p in problems]
    if problems:
        raise RecipeError(_sorted(problems))
    comment_warnings = [
        replace(checker.problem(at, advice(str(at[-1]), text)), severity="warning")
        for at, (_, text) in commented.items()
    ]

    data = to_plain(doc)
    fill_recipe_defaults(data, schema)
    for stage, stage_type in zip(data["stages"], stage_types):
        fill_defaults(stage["with"], stage_type.schema)
    _resolve_paths(doc, data, path)
    problems = _check_split_references(data, doc, checker, defaults=True)
    if problems:
        raise RecipeError(_sorted(problems))
    problems = check_data(data, checker) + check_model_source(data, checker, model_folder(data["model"]))
    if problems:
        raise RecipeError(_sorted(problems))
    family = model_family(data)
    named = [(s["name"], t) for s, t in zip(data["stages"], stage_types)]
    findings = check_families(named, family)
    findings += check_order(named, data, {n: r.stage for n, r in known.items()})
    extensions = {n: r.extension for n, r in host.training_extensions.items()} if host is not None else {}
    findings += run_stage_checks(named, [s["with"] for s in data["stages"]], data, family, extensions)
    located = [_finding_problem(checker, f) for f in findings]
    errors = [p for p in located if p.severity == "error"]
    warnings = [p for p in located if p.severity != "error"]
    warnings = comment_warnings + warnings
    if errors:
        raise RecipeError(errors + warnings)
    return Recipe(path, data, family, stage_types, warnings)


def _finding_problem(checker: SchemaChecker, finding) -> Problem:
    if finding.stage_index < 0:
        loc = locate(checker.document, ("stages",))
        return Problem(
            finding.message,
            "$.stages",
            loc.file if loc else None,
            loc.line if loc else None,
            loc.column if loc else None,
            finding.severity,
        )
    path = ("stages", finding.stage_index) + tuple(finding.path)
    p = checker.problem(path, finding.message)
    return Problem(p.message, p.path, p.file, p.line, p.column, finding.severity)


def _check_references(doc, checker: SchemaChecker, stage_names: dict) -> list[Problem]:
    """What the task kind allows, and the stages that gates name (splits: ``_check_split_references``)."""
    problems = []
    task = doc.get("task") if isinstance(doc, dict) else None
    if isinstance(task, dict):
        problems.extend(_check_task(doc, task, checker))
    gates = doc.get("gates", []) if isinstance(doc, dict) else []
    if isinstance(gates, list):
        for i, gate in enumerate(gates):
            name = gate.get("stage") if isinstance(gate, dict) else None
            if isinstance(name, str) and name != "final" and name not in stage_names:
                problems.append(
                    checker.problem(
                        ("gates", i, "stage"),
                        f"gate refers to stage '{name}', which the recipe does not have"
                        f"{did_you_mean(name, list(stage_names) + ['final'])}",
                    )
                )
    return problems


def _check_task(doc: dict, task: dict, checker: SchemaChecker) -> list[Problem]:
    """What task.kind decides: which metrics exist, which settings a seq2seq task needs."""
    problems = []
    kind = task.get("kind")
    if kind not in TASK_METRICS:
        return problems  # the schema reports it
    names = TASK_METRICS[kind]
    evaluate = doc.get("evaluate") if isinstance(doc.get("evaluate"), dict) else {}
    labels = task.get("labels")
    for where, metric in ((("task", "metric"), task.get("metric")), (("evaluate", "metric"), evaluate.get("metric"))):
        if metric in BINARY_ONLY_METRICS and metric in names and isinstance(labels, (list, dict)):
            if metric not in metric_names(task):
                problems.append(
                    checker.problem(
                        where,
                        f"'{metric}' is the F1 of the positive class of a binary task, and task.labels has "
                        f"{len(labels)} classes; use f1_macro (the mean of every class's F1)",
                    )
                )
        elif isinstance(metric, str) and metric not in names:
            problems.append(
                checker.problem(
                    where,
                    f"a {kind} task has no metric '{metric}' (it has: {', '.join(names)}){did_you_mean(metric, names)}; "
                    f"null picks {names[0]}",
                )
            )
    if kind == "seq2seq" and task.get("targets") is None and task.get("target_column") is None:
        problems.append(
            checker.problem(
                ("task", "kind"),
                "a seq2seq task needs its target text: set task.targets (label value -> text, e.g. "
                "{0: negative, 1: positive}) or task.target_column",
            )
        )
    labels = task.get("labels")
    if kind == "sequence-classification" and isinstance(labels, dict):
        problems.extend(_check_label_names(labels, checker))
    return problems


def _check_label_names(labels: dict, checker: SchemaChecker) -> list[Problem]:
    """Class names in task.labels must be distinct, and none may be another class's value
    (a data row may hold either, so `{0: "1", 1: "0"}` would be ambiguous)."""
    problems = []
    names = [str(name) for name in labels.values()]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        problems.append(
            checker.problem(
                ("task", "labels"),
                f"the class name(s) {', '.join(map(repr, repeated))} "
                "name more than one class; give each class its own name",
            )
        )
    for value, name in labels.items():
        if str(name) in labels and str(name) != str(value):
            problems.append(
                checker.problem(
                    ("task", "labels", value),
                    f"class {value} is named '{name}', which is also the value of class {name}; a data row may hold "
                    "a value or a name, so this is ambiguous: pick names that are not label values",
                )
            )
    return problems


def _check_split_references(tree, doc, checker: SchemaChecker, *, defaults: bool) -> list[Problem]:
    """Every setting named ``split`` or ``*_split``, at any depth (``evaluate.split``,
    ``stages[i].with.training.split``, ``calibration_split``, ``model.tokenizer.train.split``...),
    must name a split of ``task.data``. ``tree`` is the recipe as written (``defaults=False``: the
    values the user wrote) or with its defaults filled in (``defaults=True``: only the
    values the user did not write). The ``split`` of a hub dataset inside ``task.data``
    is that dataset's own split name and is not checked here."""
    task = tree.get("task") if isinstance(tree, dict) else None
    if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
        return []
    splits = list(task["data"])
    problems = []

    def walk(value, path):
        if isinstance(value, dict):
            for key, item in value.items():
                if path == ("task",) and key == "data":
                    continue
                here = path + (key,)
                if (key == "split" or key.endswith("_split")) and isinstance(item, str):
                    if item not in splits and _written(doc, here) != defaults:
                        how = " (the default; set it)" if defaults else ""
                        problems.append(
                            checker.problem(
                                here,
                                f"split '{item}'{how} is not in task.data (it has: {', '.join(splits)})"
                                f"{did_you_mean(item, splits)}",
                            )
                        )
                else:
                    walk(item, here)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, path + (index,))

    walk(tree, ())
    return problems


def _written(doc, path: tuple) -> bool:
    node = doc
    for part in path:
        if (
            isinstance(node, dict)
            and part in node
            or isinstance(node, list)
            and isinstance(part, int)
            and part < len(node)
        ):
            node = node[part]
        else:
            return False
    return True


def _sorted(problems: list[Problem]) -> list[Problem]:
    return sorted(problems, key=lambda p: (p.file or "", p.line or 0, p.column or 0, p.path))


def _resolve_paths(doc, data: dict, recipe_path: Path) -> None:
    """Make relative `path` values absolute, against the file (or cwd) that wrote them."""
    default_base = recipe_path.parent

    def walk(located, plain):
        if isinstance(plain, dict):
            for key, value in plain.items():
                sub = located.get(key) if isinstance(located, dict) else None
                if key in PATH_KEYS and isinstance(value, str):
                    base = path_base(located, key) if located is not None else None
                    plain[key] = str(((base or default_base) / value).resolve())
                else:
                    walk(sub, value)
        elif isinstance(plain, list):
            for i, item in enumerate(plain):
                sub = located[i] if isinstance(located, list) and i < len(located) else None
                walk(sub, item)

    # search.space entries name recipe paths (stages.x.with.y), not files
    walk(doc, {key: value for key, value in data.items() if key != "search"})
    if data["output"]["dir"] is None:
        data["output"]["dir"] = str(Path("runs") / recipe_path.stem)
