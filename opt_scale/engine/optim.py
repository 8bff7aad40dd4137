"""Optimizer and learning-rate schedule (linear warm-up, cosine decay)."""

from __future__ import annotations

import logging
import math

import torch

from .config import TrainConfig

log = logging.getLogger(__name__)


def param_groups(model: torch.nn.Module, weight_decay: float, lr: float | None = None) -> list[dict]:
    """No weight decay on biases, norms and other 1-D parameters; a module's
    ``lr_multipliers()`` ({name prefix: factor}, e.g. a new downstream head)
    puts its parameters in groups of their own at ``lr`` x factor.

    Shape is read from ``ds_shape`` when ZeRO-3 has already partitioned the
    parameter (its local tensor is then empty)."""
    multipliers = model.lr_multipliers() if hasattr(model, "lr_multipliers") else {}
    groups: dict[tuple[bool, float], list] = {(True, 1.0): [], (False, 1.0): []}
    seen = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        shape = getattr(p, "ds_shape", p.shape)
        mult = next((m for prefix, m in multipliers.items() if name.startswith(prefix)), 1.0)
        groups.setdefault((len(shape) >= 2, mult), []).append(p)
    out = []
    for (decays, mult), params in groups.items():
        if not params:  # e.g. a frozen model's: only its head trains
            continue
        group = {"params": params, "weight_decay": weight_decay if decays else 0.0}
        if mult != 1.0:
            group["lr"] = lr * mult
        out.append(group)
    return out or [{"params": [], "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, train: TrainConfig, offload: bool) -> torch.optim.Optimizer:
    groups = param_groups(model, train.weight_decay, train.lr)
    kwargs = dict(lr=train.lr, betas=(train.beta1, train.beta2), eps=train.eps)
    if offload:
        from deepspeed.ops.adam import DeepSpeedCPUAdam
        log.info("optimizer: DeepSpeedCPUAdam (optimizer state offloaded to CPU)")
        return DeepSpeedCPUAdam(groups, adamw_mode=True, **kwargs)
    if torch.cuda.is_available():
        try:
            from apex.optimizers import FusedAdam
            log.info("optimizer: apex FusedAdam (adam_w_mode)")
            return FusedAdam(groups, adam_w_mode=True, **kwargs)
        except Exception:
            log.info("optimizer: torch AdamW(fused=True) (NVIDIA apex not importable)")
            return torch.optim.AdamW(groups, fused=True, **kwargs)
    log.info("optimizer: torch AdamW (CPU)")
    return torch.optim.AdamW(groups, **kwargs)


def lr_multiplier(step: int, train: TrainConfig) -> float:
    if train.warmup_steps and step < train.warmup_steps:
        return (step + 1) / train.warmup_steps
    span = max(1, train.steps - train.warmup_steps)
    progress = min(1.0, (step - train.warmup_steps) / span)
    floor = train.min_lr_ratio
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(step, train))
