"""Every config key with its type, value and meaning (``opt-train --describe``).

The meanings are the comments the config dataclasses carry beside each field
(``name: type = default  # meaning``, continued on the comment lines under
it) or on the comment lines just above it, read from their source, so the
listing cannot drift from the code that defines the keys.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
import typing
from typing import Any

FIELD_RE = re.compile(r"^(\s*)(\w+)\s*:\s*[^=#]+?(?:=\s*(.*?))?\s*(?:#\s?(.*))?$")


@functools.cache
def field_comments(cls: type) -> dict[str, str]:
    """Field name -> its comment, for the fields ``cls`` itself defines (read once per class)."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    out: dict[str, str] = {}
    above: list[str] = []
    current = None
    for line in lines[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            text = stripped.lstrip("#").strip()
            # A comment under a field, indented past its name, continues it; otherwise it introduces the next one.
            if current and len(line) - len(line.lstrip()) > current[1]:
                out[current[0]] = f"{out[current[0]]} {text}".strip()
            else:
                above.append(text)
                current = None
            continue
        m = FIELD_RE.match(line) if not stripped.startswith('"""') else None
        if m:
            comment = (m.group(4) or "").strip()
            out[m.group(2)] = " ".join([*above, comment]).strip()
            # Continuation lines sit under the comment's own column.
            current = (m.group(2), line.index("#") - 1 if "#" in line else len(line))
        else:
            current = None
        above = []
    return out


def describe_keys(cfg: Any, prefix: str = "") -> list[dict]:
    """One row per leaf key: key, type, value, meaning."""
    rows = []
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            rows += describe_keys(value, key + ".")
            continue
        owner = next(c for c in type(cfg).__mro__ if f.name in getattr(c, "__annotations__", {}))
        rows.append({"key": key, "type": _type_name(hints[f.name]), "value": value,
                     "meaning": field_comments(owner).get(f.name, "")})
    return rows


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is tuple:
        return f"tuple[{_type_name(typing.get_args(tp)[0])}, ...]"
    return getattr(tp, "__name__", str(tp))
