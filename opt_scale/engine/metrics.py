"""Training metrics: windowed means across ranks -> TensorBoard and console."""

from __future__ import annotations

import logging
import resource
import time
from collections import defaultdict

import torch
import torch.distributed as dist

from .distributed import collective_device

log = logging.getLogger(__name__)


def peak_memory_bytes() -> int:
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # ru_maxrss is KiB on Linux


class Window:
    """Per-step values over a logging window: means (averaged over ranks)
    and totals (summed over ranks)."""

    def __init__(self):
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.totals: dict[str, float] = defaultdict(float)
        self.steps = 0

    def mean(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.sums[k] += float(v)
            self.counts[k] += 1

    def total(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.totals[k] += float(v)

    def reduce(self) -> tuple[dict[str, float], dict[str, float]]:
        """Collective: every rank calls it with the same keys."""
        mkeys, tkeys = sorted(self.sums), sorted(self.totals)
        local = torch.tensor([self.sums[k] / max(1, self.counts[k]) for k in mkeys]
                             + [self.totals[k] for k in tkeys], dtype=torch.float64, device=collective_device())
        world = 1
        if dist.is_initialized():
            dist.all_reduce(local)
            world = dist.get_world_size()
        values = local.tolist()
        means = {k: v / world for k, v in zip(mkeys, values[: len(mkeys)])}
        totals = dict(zip(tkeys, values[len(mkeys):]))
        return means, totals


class RunLogger:
    def __init__(self, writer, total_steps: int):
        """``writer``: rank 0's :class:`~opt_scale.engine.trackers.Trackers`; None on the other ranks."""
        self.enabled = writer is not None
        self.total_steps = total_steps
        self.started = time.time()
        self.writer = writer

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)

    def console(self, step: int, values: dict[str, float], first_step: int) -> None:
        if not self.enabled:
            return
        elapsed = time.time() - self.started
        rate = (step - first_step) / max(elapsed, 1e-9)
        eta = (self.total_steps - step) / max(rate, 1e-9)
        parts = [f"step {step}/{self.total_steps}", f"loss {values.get('loss/total', float('nan')):.4f}"]
        for k in sorted(values):
            if k.startswith("loss/") and k != "loss/total":
                parts.append(f"{k[5:]} {values[k]:.3f}")
        for k in sorted(values):
            if k.startswith("acc/"):
                parts.append(f"{k[4:]}_acc {values[k]:.2f}")
        if "vq/perplexity" in values:
            parts.append(f"perplexity {values['vq/perplexity']:.1f}")
        if "mfu" in values:
            parts.append(f"{values['tflops/total']:.2f} TFLOP/s MFU {100 * values['mfu']:.1f}%")
        parts += [f"lr {values.get('train/lr', 0):.2e}",
                  f"{values.get('throughput/samples_per_s', 0):.1f} samples/s",
                  f"data wait {100 * values.get('throughput/data_wait_fraction', 0):.0f}%",
                  f"ETA {_fmt_seconds(eta)}"]
        log.info(" | ".join(parts))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()


def _fmt_seconds(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
