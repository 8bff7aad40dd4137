"""A small OPT trained in-process for a hundred steps on the demo shards:
shared by the tests that need a model that has learned something (learning,
generation). Trained once per test process."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from opt_scale.data.config import DataConfig
from opt_scale.data.loader import TrainLoader
from opt_scale.data.sources import resolve_shards
from opt_scale.data.tokenizer import Tokenizer
from opt_scale.tasks.pretrainer import OPTPretrainer

from .model_fixtures import small_config, small_pretrainer

STEPS, BATCH, LR = 100, 8, 3e-3


@dataclass
class SmallRun:
    net: OPTPretrainer
    tokenizer: Tokenizer
    losses: dict[str, list[float]]   # "loss/<task>" -> one value per step


@functools.lru_cache(maxsize=None)
@torch.enable_grad()  # callers may sit under no_grad
def train_small(shards: Path, tokenizer: Path, steps: int = STEPS) -> SmallRun:
    """``steps`` AdamW steps of batch 8, one process, fixed seeds: the same
    losses on every run of the same code."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one order of float sums: the same figures on every machine
    try:
        tok = Tokenizer(str(tokenizer))
        cfg = small_config(tok.vocab_size)
        net = small_pretrainer(cfg).train()
        loader = TrainLoader(resolve_shards(str(shards / "demo-index.json")), DataConfig(num_workers=0, shuffle_block=16),
                             cfg.model, cfg.tasks, tok, 0, 1, BATCH)
        opt = torch.optim.AdamW(net.parameters(), lr=LR)
        losses: dict[str, list[float]] = {}
        for step in range(steps):
            out = net({**next(loader), "step": step})
            opt.zero_grad()
            out["loss"].backward()
            opt.step()
            for name, value in out.items():
                if name.startswith("loss/"):
                    losses.setdefault(name, []).append(float(value))
        return SmallRun(net.eval(), tok, losses)
    finally:
        torch.set_num_threads(threads)
