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
from itertools import islice

import torch
from torch.utils.data import IterableDataset, get_worker_info

from .collate import Collator
from .decode import SampleDecoder
from .plan import EpochPlan, Layout, block_permutation, stream_to_global
from .shard_reader import iter_samples
from .sources import ShardMixture
from .substitutes import DamagedShardsError, ShuffleBlock

log = logging.getLogger(__name__)
OPEN_RETRIES = 3


@dataclass
class SlotCursor:
    epoch: int
    consumed: int   # samples of this epoch's slot run already trained on


class SlotBatches(IterableDataset):
    def __init__(self, shards: ShardMixture, layout: Layout, rank: int, seed: int,
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
        return EpochPlan(self.shards.for_epoch(epoch), epoch, self.seed, self.layout,
                         self.epoch_intervals.get(epoch))

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
                try:
                    yield from self._epoch(plan, slot, consumed)
                except DamagedShardsError as err:
                    # Passed on for the main process to raise (TrainLoader): raised in a loader worker,
                    # it would reach the user as a worker traceback instead of one line.
                    yield {"_damaged": str(err)}
                    return
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
            pool = None if any(r is not None for r in raws) else self._borrowed_pool(plan, intervals, block_start)
            block = ShuffleBlock(raws, perm, block_start, B, pool)
            for j in range(n):
                pos = block_start + j
                if pos < consumed:
                    continue
                sample, stand_in = block.take(j, self.decoder, {s.key for s in pending})
                substituted += stand_in
                pending.append(sample)
                if len(pending) == B:
                    batch = self.collator(pending, plan.epoch)
                    batch.update(_epoch=plan.epoch, _slot=slot, _consumed=pos + 1, _substituted=substituted)
                    yield batch
                    pending, substituted = [], 0

    def _borrowed_pool(self, plan: EpochPlan, intervals: list, block_start: int) -> list[dict | None]:
        """Stand-in candidates for a block none of whose samples could be read: the nearest block of the
        slot run (earlier first) that has one. A function of the data alone, so resuming gives the same."""
        K = self.shuffle_block
        for distance in range(1, plan.per_slot // K + 2):
            for start in (block_start - distance * K, block_start + distance * K):
                if 0 <= start < plan.per_slot:
                    raws = list(islice(self._read(plan, intervals, start), min(K, plan.per_slot - start)))
                    if any(r is not None for r in raws):
                        return raws
        raise DamagedShardsError(f"no sample of the {plan.per_slot} of a loader slot in epoch {plan.epoch} could "
                                 "be read: the shards in data.train_shards are missing or damaged")

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
            url = plan.shards[seg.shard].url
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
