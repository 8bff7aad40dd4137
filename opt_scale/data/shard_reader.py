"""Read WebDataset tar shards from anywhere WebDataset can open them.

Local paths are read with random access (tar headers only, member data is
skipped by seeking), so starting mid-shard costs one header scan. ``pipe:``
commands and http(s) URLs are streamed through ``webdataset.gopen``.
"""

from __future__ import annotations

import logging
import os
import tarfile
from collections.abc import Iterator
from urllib.parse import urlparse

log = logging.getLogger(__name__)


def is_local(url: str) -> bool:
    if url.startswith("pipe:"):
        return False
    scheme = urlparse(url).scheme
    return scheme in ("", "file") or len(scheme) == 1  # "C:" on Windows


def local_path(url: str) -> str:
    return urlparse(url).path if url.startswith("file:") else url


def split_member_name(name: str) -> tuple[str, str]:
    """WebDataset convention: the key is the basename up to its first dot."""
    dirname, base = os.path.split(name)
    stem, _, ext = base.partition(".")
    return (f"{dirname}/{stem}" if dirname else stem), ext


def iter_samples(url: str, skip: int = 0, limit: int | None = None,
                 extensions: set[str] | None = None) -> Iterator[dict]:
    """Yield samples ``{"__key__", "__url__", ext: bytes...}`` from one shard.

    ``skip`` samples are passed over without reading their data where the
    source allows seeking. ``extensions`` limits which members are read. A
    local shard cut short yields its whole samples only, with a warning
    (see :class:`ShardMembers`).
    """
    if limit is not None and limit <= 0:
        return
    with open_tar(url) as tar:
        members = ShardMembers(tar, url)
        current: dict | None = None
        previous_exts: set[str] | None = None
        index = -1
        for key, ext, info in members:
            if current is None or key != current["__key__"]:
                if current is not None:
                    previous_exts = current.pop("__exts__")
                    if index >= skip:
                        yield current
                        if limit is not None and index - skip + 1 >= limit:
                            return
                index += 1
                current = {"__key__": key, "__url__": url, "__index__": index, "__exts__": set()}
            current["__exts__"].add(ext)
            if index < skip or (extensions is not None and ext not in extensions):
                continue
            if ext in current:
                raise ValueError(f"{url}: sample {key!r} has two '{ext}' members (members not contiguous?)")
            current[ext] = tar.extractfile(info).read()
        whole = index + 1
        if current is not None and not members.last_is_whole(current.pop("__exts__"), previous_exts):
            whole -= 1
        elif current is not None and index >= skip:
            yield current
        members.warn_if_truncated(whole)


def count_samples(url: str) -> int:
    """Number of (whole) samples in a local shard (reads tar headers only)."""
    keys = 0
    last = None
    exts: set[str] = set()
    previous_exts: set[str] | None = None
    with open_tar(url) as tar:
        members = ShardMembers(tar, url)
        for key, ext, _ in members:
            if key != last:
                keys += 1
                last, previous_exts, exts = key, exts, set()
            exts.add(ext)
        if keys and not members.last_is_whole(exts, previous_exts or None):
            keys -= 1
        members.warn_if_truncated(keys)
    return keys


class ShardMembers:
    """The sample members ``(key, ext, TarInfo)`` of an open shard, in order.

    A local shard cut short (a copy interrupted, a full disk) is read up to
    the cut instead of failing: a cut inside a member (where tarfile raises
    ``ReadError``) or at a member boundary (where tarfile silently sees the
    end of the archive, but the end-of-archive block is missing). The sample
    the cut falls in is dropped unless it has the same members as the one
    before it, so count and reader agree on the whole samples. Streams
    (``pipe:``, http) cannot be measured: their errors propagate (to be retried).
    """

    def __init__(self, tar: tarfile.TarFile, url: str):
        self.tar, self.url = tar, url
        self.size = os.path.getsize(local_path(url)) if is_local(url) else None
        self.truncated = ""          # how the shard was cut ("" if it was not)

    def __iter__(self) -> Iterator[tuple[str, str, tarfile.TarInfo]]:
        entries = iter(self.tar)
        while True:
            try:
                info = next(entries)
            except StopIteration:
                break
            except tarfile.ReadError as exc:
                if self.size is None:
                    raise
                self.truncated = f"cut inside a member ({exc})"
                return
            if self.size is not None and info.offset_data + info.size > self.size:
                self.truncated = f"cut inside member {info.name!r}"
                return
            if not info.isfile():
                continue
            key, ext = split_member_name(info.name)
            if os.path.basename(key).startswith("_"):
                continue  # metadata members
            yield key, ext, info
        if self.size is not None and self.tar.offset + tarfile.BLOCKSIZE > self.size:
            self.truncated = "cut between members or inside a header: no end-of-archive block"

    def last_is_whole(self, exts: set[str], previous_exts: set[str] | None) -> bool:
        """Whether the last sample read is whole: always, unless the shard was cut."""
        return not self.truncated or exts == previous_exts

    def warn_if_truncated(self, whole_samples: int) -> None:
        if self.truncated:
            log.warning("%s is truncated (%s): reading its %d whole sample(s); the rest is lost. Rebuild or "
                        "copy the shard again (`opt-shards verify` checks a build)", self.url, self.truncated,
                        whole_samples)


class open_tar:
    """Context manager giving a TarFile over a local file, pipe or URL."""

    def __init__(self, url: str):
        self.url = url
        self._stream = None
        self._tar = None

    def __enter__(self) -> tarfile.TarFile:
        if is_local(self.url):
            self._tar = tarfile.open(local_path(self.url), mode="r:")
        else:
            from webdataset.gopen import gopen
            self._stream = gopen(self.url, "rb")
            self._tar = tarfile.open(fileobj=self._stream, mode="r|*")
        return self._tar

    def __exit__(self, *exc) -> None:
        if self._tar is not None:
            self._tar.close()
        if self._stream is not None:
            self._stream.close()
