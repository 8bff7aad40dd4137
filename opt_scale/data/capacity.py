"""Refuse a data set too small to give every loader slot one batch, before
any heavy work: otherwise the loader finds out only when the first batch is
asked for, after the engine is built, and fails inside a worker process."""

from __future__ import annotations

from opt_scale.utils.config_tools import ConfigError

from .config import DataConfig
from .plan import EpochPlan, Layout
from .sources import ShardInfo


def require_one_batch_per_slot(shards: list[ShardInfo], data: DataConfig, world_size: int, batch_size: int) -> None:
    layout = Layout(world_size, max(1, data.num_workers), batch_size)
    if EpochPlan(shards, 0, data.seed, layout).per_slot > 0:
        return
    samples = sum(s.num_samples for s in shards)
    raise ConfigError(
        f"data.train_shards holds {samples} samples, fewer than one batch for each of the {layout.num_slots} "
        f"loader slots (world size {world_size} x data.num_workers {max(1, data.num_workers)}, "
        f"train.micro_batch_size {batch_size}: {layout.num_slots * batch_size} samples needed); "
        "use more data, fewer loader workers or a smaller train.micro_batch_size")
