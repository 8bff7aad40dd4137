"""Deterministic, atomic WebDataset shard writing.

The tar itself is written by ``webdataset.TarWriter``, with every header
field that could vary between runs (mtime, owner, mode) fixed, so the same
input yields byte-identical shards. This module adds what TarWriter leaves
to its caller: atomicity, a checksum, and key checks. A shard is written as
``NAME.tmp-<host>-<pid>`` and renamed into place only once complete: a reader
never sees a half-written shard under its final name. The checksum is computed
while writing, so finishing a shard never re-reads it.
"""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

from webdataset import TarWriter

FIXED_MTIME = 0  # 1970-01-01: identical input gives identical bytes
TMP_MARKER = ".tmp-"


def temp_name(path: Path) -> Path:
    """A temporary sibling unique across the hosts of a cluster sharing the directory."""
    return path.with_name(f"{path.name}{TMP_MARKER}{socket.gethostname()}-{os.getpid()}")


def remove_stale_temps(path: Path) -> int:
    """Delete temporaries of ``path`` left by a killed run; return how many."""
    removed = 0
    for stale in path.parent.glob(f"{path.name}{TMP_MARKER}*"):
        stale.unlink(missing_ok=True)
        removed += 1
    return removed


class _HashingFile:
    """File wrapper that feeds every written byte to sha256.

    (No md5 for wids' optional ``md5sum``: it would cost ~1 ms per sample.)
    """

    def __init__(self, f):
        self._f = f
        self.sha256 = hashlib.sha256()

    def write(self, data) -> int:
        self.sha256.update(data)
        return self._f.write(data)

    def tell(self) -> int:
        return self._f.tell()


class ShardWriter:
    """Write samples (``{ext: bytes}`` keyed by a dot-free key) to one tar."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.tmp_path = temp_name(self.path)
        self._file = open(self.tmp_path, "wb")
        self._hashing = _HashingFile(self._file)
        # encoder=False: members arrive as bytes, written as they are.
        self._tar = TarWriter(self._hashing, user="", group="", mode=0o444, mtime=FIXED_MTIME, encoder=False)
        self.num_samples = 0
        self.member_bytes: dict[str, int] = {}
        self._keys: set[str] = set()
        self.sha256 = ""

    def write(self, key: str, members: dict[str, bytes]) -> None:
        if "." in key or "/" in key or not key or key.startswith("_"):
            raise ValueError(f"invalid sample key {key!r}: keys hold no dots or slashes and do not start with '_'")
        if key in self._keys:
            raise ValueError(f"duplicate sample key {key!r} in {self.path.name}")
        self._keys.add(key)
        # TarWriter writes one sample's members contiguously, in sorted order.
        self._tar.write({"__key__": key, **members})
        for ext, data in members.items():
            self.member_bytes[ext] = self.member_bytes.get(ext, 0) + len(data)
        self.num_samples += 1

    def commit(self) -> str:
        """Finish the tar, fsync it and rename it into place; return its sha256."""
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self.sha256 = self._hashing.sha256.hexdigest()
        os.replace(self.tmp_path, self.path)
        return self.sha256

    def abort(self) -> None:
        try:
            self._tar.close()
            self._file.close()
        finally:
            self.tmp_path.unlink(missing_ok=True)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and not self._file.closed:
            self.abort()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a small file (sidecar, index) so readers see all of it or none."""
    path = Path(path)
    tmp = temp_name(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
