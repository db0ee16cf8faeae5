"""Recipe composition: ``extends:`` chains and command-line overrides.

``extends: base.yaml`` (a path relative to the file that says it) deep-merges this
file over the base: mappings merge key by key, other values replace. ``stages``
is special: a *list* replaces the base's stages; a *mapping* patches the base's
stages by name (``stages: {finetune: {with: {epochs: 3}}}``), ``null`` as a
stage's patch removes that stage, and a name the base does not have adds a stage where
``before:`` or ``after:`` says (``stages: {vocab: {uses: prune-vocab, before: deploy}}``).

Overrides from the command line: ``key.path=value`` sets a value (parsed as YAML,
so ``3``, ``true``, ``[1, 2]`` have their types), ``~key.path`` deletes it. Stages
may be addressed by name or by index: ``stages.gptq.with.bits=3``,
``stages.0.with.epochs=2``.
"""

from __future__ import annotations

import copy
from pathlib import Path

from compose.errors import Problem
from compose.recipe.yaml_source import (
    LocatedDict,
    LocatedList,
    Location,
    YamlSourceError,
    load_yaml_file,
    parse_yaml_text,
)

#: How many files an ``extends:`` chain may have.
MAX_EXTENDS_DEPTH = 16


class CompositionError(Exception):
    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(p.format() for p in problems))


def _problem(message, path, location: Location | None, file: str | None = None) -> Problem:
    if location is None:
        return Problem(message, path, file)
    return Problem(message, path, location.file, location.line, location.column)


def load_composed(path: Path) -> LocatedDict:
    """Load a recipe file and everything it extends, merged into one document."""
    return _load(Path(path), chain=[])


def _load(path: Path, chain: list[Path]) -> LocatedDict:
    display = str(path)
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in chain + [resolved])
        raise CompositionError(
            [Problem(f"'extends' forms a cycle: {cycle}; remove one of these links", "$.extends", display)]
        )
    if len(chain) >= MAX_EXTENDS_DEPTH:
        raise CompositionError(
            [Problem(f"'extends' chain is deeper than {MAX_EXTENDS_DEPTH} files", "$.extends", display)]
        )
    try:
        doc = load_yaml_file(path, display)
    except YamlSourceError as exc:
        raise CompositionError([exc.problem]) from None
    if doc is None:
        raise CompositionError([Problem("the recipe file is empty", "$", display)])
    if not isinstance(doc, LocatedDict):
        loc = getattr(doc, "location", None)
        raise CompositionError([_problem("a recipe must be a mapping (model:, task:, stages: ...)", "$", loc, display)])
    _anchor_paths(doc, path.parent)
    if "extends" not in doc:
        return doc
    parent_ref = doc.pop("extends")
    loc = doc.value_locations.get("extends")
    if not isinstance(parent_ref, str) or not parent_ref:
        raise CompositionError([_problem("'extends' must be the path of another recipe file", "$.extends", loc)])
    parent_path = (path.parent / parent_ref) if not Path(parent_ref).is_absolute() else Path(parent_ref)
    if not parent_path.is_file():
        raise CompositionError(
            [_problem(f"'extends' names {parent_ref}, but there is no file {parent_path}", "$.extends", loc)]
        )
    base = _load(parent_path, chain + [resolved])
    _drop_run_folder(base)
    return merge(base, doc)


def _drop_run_folder(base: LocatedDict) -> None:
    """A run folder is the recipe's own: an extending recipe never inherits ``output.dir`` (it would write
    into the base's runs); without one of its own it gets ``runs/<its file name>``."""
    output = base.get("output")
    if isinstance(output, dict) and "dir" in output:
        output.pop("dir")
        if not output:
            base.pop("output")


#: Keys whose string values are file-system paths, resolved against the file
#: that wrote them (so that a base recipe's paths keep working when extended).
PATH_KEYS = {"path", "data_files"}


def _anchor_paths(node, base_dir: Path):
    """Record, for path-like values, the folder they are relative to."""
    if isinstance(node, LocatedDict):
        for key, value in node.items():
            if key in PATH_KEYS and isinstance(value, str):
                node.__dict__.setdefault("path_bases", {})[key] = base_dir
            else:
                _anchor_paths(value, base_dir)
    elif isinstance(node, LocatedList):
        for item in node:
            _anchor_paths(item, base_dir)


def path_base(container, key) -> Path | None:
    """The folder a relative path at ``container[key]`` is relative to, if known."""
    return getattr(container, "__dict__", {}).get("path_bases", {}).get(key)


def merge(base, override):
    """Deep-merge ``override`` over ``base`` (see the module docstring)."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = copy.deepcopy(base)
        for key, value in override.items():
            if key == "stages" and isinstance(value, dict) and isinstance(out.get(key), list):
                out[key] = _patch_stages(out[key], value)
            elif key in out and isinstance(out[key], dict) and isinstance(value, dict):
                out[key] = merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
            _copy_locations(out, override, key)
            _copy_path_base(out, override, key)
        return out
    return copy.deepcopy(override)


def _copy_locations(target, source, key):
    if isinstance(target, LocatedDict) and isinstance(source, LocatedDict):
        if key in source.key_locations:
            target.key_locations[key] = source.key_locations[key]
            target.value_locations[key] = source.value_locations[key]


def _copy_path_base(target, source, key):
    base = path_base(source, key)
    if base is not None:
        target.__dict__.setdefault("path_bases", {})[key] = base


#: The keys of a stages patch that place a new stage.
PLACEMENT = ("before", "after")


def _patch_stages(stages: list, patches: dict) -> list:
    out = copy.deepcopy(stages)
    names = [s.get("name") if isinstance(s, dict) else None for s in out]
    problems = []
    for name, patch in patches.items():
        loc = patches.key_locations.get(name) if isinstance(patches, LocatedDict) else None
        if name not in names:
            problem = _insert_stage(out, names, name, patch, loc)
            if problem:
                problems.append(_problem(problem, f"$.stages.{name}", loc))
            continue
        index = names.index(name)
        if patch is None:
            del out[index]
            del names[index]
            if isinstance(out, LocatedList):
                del out.item_locations[index]
        elif isinstance(patch, dict) and not set(PLACEMENT) & set(patch):
            out[index] = merge(out[index], patch)
        else:
            problems.append(
                _problem(
                    f"a stage patch must be a mapping (or null to remove the stage), got {type(patch).__name__}"
                    if not isinstance(patch, dict)
                    else f"stage '{name}' is already in the base recipe: 'before'/'after' place only a new stage; "
                    "to move it, remove it (null) and add it under another name",
                    f"$.stages.{name}",
                    loc,
                )
            )
    if problems:
        raise CompositionError(problems)
    return out


def _insert_stage(out: list, names: list, name: str, patch, loc: Location | None) -> str | None:
    """Add the new stage ``name`` where its ``before``/``after`` says; what is wrong, or None."""
    known = ", ".join(n for n in names if n) or "none"
    places = [key for key in PLACEMENT if isinstance(patch, dict) and key in patch]
    if len(places) != 1:
        return (
            f"cannot patch stage '{name}': the base recipe has no stage of that name (it has: {known}); to add "
            f"it, give its `uses` and one of `before: STAGE` or `after: STAGE`, or give the whole 'stages' list"
        )
    anchor = patch[places[0]]
    if anchor not in names:
        return f"stage '{name}' is to go {places[0]} '{anchor}', which the base recipe does not have (it has: {known})"
    stage = copy.deepcopy(patch)  # a LocatedDict keeps the lines its keys were written on
    del stage[places[0]]
    stage["name"] = name
    index = names.index(anchor) + (places[0] == "after")
    out.insert(index, stage)
    names.insert(index, name)
    if isinstance(out, LocatedList):
        out.item_locations.insert(index, loc)
    return None


# ---------------------------------------------------------------------------
# Command-line overrides
# ---------------------------------------------------------------------------


def apply_overrides(doc: LocatedDict, overrides: list[str], cwd: Path) -> LocatedDict:
    """Apply ``key.path=value`` and ``~key.path`` overrides, collecting all problems."""
    out = copy.deepcopy(doc)
    problems = []
    for raw in overrides:
        try:
            _apply_one(out, raw, cwd)
        except CompositionError as exc:
            problems.extend(exc.problems)
    if problems:
        raise CompositionError(problems)
    return out


def _override_problem(raw: str, message: str) -> CompositionError:
    return CompositionError([Problem(message, "$", f"<override '{raw}'>")])


def _apply_one(doc, raw: str, cwd: Path):
    delete = raw.startswith("~")
    if delete:
        key_path, value_text = raw[1:], None
    elif "=" in raw:
        key_path, value_text = raw.split("=", 1)
    else:
        raise _override_problem(raw, "an override is key.path=value, or ~key.path to delete a key")
    parts = [p for p in key_path.strip().split(".")]
    if not parts or any(not p for p in parts):
        raise _override_problem(raw, f"'{key_path}' is not a key path (use dots: stages.train.with.epochs)")
    value = None
    if not delete:
        try:
            value = parse_yaml_text(value_text, f"<override '{raw}'>") if value_text.strip() else ""
        except YamlSourceError as exc:
            raise CompositionError([exc.problem]) from None
    node = doc
    for depth, part in enumerate(parts[:-1]):
        node = _step(node, part, raw, parts[: depth + 1], create=not delete)
    last = parts[-1]
    if isinstance(node, list):
        index = _stage_index(node, last, raw, parts)
        if delete:
            del node[index]
            if isinstance(node, LocatedList):
                del node.item_locations[index]
        else:
            node[index] = value
        return
    if not isinstance(node, dict):
        raise _override_problem(raw, f"'{'.'.join(parts[:-1])}' is not a mapping, so it has no key '{last}'")
    if delete:
        if last not in node:
            raise _override_problem(raw, f"cannot delete '{key_path}': the recipe has no such key")
        del node[last]
        return
    node[last] = value
    if isinstance(node, LocatedDict):
        node.key_locations.pop(last, None)
        node.value_locations.pop(last, None)
        if last in PATH_KEYS and isinstance(value, str):
            node.__dict__.setdefault("path_bases", {})[last] = cwd


def _step(node, part, raw, so_far, create):
    if isinstance(node, list):
        return node[_stage_index(node, part, raw, so_far)]
    if isinstance(node, dict):
        if part not in node:
            if not create:
                raise _override_problem(raw, f"the recipe has no key '{'.'.join(so_far)}'")
            node[part] = LocatedDict()
        return node[part]
    raise _override_problem(raw, f"'{'.'.join(so_far[:-1])}' is not a mapping or list")


def _stage_index(items: list, part: str, raw: str, so_far) -> int:
    if part.lstrip("-").isdigit():
        index = int(part)
        if -len(items) <= index < len(items):
            return index % len(items)
        raise _override_problem(raw, f"index {index} is out of range: '{'.'.join(so_far[:-1])}' has {len(items)} items")
    for i, item in enumerate(items):
        if isinstance(item, dict) and item.get("name") == part:
            return i
    names = [str(i.get("name")) for i in items if isinstance(i, dict) and "name" in i]
    raise _override_problem(
        raw, f"no stage named '{part}' (stages: {', '.join(names) or 'none'}); use a stage name or an index"
    )
