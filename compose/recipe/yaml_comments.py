"""Values that YAML read as comments: ``text_pair_column: #2 String`` is a key with no value.

In YAML, ``#`` after a space starts a comment, so an unquoted value that begins with ``#``
vanishes and the key reads as null. Nothing else says so: the schema may accept null (an
optional column) and the recipe runs without the value. ``comment_eaten`` finds every key
whose value is null while its own line holds a ``#`` right after the colon, so validation
can say what YAML did and how to quote the value.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from compose.recipe.yaml_source import LocatedDict, LocatedList, Location

_EMPTY_THEN_COMMENT = r"^\s*(?:-\s+)?['\"]?{key}['\"]?\s*:\s+(#.*?)\s*$"


@cache
def _lines(file: str) -> tuple[str, ...]:
    try:
        return tuple(Path(file).read_text(encoding="utf-8").splitlines())
    except (OSError, UnicodeDecodeError):
        return ()


def _eaten_text(key: str, location: Location | None) -> str | None:
    if location is None or not location.file:
        return None
    lines = _lines(location.file)
    if not 0 < location.line <= len(lines):
        return None
    found = re.match(_EMPTY_THEN_COMMENT.format(key=re.escape(key)), lines[location.line - 1])
    return found.group(1) if found else None


def comment_eaten(node, path: tuple = ()) -> dict[tuple, tuple[Location, str]]:
    """{path: (where the key is, the text YAML took for a comment)} of every null value whose line has a
    ``#`` right after its key's colon."""
    found = {}
    if isinstance(node, LocatedDict):
        for key, value in node.items():
            if value is None and isinstance(key, str):
                location = node.key_locations.get(key)
                text = _eaten_text(key, location)
                if text is not None:
                    found[path + (key,)] = (location, text)
            else:
                found.update(comment_eaten(value, path + (key,)))
    elif isinstance(node, LocatedList):
        for index, item in enumerate(node):
            found.update(comment_eaten(item, path + (index,)))
    return found


def advice(key: str, text: str) -> str:
    quoted = "'" + text.replace("'", "''") + "'"
    return f"YAML read `{text}` as a comment, so '{key}' is empty (null); quote it: {key}: {quoted}"
