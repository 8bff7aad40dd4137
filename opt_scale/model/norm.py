"""LayerNorm: NVIDIA apex's fused kernel when importable on CUDA, else torch.

apex is an optional accelerator, never a dependency (PyPI's ``apex`` is an
unrelated project). The choice is logged once per process.
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn as nn

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def apex_layer_norm_class():
    if not torch.cuda.is_available():
        log.info("LayerNorm: torch.nn.LayerNorm (no CUDA device; apex not used)")
        return None
    try:
        from apex.normalization import FusedLayerNorm
    except Exception:
        log.info("LayerNorm: torch.nn.LayerNorm (NVIDIA apex not importable)")
        return None
    log.info("LayerNorm: apex.normalization.FusedLayerNorm")
    return FusedLayerNorm


def LayerNorm(dim: int, eps: float = 1e-6) -> nn.Module:  # noqa: N802 - reads like the class it returns
    cls = apex_layer_norm_class()
    return cls(dim, eps=eps) if cls is not None else nn.LayerNorm(dim, eps=eps)
