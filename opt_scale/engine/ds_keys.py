"""Refuse DeepSpeed config keys that DeepSpeed does not know.

DeepSpeed reads its top-level keys by name and ignores the rest, so
``"zero_optimisation"`` trains silently at ZeRO stage 0. The allow-list is
DeepSpeed's own: the file is parsed by ``DeepSpeedConfig`` through dicts that
record every key it looks up; a key it never looked at is unknown to this
DeepSpeed version, and a key added by a newer version is accepted without a
change here. Sections parsed by DeepSpeed's pydantic models (``zero_optimization``,
``tensorboard``...) already refuse extra keys: their error is turned into the
same one-line message. Sections read key by key (``flops_profiler``,
``activation_checkpointing``...) are checked like the top level.
"""

from __future__ import annotations

import difflib
from collections.abc import KeysView
from pathlib import Path

from opt_scale.utils.config_tools import ConfigError


class _Recording(dict):
    """A dict that notes every key looked up in it (by path)."""

    def __init__(self, data: dict, path: tuple, seen: set):
        super().__init__({k: _Recording(v, path + (k,), seen) if isinstance(v, dict) else v for k, v in data.items()})
        self._path, self._seen = path, seen

    def _note(self, key) -> None:
        self._seen.add(self._path + (key,))

    def get(self, key, default=None):
        self._note(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self._note(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self._note(key)
        return super().__contains__(key)

    def __iter__(self):
        # Overridden so that ``Model(**section)`` goes through keys() and
        # __getitem__ (CPython's fast path for plain dicts would not).
        return super().__iter__()

    def keys(self):
        owner = self

        class Keys(KeysView):
            def __contains__(self, key):  # DeepSpeed writes `KEY in param_dict.keys()`
                return owner.__contains__(key)
        return Keys(self)


def check_known_keys(ds: dict, path: Path) -> None:
    """Raise ConfigError naming the first key of ``ds`` DeepSpeed does not know."""
    import pydantic
    from deepspeed.runtime.config import DeepSpeedConfig
    seen: set[tuple] = set()
    try:
        DeepSpeedConfig(_Recording(ds, (), seen))
    except pydantic.ValidationError as err:
        raise ConfigError(_pydantic_message(err, ds, path)) from None
    for dotted, known in _unknown(ds, seen, ()):
        raise ConfigError(_message(path, dotted, known))


def _unknown(node: dict, seen: set, path: tuple):
    """(dotted key, keys DeepSpeed looked up beside it) for each key never looked up.

    A section none of whose keys was looked up by name went whole to a
    pydantic model, which checked it."""
    looked_up = {p[-1] for p in seen if p[:-1] == path}
    if not path:
        looked_up |= _top_level_constants()
    for key, value in node.items():
        if looked_up and key not in looked_up:
            yield ".".join(path + (key,)), looked_up
        elif isinstance(value, dict):
            yield from _unknown(value, seen, path + (key,))


def _top_level_constants() -> set[str]:
    """Key names DeepSpeed declares in deepspeed.runtime.constants: a few are
    read by the engine rather than by DeepSpeedConfig."""
    from deepspeed.runtime import constants
    return {v for k, v in vars(constants).items() if k.isupper() and isinstance(v, str)}


def _message(path: Path, dotted: str, known) -> str:
    leaf = dotted.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, sorted(str(k) for k in known), n=1)
    hint = f" (did you mean '{dotted[:-len(leaf)]}{close[0]}'?)" if close else ""
    return f"{path}: unknown DeepSpeed key '{dotted}'{hint}; DeepSpeed would ignore it"


def _pydantic_message(err, ds: dict, path: Path) -> str:
    first = err.errors()[0]
    loc = tuple(str(p) for p in first["loc"])
    section = _section_of(ds, loc[0]) if loc else ()
    dotted = ".".join(section + loc)
    if first["type"] == "extra_forbidden":
        model = _model_named(err.title)
        known = set()
        if model is not None:
            for name, field in model.model_fields.items():
                known |= {name, field.alias} - {None}
        return _message(path, dotted, known)
    return f"{path}: DeepSpeed key '{dotted}': {first['msg']}"


def _section_of(ds: dict, key: str, path: tuple = ()) -> tuple:
    """Where (as a key path) the dict holding ``key`` sits in ``ds``: a model
    built with ``Model(**section)`` reports locations inside the section."""
    if key in dict.keys(ds):
        return path
    for k, v in ds.items():
        if isinstance(v, dict) and (found := _section_of(v, key, path + (k,))) is not None:
            return found
    return None if path else ()


def _model_named(title: str):
    from deepspeed.runtime.config_utils import DeepSpeedConfigModel
    todo = [DeepSpeedConfigModel]
    while todo:
        cls = todo.pop()
        if cls.__name__ == title:
            return cls
        todo += cls.__subclasses__()
    return None
