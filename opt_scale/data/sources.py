"""Turn a shard specification into a list of shards with their sample counts.

A spec is one of, or a comma-separated mix of:

* a dataset index JSON (``.json``; local path or URL) as written by
  ``opt-shards index`` in the ``wids`` format: shard URLs are resolved
  relative to the index's own location;
* local tar paths, globs (``shards/*.tar``) or brace patterns
  (``shards-{000000..000511}.tar``);
* ``pipe:`` commands and ``http(s)://`` URLs (brace patterns allowed).

Exact epochs need every shard's sample count up front. Indexes carry it;
local tars are counted from their headers (a tar cut short counts its whole
samples, with a warning); remote shards without an index are refused with a
message saying what to pass instead.
"""

from __future__ import annotations

import glob
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urljoin

import braceexpand

from opt_scale.utils.config_tools import ConfigError
from opt_scale.utils.input_paths import describe

from .shard_reader import count_samples, is_local


@dataclass(frozen=True)
class ShardInfo:
    url: str
    num_samples: int


class ShardSpecError(ConfigError):
    """A shard specification names nothing usable; the message names its key or flag."""


def resolve_shards(spec: str, key: str = "data.train_shards") -> list[ShardInfo]:
    shards: list[ShardInfo] = []
    for kind, location in _locations(spec, key):
        if kind == "index":
            shards.extend(read_index(location, key))
        else:
            shards.append(ShardInfo(location, _count_samples(location, key)))
    if not shards:
        raise ShardSpecError(f"{describe(key)} ({spec!r}) names no shards")
    if not any(s.num_samples for s in shards):
        raise ShardSpecError(f"{describe(key)} ({spec!r}): every shard it names is empty (0 samples)")
    return shards


def check_shard_spec(spec: str, key: str = "data.train_shards") -> None:
    """What :func:`resolve_shards` refuses, found without counting samples
    (a stat, an index read, one tar header per local shard): for start-up
    checks that must take a second however many shards there are."""
    for kind, location in _locations(spec, key):
        if kind == "index":
            read_index(location, key)
        else:
            try:
                with tarfile.open(location) as tar:
                    tar.next()
            except (tarfile.TarError, OSError) as err:
                raise _not_a_tar(location, key, err) from err


def read_index(location: str, key: str = "data.train_shards") -> list[ShardInfo]:
    """Read a wids-format index; relative shard URLs resolve against it."""
    if is_local(location):
        try:
            with open(location) as f:
                desc = json.load(f)
        except OSError as err:
            raise ShardSpecError(f"{describe(key)}: cannot read the index {location!r} ({err.strerror})") from err
        except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
            raise ShardSpecError(f"{describe(key)}: the index {location!r} is not valid JSON ({err})") from err
        base = os.path.dirname(os.path.abspath(location))
        resolve = lambda u: u if (not is_local(u) or os.path.isabs(u)) else os.path.join(base, u)  # noqa: E731
    else:
        from webdataset.gopen import gopen
        with gopen(location, "rb") as f:
            desc = json.loads(f.read())
        resolve = lambda u: u if "://" in u or u.startswith("pipe:") else urljoin(location, u)  # noqa: E731
    if not isinstance(desc, dict) or desc.get("__kind__") != "wids-shard-index-v1" or "shardlist" not in desc:
        raise ShardSpecError(f"{describe(key)}: {location} is not a dataset index (wids-shard-index-v1)")
    shards = [ShardInfo(resolve(s["url"]), int(s["nsamples"])) for s in desc["shardlist"]]
    for shard in shards:
        # Found now, not by a loader worker mid-epoch: an index copied without its shards.
        if is_local(shard.url) and not os.path.isfile(shard.url):
            raise ShardSpecError(f"{describe(key)}: the index {location} lists {shard.url!r}, which does not exist")
    return shards


def _locations(spec: str, key: str) -> Iterator[tuple[str, str]]:
    """("index", location) or ("tar", local path) for every part of ``spec``;
    local paths are checked to exist."""
    if not spec:
        raise ShardSpecError(f"{describe(key)} is empty: give shard paths, a brace pattern or an index .json")
    for part in _split_top_level(spec):
        if part.endswith(".json"):
            yield "index", part
            continue
        for url in braceexpand.braceexpand(part):
            if not is_local(url):
                raise ShardSpecError(
                    f"{describe(key)}: remote shard {url!r} has no known sample count; "
                    "pass the dataset index written by `opt-shards index` (a .json) instead of the shard list")
            if os.path.isdir(url):
                raise ShardSpecError(f"{describe(key)}: {url!r} is a directory; give the index .json that "
                                     f"`opt-shards build` wrote in it, or a pattern such as {url.rstrip('/')}/*.tar")
            paths = sorted(glob.glob(url)) if glob.has_magic(url) else [url]
            if not paths or not all(os.path.isfile(p) for p in paths):
                raise ShardSpecError(f"{describe(key)}: no shard file at {url!r}")
            for path in paths:
                yield "tar", path


def _count_samples(path: str, key: str) -> int:
    try:
        return count_samples(path)
    except (tarfile.TarError, OSError) as err:
        raise _not_a_tar(path, key, err) from err


def _not_a_tar(path: str, key: str, err: Exception) -> ShardSpecError:
    reason = "an empty file" if os.path.isfile(path) and os.path.getsize(path) == 0 else f"unreadable: {err}"
    return ShardSpecError(f"{describe(key)}: shard {path!r} is not a tar file ({reason})")


def _split_top_level(spec: str) -> list[str]:
    """Split on commas that are not inside a brace pattern."""
    parts, depth, current = [], 0, []
    for ch in spec:
        depth += ch == "{"
        depth -= ch == "}"
        if ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    parts.append("".join(current).strip())
    return [p for p in parts if p]
