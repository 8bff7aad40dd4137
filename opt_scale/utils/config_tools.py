"""Typed configuration plumbing shared by every config dataclass.

Configs are plain nested dataclasses. This module turns them into dicts and
back, applies dotted command-line overrides (``model.cross.layers=4``), and
refuses anything it does not recognise with a message that names the key: a
typo in a launch script must fail at once, not after a day of training with
the default value.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from typing import Any


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the key."""


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys."""
    if not isinstance(data, dict):
        raise ConfigError(f"config key '{prefix or '<root>'}' must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(_unknown_key_message(dotted, cls, prefix))
        kwargs[key] = _coerce(hints[key], value, dotted)
    return cls(**kwargs)


def apply_overrides(cfg: Any, overrides: list[str]) -> Any:
    """Return a copy of ``cfg`` with ``key.path=value`` overrides applied.

    Values are parsed as JSON when they parse (numbers, true/false, lists),
    as bare strings otherwise, then coerced to the field's declared type.
    """
    data = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key.path=value")
        dotted, raw = item.split("=", 1)
        dotted = dotted.strip()
        _check_path(type(cfg), dotted)
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = _parse_scalar(raw)
    return validate(from_dict(type(cfg), data))


def validate(cfg: Any, prefix: str = "") -> Any:
    """Run ``validate()`` on every nested config that defines one."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            validate(value, f"{prefix}{f.name}.")
    check = getattr(cfg, "validate", None)
    if callable(check):
        check()
    return cfg


def require(condition: bool, key: str, message: str) -> None:
    """Raise a ConfigError naming ``key`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"config key '{key}': {message}")


def dumps(cfg: Any) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=True)


# -- internals ---------------------------------------------------------------

def _check_path(cls: type, dotted: str) -> None:
    parts = dotted.split(".")
    current = cls
    for i, part in enumerate(parts):
        prefix = ".".join(parts[:i])
        if not dataclasses.is_dataclass(current):
            raise ConfigError(f"unknown config key '{dotted}': '{prefix}' is a value, not a section")
        hints = typing.get_type_hints(current)
        if part not in hints:
            raise ConfigError(_unknown_key_message(dotted, current, prefix + "." if prefix else ""))
        current = hints[part]
    if dataclasses.is_dataclass(current):
        raise ConfigError(f"config key '{dotted}' is a section; set one of its keys, e.g. '{dotted}.{dataclasses.fields(current)[0].name}=...'")


def _unknown_key_message(dotted: str, cls: type, prefix: str) -> str:
    valid = ", ".join(f"{prefix}{f.name}" for f in dataclasses.fields(cls))
    return f"unknown config key '{dotted}'. Valid keys here: {valid}"


def _parse_scalar(raw: str) -> Any:
    raw = raw.strip()
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _number(text: str, key: str):
    try:
        return json.loads(text)
    except ValueError:
        raise ConfigError(f"config key '{key}' expects numbers, got {text!r}") from None


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key + ".")
    if origin is typing.Union:  # Optional[X]
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key)
    if origin in (tuple, list):
        elem = args[0] if args else Any
        if isinstance(value, str):  # "0.7,0.3" as well as [0.7, 0.3]
            value = [_number(v.strip(), key) if elem in (int, float) else v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' expects a list, got {value!r}")
        items = [_coerce(elem, v, key) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' expects a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"config key '{key}' expects true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or int(value) != value:
            raise ConfigError(f"config key '{key}' expects an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}' expects a number, got {value!r}")
        # JSON (overrides and config files) spells them Infinity and NaN: a
        # run with lr=Infinity would train to non-finite weights and exit 0.
        if not math.isfinite(value):
            raise ConfigError(f"config key '{key}' must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            return json.dumps(value) if isinstance(value, (list, dict)) else str(value)
        return value
    return value
