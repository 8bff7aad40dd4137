"""Activation memory and step time with and without activation checkpointing (model.activation_checkpointing).

One process, no DeepSpeed (activations are per rank, whatever ZeRO does with
the weights): the preset's pretrainer is built twice from the same seed, once
recomputing every transformer block in backward, and both run forward +
backward on the same real batches from the streaming loader (default: the
demo shards; ``--set`` can change lengths and batch size).

Activation memory is measured, not estimated: every tensor autograd saves
for backward passes through a ``saved_tensors_hooks`` pack hook, which sums
their storages once each (weights excluded: they are memory with or without
activations). That is the memory held from the end of the forward until
backward frees it. With checkpointing, backward recomputes one block at a
time and frees it before the next; the column ``recomputed_per_block_mb``
is that transient extra, on average per block.

Step times on a shared CPU vary by tens of percent from pass to pass (the
allocator hands ~1 GB of activations back and forth): the table gives the
median and the fastest pass of each variant, and their ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from .launch import add_data_arguments, data_overrides
from .report import print_table


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "--preset", dest="preset", default="small", help="preset (tiny, small, base, ...)")
    p.add_argument("--steps", type=int, default=4, help="timed forward + backward passes per variant")
    p.add_argument("--warmup", type=int, default=1, help="untimed passes first")
    p.add_argument("--micro-batch", type=int, default=8, help="samples per pass (train.micro_batch_size)")
    add_data_arguments(p)
    p.add_argument("--work-dir", default="runs/bench/memory", help="scratch files (an untrained VQ tokenizer)")
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. model.text.max_len=128")


class SavedTensorMeter:
    """Bytes of the distinct storages autograd saves for backward, weights excluded."""

    def __init__(self, model: torch.nn.Module):
        self.weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.seen: set[int] = set()
        self.bytes = 0

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self.weights and ptr not in self.seen:
            self.seen.add(ptr)
            self.bytes += storage.nbytes()
        return t

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)


def measure(nets: list[torch.nn.Module], batches: list[dict], warmup: int) -> list[dict]:
    """Each net's figures on the same batches; the nets take turns, first one then
    the other, so that a machine's drift in speed weighs on both alike."""
    records = [{"held": [], "recomputed": [], "times": [], "losses": []} for _ in nets]
    blocks = [sum(len(m.blocks) for m in net.modules() if getattr(m, "recompute", False)) for net in nets]
    for i, batch in enumerate(batches):
        for k in (range(len(nets)) if i % 2 == 0 else reversed(range(len(nets)))):
            net, rec = nets[k].train(), records[k]
            net.zero_grad(set_to_none=True)
            torch.manual_seed(i)  # the same dropout masks for every variant at a pass
            forward, backward = SavedTensorMeter(net), SavedTensorMeter(net)
            start = time.perf_counter()
            with forward.hooks():
                out = net(batch)
            with backward.hooks():  # only a recomputation saves tensors during backward
                out["loss"].backward()
            elapsed = time.perf_counter() - start
            if i >= warmup:
                rec["times"].append(elapsed)
                rec["held"].append(forward.bytes)
                rec["recomputed"].append(backward.bytes / max(blocks[k], 1))
                rec["losses"].append(float(out["loss"].detach()))
    return [{"activation_mb": statistics.median(r["held"]) / 2**20,
             "recomputed_per_block_mb": statistics.median(r["recomputed"]) / 2**20,
             "step_s": statistics.median(r["times"]), "step_s_min": min(r["times"]),
             "stacks_recomputed": sum(getattr(m, "recompute", False) for m in net.modules()),
             "losses": r["losses"]} for net, r in zip(nets, records)]


def run(args: argparse.Namespace) -> dict:
    from pathlib import Path

    from opt_scale.config import load_config
    from opt_scale.data.loader import TrainLoader
    from opt_scale.data.sources import resolve_shards
    from opt_scale.data.tokenizer import Tokenizer
    from opt_scale.engine.trainer import fill_vocab
    from opt_scale.tasks.registry import build_task_module, load_frozen_vq

    from .train_probe import write_untrained_vq

    cfg = load_config(args.preset, [*data_overrides(args), "data.num_workers=0",
                                    f"train.micro_batch_size={args.micro_batch}", *args.overrides])
    tokenizer = Tokenizer(cfg.data.tokenizer)
    fill_vocab(cfg, tokenizer)
    if cfg.tasks.needs_vq:
        cfg.model.vq.checkpoint = str(write_untrained_vq(cfg, Path(args.work_dir), 0))
    vq = load_frozen_vq(cfg)
    loader = TrainLoader(resolve_shards(cfg.data.train_shards), cfg.data, cfg.model, cfg.tasks, tokenizer, 0, 1,
                         args.micro_batch)
    batches = [next(loader) for _ in range(args.warmup + args.steps)]
    nets = []
    for recompute in (False, True):
        cfg.model.activation_checkpointing = recompute
        torch.manual_seed(cfg.train.seed)
        nets.append(build_task_module(cfg, vq))
    rows = [{"activation_checkpointing": recompute, **figures}
            for recompute, figures in zip((False, True), measure(nets, batches, args.warmup))]
    plain, ckpt = rows
    for row in rows:
        row["memory_ratio"] = plain["activation_mb"] / row["activation_mb"]
        row["time_ratio"] = row["step_s"] / plain["step_s"]
        row["time_ratio_min"] = row["step_s_min"] / plain["step_s_min"]
    # Recomputation replays the same operations on the same inputs: the losses must not move.
    same_losses = plain["losses"] == ckpt["losses"]
    print_table(rows, ["activation_checkpointing", "activation_mb", "recomputed_per_block_mb", "memory_ratio",
                       "step_s", "time_ratio", "step_s_min", "time_ratio_min"],
                title=f"activation memory, preset {args.preset}, micro batch {args.micro_batch}, one process "
                      f"(median of {args.steps} forward + backward passes each, taking turns); losses equal: {same_losses}")
    return {"ok": same_losses, "bench": "memory", "preset": args.preset, "micro_batch": args.micro_batch,
            "rows": rows, "losses_equal": same_losses, "config": vars(args) | {"module": None}}
