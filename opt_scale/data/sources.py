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
from dataclasses import dataclass
from urllib.parse import urljoin

import braceexpand

from .shard_reader import count_samples, is_local


@dataclass(frozen=True)
class ShardInfo:
    url: str
    num_samples: int


class ShardSpecError(ValueError):
    pass


def resolve_shards(spec: str, key: str = "data.train_shards") -> list[ShardInfo]:
    if not spec:
        raise ShardSpecError(f"config key '{key}' is empty: give shard paths, a brace pattern or an index .json")
    shards: list[ShardInfo] = []
    for part in _split_top_level(spec):
        if part.endswith(".json"):
            shards.extend(read_index(part))
            continue
        for url in braceexpand.braceexpand(part):
            if is_local(url):
                paths = sorted(glob.glob(url)) if glob.has_magic(url) else [url]
                if not paths or not all(os.path.isfile(p) for p in paths):
                    raise ShardSpecError(f"config key '{key}': no shard file at {url!r}")
                shards.extend(ShardInfo(p, count_samples(p)) for p in paths)
            else:
                raise ShardSpecError(
                    f"config key '{key}': remote shard {url!r} has no known sample count; "
                    "pass the dataset index written by `opt-shards index` (a .json) instead of the shard list")
    if not shards:
        raise ShardSpecError(f"config key '{key}' ({spec!r}) names no shards")
    return shards


def read_index(location: str) -> list[ShardInfo]:
    """Read a wids-format index; relative shard URLs resolve against it."""
    if is_local(location):
        with open(location) as f:
            desc = json.load(f)
        base = os.path.dirname(os.path.abspath(location))
        resolve = lambda u: u if (not is_local(u) or os.path.isabs(u)) else os.path.join(base, u)  # noqa: E731
    else:
        from webdataset.gopen import gopen
        with gopen(location, "rb") as f:
            desc = json.loads(f.read())
        resolve = lambda u: u if "://" in u or u.startswith("pipe:") else urljoin(location, u)  # noqa: E731
    if desc.get("__kind__") != "wids-shard-index-v1" or "shardlist" not in desc:
        raise ShardSpecError(f"{location} is not a dataset index (wids-shard-index-v1)")
    return [ShardInfo(resolve(s["url"]), int(s["nsamples"])) for s in desc["shardlist"]]


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
