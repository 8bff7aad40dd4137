"""Bytes of model and optimizer state one rank really holds, whatever the ZeRO stage.

The engine is asked for the tensors it keeps between steps, and each
distinct storage is counted once, whole:

* parameters: every module parameter's ``.data`` plus, under ZeRO-3, its
  partition ``ds_tensor``. A partitioned ZeRO-3 parameter's ``.data`` is empty
  outside forward/backward; one below ``stage3_param_persistence_threshold``
  stays whole on every rank, and is counted whole. ZeRO-1/2 and ZeRO-3 point
  parameters into flat buffers; counting storages counts each buffer once;
* master weights: the tensors the inner optimizer updates (ZeRO's fp32
  partitions) that are not already counted as parameters (in fp32 training
  ZeRO-3 updates the partition in place, plain data parallelism the
  parameter itself: no second copy is made then, and none is counted);
* optimizer state: every tensor in the inner optimizer's ``state`` (Adam's two
  moments and its step counters).

Gradients are not counted: between steps the engine has released them.
Counting storages rather than ``numel`` of views is what makes the figure the
memory actually allocated (padding and alignment of partitions included).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def engine_state_bytes(engine) -> dict[str, int]:
    seen: set[int] = set()
    params = _new_storage_bytes(_parameter_tensors(engine.module), seen)
    inner = _inner_optimizer(engine.optimizer)
    masters = _new_storage_bytes((p for group in inner.param_groups for p in group["params"]), seen)
    moments = _new_storage_bytes((v for state in inner.state.values() for v in state.values()
                                  if torch.is_tensor(v)), seen)
    return {"parameter_bytes": params, "master_weight_bytes": masters, "optimizer_state_bytes": moments,
            "state_bytes": params + masters + moments}


def _parameter_tensors(module: torch.nn.Module) -> Iterable[torch.Tensor]:
    for p in module.parameters():
        yield p.data
        if hasattr(p, "ds_tensor"):
            yield p.ds_tensor


def _inner_optimizer(optimizer):
    """The torch optimizer doing the update (ZeRO and fp16 wrappers keep it as ``.optimizer``)."""
    while hasattr(optimizer, "optimizer") and not isinstance(optimizer, torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


def _new_storage_bytes(tensors: Iterable[torch.Tensor], seen: set[int]) -> int:
    """Bytes of the storages behind ``tensors`` not in ``seen`` (which is updated)."""
    total = 0
    for t in tensors:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if storage.nbytes() == 0 or key in seen:
            continue
        seen.add(key)
        total += storage.nbytes()
    return total
