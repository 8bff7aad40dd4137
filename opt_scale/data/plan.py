"""Epoch plans: which samples each (rank, loader worker) reads, in what order.

The shards of an epoch are shuffled (seeded by epoch) and laid end to end;
a sample's *global position* is its place in that sequence. An epoch plan is
a list of global-position intervals to consume, split into equal contiguous
runs, one per slot (rank x worker), each a whole number of batches. So every
rank and worker yields the same number of batches whatever the shard count,
including fewer shards than slots: no rank waits forever at an epoch's end.
The few samples beyond the last whole batch per slot (fewer than slots x
batch size) are left out of that epoch, not carried into the next: they are
the tail of the epoch's shard order, and the next epoch's order differs, so
each epoch leaves out other samples. Nothing carried over means an epoch's
plan depends on its own number only (and a resumed cursor's intervals),
which keeps resume exact and every slot's batch count equal.

A slot's cursor is just (epoch, samples consumed). From the cursors of every
slot the unread remainder of an epoch is known exactly, which lets a resumed
run continue the epoch on the same layout or re-split the remainder across a
different one, with no sample read twice.
"""

from __future__ import annotations

import hashlib
import json
from bisect import bisect_right
from dataclasses import dataclass

import numpy as np

from .sources import ShardInfo


@dataclass(frozen=True)
class Layout:
    world_size: int
    workers_per_rank: int   # max(1, data.num_workers): the main process is one worker
    batch_size: int

    @property
    def num_slots(self) -> int:
        return self.world_size * self.workers_per_rank

    def slot(self, rank: int, worker: int) -> int:
        return rank * self.workers_per_rank + worker


@dataclass(frozen=True)
class Segment:
    """A run of consecutive samples inside one shard."""
    shard: int          # index into the shard list
    start: int          # first sample offset within the shard
    stop: int           # one past the last
    global_start: int   # global position of ``start`` in the epoch order


class EpochPlan:
    def __init__(self, shards: list[ShardInfo], epoch: int, seed: int, layout: Layout,
                 intervals: list[tuple[int, int]] | None = None):
        self.shards = shards
        self.epoch = epoch
        self.seed = seed
        self.layout = layout
        self.order = shard_order(len(shards), seed, epoch)
        counts = [shards[i].num_samples for i in self.order]
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.total = int(self.starts[-1])
        self.intervals = [(0, self.total)] if intervals is None else [tuple(map(int, iv)) for iv in intervals]
        available = sum(b - a for a, b in self.intervals)
        unit = layout.num_slots * layout.batch_size
        self.per_slot = (available // unit) * layout.batch_size

    @property
    def batches_per_slot(self) -> int:
        return self.per_slot // self.layout.batch_size

    def slot_intervals(self, slot: int) -> list[tuple[int, int]]:
        """Global-position intervals (total length ``per_slot``) of one slot."""
        lo, hi = slot * self.per_slot, (slot + 1) * self.per_slot
        out, seen = [], 0
        for a, b in self.intervals:
            n = b - a
            s, e = max(lo, seen), min(hi, seen + n)
            if s < e:
                out.append((a + s - seen, a + e - seen))
            seen += n
            if seen >= hi:
                break
        return out

    def segments(self, intervals: list[tuple[int, int]]) -> list[Segment]:
        """Split global intervals at shard boundaries."""
        segs = []
        for a, b in intervals:
            pos = a
            while pos < b:
                k = bisect_right(self.starts, pos) - 1
                shard_end = int(self.starts[k + 1])
                stop = min(b, shard_end)
                base = int(self.starts[k])
                segs.append(Segment(self.order[k], pos - base, stop - base, pos))
                pos = stop
        return segs

    def remainder(self, consumed: list[int], shuffle_block: int) -> list[tuple[int, int]]:
        """Unread global intervals of this epoch, given the samples each slot
        has emitted. A slot emits each block of ``shuffle_block`` samples in a
        seeded permutation, so the consumed part of a partly read block is
        scattered; it is recomputed here with the same permutation."""
        out: list[tuple[int, int]] = []
        for slot, n_done in enumerate(consumed):
            if n_done >= self.per_slot:
                continue
            intervals = self.slot_intervals(slot)
            start = (n_done // shuffle_block) * shuffle_block
            n = min(shuffle_block, self.per_slot - start)
            perm = block_permutation(self.seed, self.epoch, stream_to_global(intervals, start), n)
            taken = set(perm[: n_done - start].tolist())
            for j in range(n):
                if j not in taken:
                    g = stream_to_global(intervals, start + j)
                    out.append((g, g + 1))
            out.extend(stream_range_to_global(intervals, start + n, self.per_slot))
        return _merge(out)


def stream_to_global(intervals: list[tuple[int, int]], stream_pos: int) -> int:
    """Global position of the ``stream_pos``-th sample of a slot run."""
    for a, b in intervals:
        if stream_pos < b - a:
            return a + stream_pos
        stream_pos -= b - a
    return intervals[-1][1] if intervals else 0


def stream_range_to_global(intervals: list[tuple[int, int]], start: int, stop: int) -> list[tuple[int, int]]:
    out, seen = [], 0
    for a, b in intervals:
        lo, hi = max(start, seen), min(stop, seen + b - a)
        if lo < hi:
            out.append((a + lo - seen, a + hi - seen))
        seen += b - a
    return out


def shard_order(num_shards: int, seed: int, epoch: int) -> list[int]:
    rng = np.random.default_rng([seed, epoch, 0x5A4D])
    return [int(i) for i in rng.permutation(num_shards)]


def block_permutation(seed: int, epoch: int, first_global: int, n: int) -> np.ndarray:
    """Order in which a block of ``n`` consecutively read samples is emitted."""
    return np.random.default_rng([seed, epoch, first_global, 0xB10C]).permutation(n)


def shards_fingerprint(shards: list[ShardInfo]) -> str:
    """Identifies the data set a cursor belongs to (names and counts, not hosts)."""
    items = [[s.url.rsplit("/", 1)[-1], s.num_samples] for s in shards]
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]


def _merge(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out
