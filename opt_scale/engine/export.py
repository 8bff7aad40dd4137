"""Consolidated weights from a running engine (every rank must call)."""

from __future__ import annotations

import torch


def gather_full_state_dict(engine) -> dict[str, torch.Tensor]:
    """Full fp32 copy of the module's state on every rank.

    Under ZeRO-3 each parameter is gathered from its partitions (a
    collective); otherwise the local module already holds whole tensors."""
    module = engine.module
    params = list(module.parameters())
    if params and hasattr(params[0], "ds_id"):
        import deepspeed
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            return {k: v.detach().float().clone() for k, v in module.state_dict().items()}
    return {k: v.detach().float().clone() for k, v in module.state_dict().items()}
