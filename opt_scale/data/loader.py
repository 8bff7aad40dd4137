"""The training loader of one rank, and its checkpointable cursor.

Wraps a ``DataLoader`` over :class:`SlotBatches` and records, for each of
this rank's slots, how far training has consumed (not how far the workers
have prefetched). The global cursor (every rank's slots) goes into the
checkpoint; from it a resumed run continues each slot exactly where it was,
or, on a different rank/worker layout, re-splits the unread remainder of the
epoch so that no sample is read twice.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import torch
from torch.utils.data import DataLoader

from opt_scale.model.config import ModelConfig
from opt_scale.tasks.config import TasksConfig

from .capacity import require_one_batch_per_slot
from .collate import Collator
from .config import DataConfig
from .dataset import SlotBatches, SlotCursor
from .decode import SampleDecoder
from .plan import EpochPlan, Layout
from .sources import ShardInfo, ShardMixture
from .substitutes import DamagedShardsError, SubstitutionLimit
from .tokenizer import Tokenizer
from .worker_signals import ignore_stop_signals

log = logging.getLogger(__name__)


@dataclass
class DataCursor:
    """Where every slot of a run stands; saved in the checkpoint's client state."""
    layout: dict
    seed: int
    fingerprint: str
    slots: list[dict]                                    # [{"epoch", "consumed"}] per slot
    epoch_intervals: dict = field(default_factory=dict)  # epoch -> intervals, for partial epochs
    rank_batches: list = field(default_factory=list)     # batches each rank consumed (round-robin phase)
    shuffle_block: int = 0                               # data.shuffle_block it was read with (0: not recorded)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DataCursor":
        d = dict(d)
        d["epoch_intervals"] = {int(k): [tuple(iv) for iv in v] for k, v in d.get("epoch_intervals", {}).items()}
        return cls(**d)


class CursorMismatch(ValueError):
    pass


class TrainLoader:
    def __init__(self, shards: list[ShardInfo] | ShardMixture, data_cfg: DataConfig, model_cfg: ModelConfig,
                 tasks_cfg: TasksConfig, tokenizer: Tokenizer, rank: int, world_size: int,
                 batch_size: int, cursor: DataCursor | None = None, pin_memory: bool = False):
        # A plain shard list, or a weighted mixture whose shards differ by epoch.
        self.shards = shards if isinstance(shards, ShardMixture) else ShardMixture([shards])
        shards = self.shards
        self.rank = rank
        self.seed = data_cfg.seed
        self.shuffle_block = data_cfg.shuffle_block
        self.layout = Layout(world_size, max(1, data_cfg.num_workers), batch_size)
        require_one_batch_per_slot(shards.for_epoch(0), data_cfg, world_size, batch_size)
        self.fingerprint = shards.fingerprint()
        start, self.epoch_intervals, self.batches_consumed = self._start_from(cursor)
        self.slot_state = {s: start[s] for s in self._my_slots()}
        self.dataset = SlotBatches(shards, self.layout, rank, self.seed, start, self.epoch_intervals,
                                   SampleDecoder(model_cfg, tokenizer, data_cfg.mel_on_device),
                                   Collator(model_cfg, tasks_cfg, tokenizer, self.seed),
                                   data_cfg.shuffle_block,
                                   worker_offset=self.batches_consumed % self.layout.workers_per_rank)
        workers = data_cfg.num_workers
        # A generator of its own: creating the iterator draws the workers' base
        # seed from it, and from the global torch RNG otherwise. That draw comes
        # before the first step of every process, so a resumed run would shift
        # the dropout RNG it had just restored from the checkpoint by one draw.
        # (Our batches never use the workers' seed: masks come from per-sample seeds.)
        self.loader = DataLoader(self.dataset, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                                 generator=torch.Generator().manual_seed(self.seed),
                                 prefetch_factor=data_cfg.prefetch_factor if workers else None,
                                 persistent_workers=False, worker_init_fn=ignore_stop_signals if workers else None)
        self._iter = None
        self.epoch = min(c.epoch for c in start.values())
        self.substituted = 0   # stand-ins for missing or corrupt samples, since this process started
        self._reported = 0
        self.substitution_limit = SubstitutionLimit(data_cfg.max_substituted_fraction, rank)
        self._epoch_samples: dict[int, int] = {}

    def new_substitutes(self) -> int:
        """Stand-ins served since the last call (for the training logs)."""
        new, self._reported = self.substituted - self._reported, self.substituted
        return new

    def _my_slots(self) -> list[int]:
        return [self.layout.slot(self.rank, w) for w in range(self.layout.workers_per_rank)]

    def batches_per_epoch(self, epoch: int) -> int:
        """Batches each rank yields in ``epoch`` (all workers together)."""
        plan = EpochPlan(self.shards.for_epoch(epoch), epoch, self.seed, self.layout,
                         self.epoch_intervals.get(epoch))
        return plan.batches_per_slot * self.layout.workers_per_rank

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self._iter is None:
            self._iter = iter(self.loader)
        batch = next(self._iter)
        if "_damaged" in batch:
            raise DamagedShardsError(batch["_damaged"])
        slot = batch.pop("_slot")
        epoch = batch.pop("_epoch")
        self.slot_state[slot] = SlotCursor(epoch, batch.pop("_consumed"))
        substituted = batch.pop("_substituted")
        if substituted:
            self.substituted += substituted
            if epoch not in self._epoch_samples:
                self._epoch_samples[epoch] = self.batches_per_epoch(epoch) * self.layout.batch_size
            self.substitution_limit.add(epoch, substituted, self._epoch_samples[epoch])
        self.epoch = epoch
        self.batches_consumed += 1
        return batch

    def close(self) -> None:
        """Stop the workers now. They ignore stop signals from anyone but this
        process (worker_signals.py), so they are ended here rather than left
        to the interpreter's exit."""
        shutdown = getattr(self._iter, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        self._iter = None

    # -- cursor ------------------------------------------------------------

    def local_state(self) -> dict:
        return {"batches": self.batches_consumed,
                "slots": {str(s): asdict(c) for s, c in self.slot_state.items()}}

    def global_cursor(self, local_states: list[dict]) -> DataCursor:
        """Combine every rank's :meth:`local_state` (rank order) into a cursor."""
        slots = [None] * self.layout.num_slots
        for state in local_states:
            for s, c in state["slots"].items():
                slots[int(s)] = c
        # The partial epochs not finished yet: the open ones and any a re-split
        # carried ahead (the next epoch's unread part, after a layout change).
        oldest = min(c["epoch"] for c in slots)
        intervals = {e: v for e, v in self.epoch_intervals.items() if e >= oldest}
        return DataCursor(asdict(self.layout), self.seed, self.fingerprint, slots,
                          {e: [list(iv) for iv in v] for e, v in intervals.items()},
                          [state["batches"] for state in local_states], self.shuffle_block)

    def _start_from(self, cursor: DataCursor | None) -> tuple[dict[int, SlotCursor], dict, int]:
        """Slot cursors, partial-epoch intervals and this rank's batch count to start from."""
        fresh = {s: SlotCursor(0, 0) for s in range(self.layout.num_slots)}
        if cursor is None:
            return fresh, {}, 0
        if cursor.fingerprint != self.fingerprint:
            raise CursorMismatch(
                "the checkpoint's data cursor belongs to a different shard set (names or sample counts "
                "differ from data.train_shards); resume with the same shards, or start a new run")
        if cursor.seed != self.seed:
            raise CursorMismatch(f"data.seed is {self.seed} but the checkpoint was trained with {cursor.seed}")
        if cursor.shuffle_block and cursor.shuffle_block != self.shuffle_block:
            # The block size decides which samples a partly read block still holds.
            raise CursorMismatch(f"data.shuffle_block is {self.shuffle_block} but the checkpoint was read with "
                                 f"{cursor.shuffle_block}; set it back to resume exactly")
        old = Layout(**cursor.layout)
        if old == self.layout:
            return ({s: SlotCursor(**c) for s, c in enumerate(cursor.slots)}, dict(cursor.epoch_intervals),
                    cursor.rank_batches[self.rank])
        # Different layout: continue the unread remainder of the oldest open
        # epoch. Round-robin serving can leave some slots a batch or so into
        # the next epoch while others finish this one, so the unread part of
        # every epoch a slot stands in is carried.
        remainders = {}
        for e in sorted({c["epoch"] for c in cursor.slots}):
            plan = EpochPlan(self.shards.for_epoch(e), e, self.seed, old, cursor.epoch_intervals.get(e))
            consumed = [c["consumed"] if c["epoch"] == e else plan.per_slot if c["epoch"] > e else 0
                        for c in cursor.slots]
            remainders[e] = plan.remainder(consumed, self.shuffle_block)
        epoch = min(remainders)
        new_plan = EpochPlan(self.shards.for_epoch(epoch), epoch, self.seed, self.layout, remainders[epoch])
        left = sum(b - a for a, b in remainders[epoch])
        if new_plan.per_slot == 0:
            log.warning("data layout changed from %s to %s: the %d unread samples of epoch %d are fewer than "
                        "one batch per slot; starting epoch %d", old, self.layout, left, epoch, epoch + 1)
            del remainders[epoch]
            return {s: SlotCursor(epoch + 1, 0) for s in range(self.layout.num_slots)}, remainders, 0
        dropped = left - new_plan.per_slot * self.layout.num_slots
        log.warning("data layout changed from %s to %s: epoch %d continues with its %d unread samples "
                    "re-split over %d slots (%d left out of this epoch)",
                    old, self.layout, epoch, left, self.layout.num_slots, dropped)
        return {s: SlotCursor(epoch, 0) for s in range(self.layout.num_slots)}, remainders, 0


def gather_local_states(loader: TrainLoader) -> list[dict]:
    """All ranks' loader states, in rank order (a collective: every rank calls it)."""
    state = loader.local_state()
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return [state]
    out: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, state)
    return out
