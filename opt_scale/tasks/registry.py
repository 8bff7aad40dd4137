"""Training tasks: which module a run optimises.

* ``pretrain`` — OPT with every pretext task (needs the frozen VQ tokenizer
  when MVM or DIR is on);
* ``vq`` — the VQ image tokenizer that supplies those targets;
* ``caption``, ``asr``, ``retrieval``, ``vqa``, ``classify`` — fine-tuning a pre-trained OPT
  (``train.init_from``) on the same engine (ZeRO-3, exact resume,
  TensorBoard, Slurm): the OPT module with only the tasks that teach the
  downstream job, set by :data:`FINETUNE` (``opt-train --task NAME`` applies
  them before the user's ``--set``, which may change any of them):
  captioning is DTR from the image alone, speech recognition DTR from the
  audio alone (a narrative's caption is the transcript of its recording),
  retrieval the contrastive and matching tasks (hard negatives, as the
  public code's ``finetune_itm``); vqa and classify the label head
  (:mod:`.labels`) over ``data.labels``: VQA from the question and the image's
  [CLS] through an MLP against soft answer scores, classification a linear
  layer on the frozen image tower's pooled output (the paper's frozen model +
  linear layer; ``tasks.label.frozen=false`` fine-tunes it all,
  ``tasks.label.modalities=audio`` or ``image,audio`` classifies those).
"""

from __future__ import annotations

import torch.nn as nn

from opt_scale.utils.config_tools import ConfigError

from .config import TASK_NAMES

TASKS = ("pretrain", "vq", "caption", "asr", "retrieval", "vqa", "classify")
FINETUNE: dict[str, dict[str, object]] = {
    "caption": {"tasks.dtr.weight": 1, "tasks.dtr.memory": "image"},
    "asr": {"tasks.dtr.weight": 1, "tasks.dtr.memory": "audio"},
    "retrieval": {"tasks.contrastive.weight": 1, "tasks.matching.weight": 1, "tasks.matching.hard_negatives": True},
    "vqa": {"tasks.label.weight": 1, "tasks.label.modalities": "text,image", "tasks.label.features": "cls",
            "tasks.label.head": "mlp", "tasks.label.loss": "bce", "tasks.label.frozen": False,
            "tasks.label.lr_mult": 1},
    "classify": {"tasks.label.weight": 1, "tasks.label.modalities": "image", "tasks.label.features": "pooled",
                 "tasks.label.head": "linear", "tasks.label.loss": "ce", "tasks.label.frozen": True,
                 "tasks.label.lr_mult": 10},
}


def trains_opt(task: str) -> bool:
    """Whether ``task`` trains the OPT module (pre-training or fine-tuning)."""
    return task != "vq"


def task_overrides(task: str) -> list[str]:
    """``--set`` items of a fine-tuning task: its tasks on, every other pretext task's weight 0."""
    if task not in FINETUNE:
        return []
    settings = {f"tasks.{name}.weight": 0 for name in TASK_NAMES} | FINETUNE[task]
    return [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in settings.items()]


def build_task_module(cfg, frozen_vq=None) -> nn.Module:
    """The module the engine trains (construction may run under zero.Init,
    so the frozen VQ is loaded before, by :func:`load_frozen_vq`)."""
    if cfg.train.task == "vq":
        from .vq_task import VQTraining
        return VQTraining(cfg.model)
    if cfg.train.task in TASKS:
        from .pretrainer import OPTPretrainer
        module = OPTPretrainer(cfg.model, cfg.tasks, vq=frozen_vq, seed=cfg.data.seed)
        if cfg.tasks.label.frozen and module.label is not None:
            # Only the head learns; frozen weights get no gradient, no optimizer state, no update.
            for name, param in module.named_parameters():
                param.requires_grad_(name.startswith("label."))
        return module
    raise ConfigError(f"config key 'train.task': unknown task {cfg.train.task!r} (known: {', '.join(TASKS)})")


def load_frozen_vq(cfg):
    """The frozen VQ tokenizer: what MVM/DIR need, and text-to-image generation
    (loaded whenever it is given, so a fine-tuned model still draws)."""
    if not trains_opt(cfg.train.task) or not (cfg.tasks.needs_vq or cfg.model.vq.checkpoint):
        return None
    if not cfg.model.vq.checkpoint:
        raise ConfigError("config key 'model.vq.checkpoint' is empty but MVM/DIR need the VQ tokenizer: train it "
                          "with `opt-train --task vq` and pass its vq.safetensors, or set tasks.mvm.weight=0 "
                          "tasks.dir.weight=0")
    from opt_scale.model.vq_io import load_vq
    return load_vq(cfg.model.vq.checkpoint, cfg.model.patch_grid)
