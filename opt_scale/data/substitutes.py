"""Stand-ins for the samples a damaged shard cannot give, and the limit on them.

Every slot must yield the same number of batches (a rank short of a batch
would hang the collectives), so a sample that is *missing* (its shard holds
fewer samples than the index says) or *corrupt* (it does not decode) is
replaced by another one. The choice is a pure function of the shuffle block
(which raw samples are present, the order they are emitted in) and of the
position, never of what happened earlier in the run: a resumed run replaces
exactly as the uninterrupted one did.

* Missing samples are known as soon as the block is read. Each gets a present
  sample of the block as its stand-in: the least used one, and never one that
  is emitted in the same batch, so a cut shard's stand-ins are distinct (as
  long as the block holds enough present samples) instead of one sample
  repeated.
* A block with no present sample at all borrows from the nearest block of
  the slot that has one.
* A corrupt sample is only found when it is decoded. Its stand-in is the first
  present sample, from half a block away on, that decodes and is neither a
  missing sample's stand-in nor in its batch.

The loader counts stand-ins (TensorBoard ``data/substituted_samples``, the run
summary) and stops the run once they pass ``data.max_substituted_fraction`` of
an epoch: a few bad samples are no reason to lose a run, a damaged data set is.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable

import numpy as np

from opt_scale.utils.config_tools import ConfigError

from .decode import DecodedSample, SampleError

log = logging.getLogger(__name__)


class DamagedShardsError(ConfigError):
    """Too much of the training data cannot be read (reported like bad input: one line, exit 2)."""


class ShuffleBlock:
    """One block of a slot's samples, emitted in ``perm`` order, with stand-ins for the bad ones.

    ``raws[i]`` is the i-th sample read (``None`` if missing); the j-th
    emitted is ``raws[perm[j]]``, at slot stream position ``first_pos + j``.
    ``pool`` (default: ``raws``) holds the candidates for stand-ins.
    """

    def __init__(self, raws: list[dict | None], perm: np.ndarray, first_pos: int, batch_size: int,
                 pool: list[dict | None] | None = None):
        self.raws = raws
        self.perm = [int(i) for i in perm]
        self.first_pos, self.batch_size = first_pos, batch_size
        self.pool = raws if pool is None else pool
        self.present = [c for c, raw in enumerate(self.pool) if raw is not None]
        # The batch each pool sample is emitted in, when the pool is this block.
        self.emitted_in = {idx: self.batch_of(j) for j, idx in enumerate(self.perm)} if pool is None else {}
        self.stand_in = self._plan_missing()

    def batch_of(self, j: int) -> int:
        return (self.first_pos + j) // self.batch_size

    def _plan_missing(self) -> dict[int, int]:
        """Emission index of each missing sample -> pool index of its stand-in."""
        plan: dict[int, int] = {}
        if not self.present:
            return plan
        uses = dict.fromkeys(self.present, 0)
        standing_in: dict[int, set[int]] = defaultdict(set)   # batch -> pool samples standing in there
        start = 0
        for j, idx in enumerate(self.perm):
            if self.raws[idx] is None:
                batch = self.batch_of(j)
                t = self._pick(start, batch, uses, standing_in[batch])
                chosen = self.present[t]
                plan[j] = chosen
                uses[chosen] += 1
                standing_in[batch].add(chosen)
                start = t + 1   # the next search starts after it: stand-ins spread over the block
        return plan

    def _pick(self, start: int, batch: int, uses: dict[int, int], standing_in: set[int]) -> int:
        """Index into ``present``: no clash with the batch first, then the least used, then the nearest."""
        n = len(self.present)

        def rank(t: int) -> tuple:
            c = self.present[(start + t) % n]
            return self.emitted_in.get(c) == batch or c in standing_in, uses[c], t
        return (start + min(range(n), key=rank)) % n

    def take(self, j: int, decode: Callable[[dict], DecodedSample], batch_keys: set[str]) -> tuple[DecodedSample, bool]:
        """The j-th emitted sample, or its stand-in; and whether it is a stand-in."""
        raw = self.raws[self.perm[j]]
        if raw is not None:
            try:
                return decode(raw), False
            except SampleError as err:
                log.warning("corrupt sample in %s: %s; a stand-in takes its place", raw.get("__url__"), err)
        for c in self._candidates(j):
            candidate = self.pool[c]
            if candidate["__key__"] in batch_keys or self.emitted_in.get(c) == self.batch_of(j):
                continue
            try:
                return decode(candidate), True
            except SampleError:
                continue
        raise DamagedShardsError(
            f"no sample of a shuffle block of {len(self.raws)} (from {self._where()}) decodes to stand in for a "
            "bad one: the shards in data.train_shards are damaged; check them with `opt-shards verify`")

    def _candidates(self, j: int) -> list[int]:
        """Pool indices to try for the j-th emitted sample: its planned stand-in, then the ring of present
        samples from half a block away, those not standing in for a missing sample first."""
        planned = [self.stand_in[j]] if j in self.stand_in else []
        n, own = len(self.pool), self.perm[j]
        ring = [c for c in ((own + n // 2 + t) % n for t in range(n)) if self.pool[c] is not None and c != own]
        taken = set(self.stand_in.values())
        return planned + [c for c in ring if c not in taken] + [c for c in ring if c in taken]

    def _where(self) -> str:
        urls = sorted({raw["__url__"] for raw in self.pool if raw is not None})
        return ", ".join(urls[:3]) or "no readable shard"


class SubstitutionLimit:
    """Stops the run once one epoch's stand-ins pass ``data.max_substituted_fraction`` of this rank's samples.

    Counted per epoch since the process started (a resumed run starts its count afresh).
    """

    def __init__(self, fraction: float, rank: int):
        self.fraction, self.rank = fraction, rank
        self.epoch, self.count = -1, 0

    def add(self, epoch: int, n: int, samples_in_epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.count = epoch, 0
        self.count += n
        if self.count > self.fraction * samples_in_epoch:
            raise DamagedShardsError(
                f"{self.count} of the {samples_in_epoch} samples rank {self.rank} reads in epoch {epoch} had to be "
                f"replaced (missing from their shard or corrupt), more than data.max_substituted_fraction="
                f"{self.fraction:g}: the shards in data.train_shards are damaged. Check them with `opt-shards "
                "verify` (the log names the shards), or raise data.max_substituted_fraction")
