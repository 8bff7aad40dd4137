"""The per-slot batch stream: read, block-shuffle, decode, mask, collate.

One instance serves one rank; each DataLoader worker picks its slot from its
worker id. A worker reads its slot's samples in plan order, ``shuffle_block``
at a time, emits each block in a seeded permutation, and batches them. The
sequence of batches is a pure function of (shards, seed, layout, cursor).
"""

from __future__ import annotations

import logging
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import IterableDataset, get_worker_info

from .collate import Collator
from .decode import SampleDecoder, SampleError
from .plan import EpochPlan, Layout, block_permutation, stream_to_global
from .shard_reader import iter_samples
from .sources import ShardInfo

log = logging.getLogger(__name__)
OPEN_RETRIES = 3


@dataclass
class SlotCursor:
    epoch: int
    consumed: int   # samples of this epoch's slot run already trained on


class SlotBatches(IterableDataset):
    def __init__(self, shards: list[ShardInfo], layout: Layout, rank: int, seed: int,
                 start: dict[int, SlotCursor], epoch_intervals: dict[int, list],
                 decoder: SampleDecoder, collator: Collator, shuffle_block: int, worker_offset: int = 0):
        self.shards = shards
        # DataLoader always starts its round-robin at worker 0; a resumed
        # rank whose next batch belongs to slot k rotates the worker -> slot
        # map by k so the interleaving continues exactly as before.
        self.worker_offset = worker_offset
        self.layout = layout
        self.rank = rank
        self.seed = seed
        self.start = start
        self.epoch_intervals = epoch_intervals
        self.decoder = decoder
        self.collator = collator
        self.shuffle_block = shuffle_block

    def plan(self, epoch: int) -> EpochPlan:
        return EpochPlan(self.shards, epoch, self.seed, self.layout, self.epoch_intervals.get(epoch))

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        if info is not None:
            torch.set_num_threads(1)
        slot = self.layout.slot(self.rank, (worker + self.worker_offset) % self.layout.workers_per_rank)
        cursor = self.start[slot]
        epoch, consumed = cursor.epoch, cursor.consumed
        while True:
            plan = self.plan(epoch)
            if plan.per_slot == 0:
                raise ValueError(
                    f"epoch {epoch} has {sum(b - a for a, b in plan.intervals)} samples, fewer than one batch per "
                    f"slot ({self.layout.num_slots} slots = world_size x data.num_workers, batch "
                    f"{self.layout.batch_size}); use more data, fewer loader workers or a smaller batch")
            if consumed < plan.per_slot:
                yield from self._epoch(plan, slot, consumed)
            epoch, consumed = epoch + 1, 0

    def _epoch(self, plan: EpochPlan, slot: int, consumed: int) -> Iterator[dict]:
        intervals = plan.slot_intervals(slot)
        K, B = self.shuffle_block, self.layout.batch_size
        first_block = (consumed // K) * K
        reader = self._read(plan, intervals, first_block)
        pending = []
        substituted = 0
        for block_start in range(first_block, plan.per_slot, K):
            n = min(K, plan.per_slot - block_start)
            raws = [next(reader) for _ in range(n)]
            perm = block_permutation(self.seed, plan.epoch, stream_to_global(intervals, block_start), n)
            for j, idx in enumerate(perm):
                pos = block_start + j
                if pos < consumed:
                    continue
                sample, bad = self._decode_or_substitute(raws, int(idx))
                substituted += bad
                pending.append(sample)
                if len(pending) == B:
                    batch = self.collator(pending, plan.epoch)
                    batch.update(_epoch=plan.epoch, _slot=slot, _consumed=pos + 1, _substituted=substituted)
                    yield batch
                    pending, substituted = [], 0

    def _decode_or_substitute(self, raws: list, idx: int):
        """Decode ``raws[idx]``; if it is corrupt or missing, log it and use the
        next decodable sample of the block, so batch counts stay equal on
        every slot (an unequal count would hang the collectives)."""
        n = len(raws)
        for step in range(n):
            raw = raws[(idx + step) % n]
            if raw is None:
                continue
            try:
                sample = self.decoder(raw)
            except SampleError as err:
                log.warning("skipping corrupt sample in %s: %s", raw.get("__url__"), err)
                raws[(idx + step) % n] = None
                continue
            return sample, int(step > 0)
        raise RuntimeError("every sample of a shuffle block failed to decode; the shards are damaged "
                           "(run `opt-shards verify`)")

    def _read(self, plan: EpochPlan, intervals: list, start: int) -> Iterator[dict | None]:
        """Raw samples of the slot run from stream position ``start`` on;
        ``None`` stands for a sample a short shard failed to deliver."""
        skip = start
        for seg in plan.segments(intervals):
            length = seg.stop - seg.start
            if skip >= length:
                skip -= length
                continue
            first = seg.start + skip
            skip = 0
            url = self.shards[seg.shard].url
            got = 0
            for raw in self._open_with_retries(url, first, seg.stop - first):
                got += 1
                yield raw
            if got < seg.stop - first:
                log.warning("%s delivered %d samples from offset %d, the index promised %d; padding",
                            url, got, first, seg.stop - first)
                for _ in range(seg.stop - first - got):
                    yield None
        while True:  # never reached with a consistent plan; keeps next() total
            yield None

    def _open_with_retries(self, url: str, skip: int, limit: int) -> Iterator[dict]:
        delivered = 0
        for attempt in range(OPEN_RETRIES + 1):
            try:
                for raw in iter_samples(url, skip=skip + delivered, limit=limit - delivered):
                    delivered += 1
                    yield raw
                return
            except (OSError, EOFError, ValueError, tarfile.TarError) as exc:
                if attempt == OPEN_RETRIES:
                    log.error("giving up on %s after %d attempts: %s", url, attempt + 1, exc)
                    return
                wait = 2 ** attempt
                log.warning("reading %s failed (%s); retry %d in %ds", url, exc, attempt + 1, wait)
                time.sleep(wait)
