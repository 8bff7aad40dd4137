"""Turn a shard specification into a list of shards with their sample counts.

A spec is one of, or a comma-separated mix of:

* a dataset index JSON (``.json``; local path or URL) as written by
  ``opt-shards index`` in the ``wids`` format: shard URLs are resolved
  relative to the index's own location;
* local tar paths, globs (``shards/*.tar``) or brace patterns
  (``shards-{000000..000511}.tar``);
* ``pipe:`` commands and ``http(s)://`` URLs (brace patterns allowed).

With ``data.train_weights`` (one weight per comma-separated part), the parts
are the sources of a weighted mixture (:class:`ShardMixture`): each epoch
takes whole shards from every source in proportion to its weight.

Exact epochs need every shard's sample count up front. Indexes carry it;
local tars are counted from their headers (a tar cut short counts its whole
samples, with a warning); remote shards without an index are refused with a
message saying what to pass instead.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urljoin

import braceexpand
import numpy as np

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


class ShardMixture:
    """The shards of each epoch: every shard of a plain spec; for a weighted
    mixture, each source's share of whole shards.

    An epoch reads as many samples as all sources hold together; source i
    gets ``round(w_i / sum(w) x that / its mean shard size)`` shards (at
    least one when its weight is positive): fewer than it has subsamples it,
    more repeats it. They are taken from the source's own endless stream of
    shards (pass after pass over its shards, each pass in a seeded order), so
    successive epochs go on through the stream and every shard of a source is
    read equally often. A shard repeated within one epoch gives its samples
    the same masks both times (they derive from (seed, epoch, key)). An
    epoch's list is a function of (seed, epoch) alone, which keeps the
    loader's cursor and its exact resume as they are."""

    def __init__(self, sources: list[list[ShardInfo]], weights: tuple[float, ...] = (), seed: int = 0,
                 names: list[str] | None = None):
        self.sources = [list(src) for src in sources]
        self.names = names or [f"source {i}" for i in range(len(sources))]
        self.weights = tuple(float(w) for w in weights)
        self.seed = seed
        if not self.weights:
            self.shards_per_epoch = [len(src) for src in self.sources]
            return
        total = sum(s.num_samples for src in self.sources for s in src)
        self.shards_per_epoch = []
        for src, w in zip(self.sources, self.weights):
            mean = sum(s.num_samples for s in src) / len(src)
            want = w / sum(self.weights) * total / max(mean, 1e-9)
            self.shards_per_epoch.append(0 if w == 0 else max(1, round(want)))

    @property
    def weighted(self) -> bool:
        return bool(self.weights)

    def for_epoch(self, epoch: int) -> list[ShardInfo]:
        return [s for part in self.epoch_parts(epoch) for s in part]

    def epoch_parts(self, epoch: int) -> list[list[ShardInfo]]:
        """Each source's shards in ``epoch``."""
        if not self.weighted:
            return [list(src) for src in self.sources]
        parts = []
        for i, (src, k) in enumerate(zip(self.sources, self.shards_per_epoch)):
            part, orders = [], {}
            for j in range(epoch * k, (epoch + 1) * k):
                stream_pass, index = divmod(j, len(src))
                if stream_pass not in orders:
                    orders[stream_pass] = self._pass_order(i, stream_pass, len(src))
                part.append(src[int(orders[stream_pass][index])])
            parts.append(part)
        return parts

    def _pass_order(self, source: int, stream_pass: int, n: int) -> np.ndarray:
        return np.random.default_rng([self.seed, source, stream_pass, 0x313E]).permutation(n)

    def fingerprint(self) -> str:
        """Identifies what a cursor was made on: the shards (names and counts), and the weights."""
        from .plan import shards_fingerprint
        plain = shards_fingerprint([s for src in self.sources for s in src])
        if not self.weighted:
            return plain  # as before mixtures existed: older cursors still match
        return hashlib.sha256(f"{plain}:{self.weights}:{self.shards_per_epoch}".encode()).hexdigest()[:16]

    def describe(self) -> list[str]:
        """One line per source: its shards and samples per epoch and its share."""
        lines = []
        per_epoch = [sum(s.num_samples for s in part) for part in self.epoch_parts(0)]
        total = max(1, sum(per_epoch))
        for i, src in enumerate(self.sources):
            lines.append(f"{self.names[i]}: {self.shards_per_epoch[i]} of {len(src)} shards per epoch, "
                         f"~{per_epoch[i]} samples ({100 * per_epoch[i] / total:.1f}%)")
        return lines


def resolve_mixture(spec: str, weights: tuple[float, ...] = (), seed: int = 0,
                    key: str = "data.train_shards") -> ShardMixture:
    """A plain spec (no weights), or one source per comma-separated part of
    ``spec`` with the weight of the same place in ``weights``."""
    if not weights:
        return ShardMixture([resolve_shards(spec, key)])
    parts = _split_top_level(spec)
    if len(parts) != len(weights):
        raise ShardSpecError(f"data.train_weights has {len(weights)} weights but {describe(key)} has {len(parts)} "
                             "comma-separated sources: give one weight per source")
    if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise ShardSpecError(f"data.train_weights={list(weights)}: weights must be finite, >= 0, "
                             "and not all zero")
    return ShardMixture([resolve_shards(part, key) for part in parts], tuple(weights), seed, parts)


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
