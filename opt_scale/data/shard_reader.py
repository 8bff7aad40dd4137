"""Read WebDataset tar shards from anywhere WebDataset can open them.

Local paths are read with random access (tar headers only, member data is
skipped by seeking), so starting mid-shard costs one header scan. ``pipe:``
commands and http(s) URLs are streamed through ``webdataset.gopen``.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator
from urllib.parse import urlparse


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
    source allows seeking. ``extensions`` limits which members are read.
    """
    if limit is not None and limit <= 0:
        return
    with open_tar(url) as tar:
        current: dict | None = None
        index = -1
        for info in tar:
            if not info.isfile():
                continue
            key, ext = split_member_name(info.name)
            if os.path.basename(key).startswith("_"):
                continue  # metadata members
            if current is None or key != current["__key__"]:
                if current is not None and index >= skip:
                    yield current
                    if limit is not None and index - skip + 1 >= limit:
                        return
                index += 1
                current = {"__key__": key, "__url__": url, "__index__": index}
            if index < skip or (extensions is not None and ext not in extensions):
                continue
            if ext in current:
                raise ValueError(f"{url}: sample {key!r} has two '{ext}' members (members not contiguous?)")
            current[ext] = tar.extractfile(info).read()
        if current is not None and index >= skip:
            yield current


def count_samples(url: str) -> int:
    """Number of samples in a local shard (reads tar headers only)."""
    keys = 0
    last = None
    with open_tar(url) as tar:
        for info in tar:
            if info.isfile():
                key, _ = split_member_name(info.name)
                if os.path.basename(key).startswith("_"):
                    continue
                if key != last:
                    keys += 1
                    last = key
    return keys


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
