"""Training tasks: which module a run optimises.

* ``pretrain`` — OPT with every pretext task (needs the frozen VQ tokenizer
  when MVM or DIR is on);
* ``vq`` — the VQ image tokenizer that supplies those targets.
"""

from __future__ import annotations

import torch.nn as nn

from opt_scale.utils.config_tools import ConfigError

TASKS = ("pretrain", "vq")


def build_task_module(cfg, frozen_vq=None) -> nn.Module:
    """The module the engine trains (construction may run under zero.Init,
    so the frozen VQ is loaded before, by :func:`load_frozen_vq`)."""
    if cfg.train.task == "vq":
        from .vq_task import VQTraining
        return VQTraining(cfg.model)
    if cfg.train.task == "pretrain":
        from .pretrainer import OPTPretrainer
        return OPTPretrainer(cfg.model, cfg.tasks, vq=frozen_vq, seed=cfg.data.seed)
    raise ConfigError(f"config key 'train.task': unknown task {cfg.train.task!r} (known: {', '.join(TASKS)})")


def load_frozen_vq(cfg):
    if cfg.train.task != "pretrain" or not cfg.tasks.needs_vq:
        return None
    if not cfg.model.vq.checkpoint:
        raise ConfigError("config key 'model.vq.checkpoint' is empty but MVM/DIR need the VQ tokenizer: train it "
                          "with `opt-train --task vq` and pass its vq.safetensors, or set tasks.mvm.weight=0 "
                          "tasks.dir.weight=0")
    from opt_scale.model.vq_io import load_vq
    return load_vq(cfg.model.vq.checkpoint, cfg.model.patch_grid)
