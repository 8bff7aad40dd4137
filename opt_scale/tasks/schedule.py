"""Which pretext tasks a step trains (``tasks.schedule``).

* ``sum``: every task with a non-zero weight, every step, losses weighted.
* ``sample``: one task per step, drawn with probability proportional to its
  weight, as the public OPT code does. The draw is a function of
  (seed, step) alone, so every rank trains the same task and a resumed run
  draws the same sequence.

The pretrainer still runs every part on every rank every step (ZeRO-3
gathers parameters per module call, in lock-step); what the schedule saves
is the work: a view no active task reads is shrunk to one row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import TASK_NAMES, TasksConfig


class TaskSchedule:
    def __init__(self, cfg: TasksConfig, seed: int):
        self.cfg = cfg
        self.seed = seed
        self.base = cfg.weights()
        names = [k for k in TASK_NAMES if self.base[k] > 0]
        self._names = names
        self._probs = np.array([self.base[k] for k in names], dtype=np.float64) / sum(self.base[k] for k in names)

    def weights(self, step: int) -> dict[str, float]:
        """Loss weight of every task at ``step`` (0: not trained this step)."""
        if self.cfg.schedule == "sum":
            return dict(self.base)
        chosen = self.task_at(step)
        # The drawn task's loss is not scaled by its weight: the weight already
        # decided how often it is drawn.
        return {k: (1.0 if k == chosen else 0.0) for k in TASK_NAMES}

    def task_at(self, step: int) -> str:
        rng = np.random.default_rng([self.seed, step, 0x7A5C])
        return self._names[int(rng.choice(len(self._names), p=self._probs))]


@dataclass(frozen=True)
class ViewRows:
    """Rows of each part of a step's work: the batch size where an active
    task reads it, one row (a dummy that keeps every module in the step)
    where none does."""
    masked_towers: int   # towers on masked inputs (MLM/MVM/MAM)
    clean_towers: int    # towers on clean inputs (decoders' memories, contrastive, matching, MAM targets)
    masked: int          # cross-modal rows of the masked view
    dtr: int             # ... of the text decoder's memory
    dir: int             # ... of the image decoder's memory
    matching: int        # ... of the matching view
    label: int           # ... of the label view (vqa, classify)

    @classmethod
    def plan(cls, batch: int, active: set[str]) -> "ViewRows":
        rows = lambda *tasks: batch if active & set(tasks) else 1  # noqa: E731
        return cls(masked_towers=rows("mlm", "mvm", "mam"),
                   clean_towers=rows("matching", "contrastive", "mam", "dtr", "dir", "label"),
                   masked=rows("mlm", "mvm", "mam"), dtr=rows("dtr"), dir=rows("dir"), matching=rows("matching"),
                   label=rows("label"))
