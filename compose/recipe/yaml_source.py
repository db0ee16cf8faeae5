"""Safe YAML loading that remembers where every key and value came from.

Mappings load as ``LocatedDict`` and sequences as ``LocatedList``: plain ``dict`` and
``list`` subclasses that also carry the file, line and column of each entry, so
that an error found after merging, overriding and schema validation can still
point at the line the user has to edit.

Only YAML's safe tags are accepted (no Python object tags), duplicate keys are
errors, and alias expansion is bounded (YAML "billion laughs" bombs are refused).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from compose.errors import Problem

#: The most values one recipe file may expand to (after aliases are followed).
MAX_NODES = 100_000
#: The deepest nesting a recipe file may have.
MAX_DEPTH = 64


@dataclass(frozen=True)
class Location:
    file: str
    line: int  # 1-based
    column: int  # 1-based


class LocatedDict(dict):
    """A dict whose entries remember where their keys and values were written."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.location: Location | None = None
        self.key_locations: dict = {}
        self.value_locations: dict = {}


class LocatedList(list):
    """A list whose items remember where they were written."""

    def __init__(self, *args):
        super().__init__(*args)
        self.location: Location | None = None
        self.item_locations: list = []


class YamlSourceError(Exception):
    def __init__(self, problem: Problem):
        self.problem = problem
        super().__init__(problem.format())


_EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9]+(\.[0-9]*)?[eE][-+]?[0-9]+$")
_PLAIN_TAGS = {"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"}


def _loc(file: str, mark) -> Location:
    return Location(file, mark.line + 1, mark.column + 1)


class _Builder:
    def __init__(self, file: str, loader: yaml.SafeLoader):
        self.file = file
        self.loader = loader
        self.count = 0

    def fail(self, message: str, path: str, node) -> YamlSourceError:
        mark = node.start_mark
        return YamlSourceError(Problem(message, path, self.file, mark.line + 1, mark.column + 1))

    def build(self, node, depth=0, path="$"):
        self.count += 1
        if self.count > MAX_NODES:
            raise self.fail(
                f"the file expands to more than {MAX_NODES} values (deeply nested aliases?); "
                "recipes this large are refused",
                path,
                node,
            )
        if depth > MAX_DEPTH:
            raise self.fail(f"nesting deeper than {MAX_DEPTH} levels is refused", path, node)
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.tag not in _PLAIN_TAGS:
            raise self.fail(
                f"the tag {node.tag} is not allowed (only plain YAML values are allowed in a recipe)", path, node
            )
        if isinstance(node, yaml.MappingNode):
            explicit = sum(1 for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge")
            self.loader.flatten_mapping(node)  # resolves YAML merge keys (<<)
            merged = len(node.value) - explicit  # merged pairs come first
            out = LocatedDict()
            out.location = _loc(self.file, node.start_mark)
            for index, (key_node, value_node) in enumerate(node.value):
                key = self.build(key_node, depth + 1, path)
                if isinstance(key, (dict, list)):
                    raise self.fail("a mapping key must be a plain value", path, key_node)
                if not isinstance(key, str):
                    key = str(key) if not isinstance(key, bool) else str(key).lower()
                child_path = f"{path}.{key}"
                if key in out and index >= merged and out.key_locations[key] is not None:
                    first = out.key_locations[key]
                    raise self.fail(
                        f"duplicate key '{key}' (first written at line {first.line}); delete one of them",
                        child_path,
                        key_node,
                    )
                out[key] = self.build(value_node, depth + 1, child_path)
                # keys brought in by a merge (<<) may be overridden without complaint
                out.key_locations[key] = _loc(self.file, key_node.start_mark) if index >= merged else None
                out.value_locations[key] = _loc(self.file, value_node.start_mark)
            return out
        if isinstance(node, yaml.SequenceNode):
            out = LocatedList()
            out.location = _loc(self.file, node.start_mark)
            for i, item in enumerate(node.value):
                out.append(self.build(item, depth + 1, f"{path}[{i}]"))
                out.item_locations.append(_loc(self.file, item.start_mark))
            return out
        if node.style is None and node.tag == "tag:yaml.org,2002:str" and _EXPONENT_FLOAT.match(node.value):
            return float(node.value)  # YAML 1.1 reads 5e-5 as a string; users mean a number
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as exc:
            raise self.fail(f"{exc.problem} (only plain YAML values are allowed in a recipe)", path, node) from None


def parse_yaml_text(text: str, file: str):
    """Parse YAML text into Located containers; raise YamlSourceError on any problem."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise YamlSourceError(
            Problem(
                f"not valid YAML: {exc.problem or exc.context}",
                "$",
                file,
                mark.line + 1 if mark else None,
                mark.column + 1 if mark else None,
            )
        ) from None
    except yaml.YAMLError as exc:
        raise YamlSourceError(Problem(f"not valid YAML: {exc}", "$", file)) from None
    finally:
        loader.dispose()
    if node is None:
        return None
    try:
        return _Builder(file, loader).build(node)
    except RecursionError:
        raise YamlSourceError(Problem("the YAML is nested too deeply", "$", file)) from None


def load_yaml_file(path: Path, display: str | None = None):
    """Read and parse one YAML file, with errors that name it."""
    shown = display or str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise YamlSourceError(Problem(f"no such file: {path}", "$", shown)) from None
    except IsADirectoryError:
        raise YamlSourceError(Problem(f"{path} is a folder, not a recipe file", "$", shown)) from None
    except OSError as exc:
        raise YamlSourceError(Problem(f"cannot read {path}: {exc.strerror}", "$", shown)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise YamlSourceError(
            Problem(
                f"the file is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); save it as UTF-8",
                "$",
                shown,
                line,
                None,
            )
        ) from None
    return parse_yaml_text(text, shown)


def locate(document, path: tuple, *, key: bool = False) -> Location | None:
    """Where the value (or, with key=True, the key) at ``path`` was written.

    Falls back to the nearest enclosing container that has a location, so that
    values filled in from defaults still point somewhere useful.
    """
    best = getattr(document, "location", None)
    node = document
    for i, part in enumerate(path):
        last = i == len(path) - 1
        if isinstance(node, LocatedDict) and part in node:
            table = node.key_locations if (key and last) else node.value_locations
            best = table.get(part) or best
            node = node[part]
        elif isinstance(node, LocatedList) and isinstance(part, int) and 0 <= part < len(node):
            if part < len(node.item_locations):
                best = node.item_locations[part]
            node = node[part]
        else:
            break
        if getattr(node, "location", None) is not None and not last:
            best = node.location
    return best


def format_path(path) -> str:
    out = "$"
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def to_plain(value):
    """Located containers to plain dicts and lists (for JSON and YAML output)."""
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_plain(v) for v in value]
    return value
