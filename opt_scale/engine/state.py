"""What a checkpoint carries besides DeepSpeed's model/optimizer/scheduler."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

import numpy as np
import torch


@dataclass
class TrainState:
    step: int = 0              # optimizer steps completed
    samples_seen: int = 0      # global samples trained on
    skipped_steps: int = 0     # steps DeepSpeed discarded for non-finite gradients

    def to_client(self) -> dict:
        return asdict(self)

    @classmethod
    def from_client(cls, client: dict | None) -> "TrainState":
        if not client:
            return cls()
        return cls(**{k: client[k] for k in ("step", "samples_seen", "skipped_steps") if k in client})


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def all_rng_states() -> list[dict]:
    """Every rank's RNG states, in rank order (a collective). Under ZeRO
    stages 0-2 only rank 0 writes the client state, so each rank's own
    states must travel inside it for dropout to resume exactly everywhere."""
    import torch.distributed as dist
    if not dist.is_initialized():
        return [rng_state()]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, rng_state())
    return out


def restore_rng_state(saved: list | dict | None, rank: int = 0) -> None:
    """``saved``: :func:`all_rng_states`' list (this rank's entry is used; on
    another world size, rank mod the old one), or one rank's dict."""
    if not saved:
        return
    state = saved[rank % len(saved)] if isinstance(saved, list) else saved
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
