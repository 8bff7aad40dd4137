"""Early checks of the paths a command is given, with errors that name the key or flag.

A missing tokenizer found by the loader after the model is built costs
minutes and prints a traceback per rank; these checks cost a ``stat`` and
run first. ``key`` is a config key (``data.tokenizer``), a flag
(``--checkpoint``) or a positional argument's name (``SHARD``); messages
say which of the three it is.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .cli_errors import UsageError


def describe(key: str) -> str:
    """``config key 'data.tokenizer'``, ``--checkpoint`` or ``SHARD``."""
    if key.startswith("-") or key.isupper():
        return key
    return f"config key '{key}'"


def existing_file(path: str | os.PathLike, key: str, hint: str = "") -> Path:
    """``path`` names a readable regular file (not a directory, FIFO or device)."""
    p = _given(path, key, hint)
    if p.is_dir():
        raise UsageError(f"{describe(key)}: {str(p)!r} is a directory, not a file{_tail(hint)}")
    if not p.exists():
        raise UsageError(f"{describe(key)}: no such file {str(p)!r}{_tail(hint)}")
    if not p.is_file():
        raise UsageError(f"{describe(key)}: {str(p)!r} is not a regular file{_tail(hint)}")
    if not os.access(p, os.R_OK):
        raise UsageError(f"{describe(key)}: {str(p)!r} is not readable (permission denied)")
    return p


def existing_dir(path: str | os.PathLike, key: str, hint: str = "") -> Path:
    p = _given(path, key, hint)
    if not p.exists():
        raise UsageError(f"{describe(key)}: no such directory {str(p)!r}{_tail(hint)}")
    if not p.is_dir():
        raise UsageError(f"{describe(key)}: {str(p)!r} is not a directory{_tail(hint)}")
    return p


def writable_dir(path: str | os.PathLike, key: str) -> Path:
    """``path`` is a directory this process can create (if missing) and write in.

    Probed by creating and removing a file in it, or in its nearest existing
    ancestor: permission bits do not tell (root, read-only mounts, /proc)."""
    p = _given(path, key, "")
    probe_in = p
    while not probe_in.exists():
        if probe_in.is_symlink():  # a dangling link: mkdir would fail on it
            raise UsageError(f"{describe(key)}: {str(probe_in)!r} is a broken symbolic link")
        probe_in = probe_in.parent
    if not probe_in.is_dir():
        raise UsageError(f"{describe(key)}: cannot create {str(p)!r}: {str(probe_in)!r} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".opt-scale-write-test-", dir=probe_in)
    except OSError as err:
        raise UsageError(f"{describe(key)}: cannot write in {str(probe_in)!r} ({err.strerror})") from err
    os.close(fd)
    os.unlink(probe)
    return p


def _given(path: str | os.PathLike, key: str, hint: str) -> Path:
    if not str(path):
        raise UsageError(f"{describe(key)} is empty{_tail(hint)}")
    return Path(path).expanduser()


def _tail(hint: str) -> str:
    return f"; {hint}" if hint else ""
