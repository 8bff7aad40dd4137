"""Index inputs refused before any backend reads them, the same way on every backend.

An index out of range is undefined behaviour in a kernel: the Triton
attention reads a segment id outside ``allowed_pairs`` as some other
segment's bit set, and the Triton cross-entropy reads a target >= vocab past
the end of the row's logits (a different garbage loss each run). The PyTorch
paths differ among themselves (-1 wraps around to the last row of the table,
a too-large id raises IndexError). The dispatchers (``attention``,
``masked_linear_cross_entropy``) call these checks first, so every backend
raises the same ValueError.

Cost: one ``aminmax`` reduction per index tensor and one copy of the results
to the host. On a GPU that copy waits for the queued work (a sync), so the
model's attention layers, which share one segments tensor, check it once
(until it is modified in place). Skipped while ``torch.compile`` traces or a
CUDA graph captures, where a sync cannot be recorded: the eager calls of the
same inputs are checked.
"""

from __future__ import annotations

import weakref

import torch

# (weak refs to the last valid (q_segments, k_segments), their versions, table size):
# the layers of one forward pass pass the same tensors, checked by the first.
_last_valid_segments: tuple = ()


def check_segment_ids(q_segments: torch.Tensor, k_segments: torch.Tensor, num_segments: int) -> None:
    global _last_valid_segments
    if _not_checkable(q_segments) or _already_valid(q_segments, k_segments, num_segments):
        return
    named = {"q_segments": q_segments}
    if k_segments is not q_segments:
        named["k_segments"] = k_segments
    for name, (low, high) in _ranges(named).items():
        if low < 0 or high >= num_segments:
            raise ValueError(f"attention: {name} must index allowed_pairs ({num_segments} segments, ids 0.."
                             f"{num_segments - 1}), got ids from {low} to {high}")
    _last_valid_segments = (weakref.ref(q_segments), weakref.ref(k_segments),
                            (q_segments._version, k_segments._version, num_segments))


def check_targets(targets: torch.Tensor, vocab: int, ignore_index: int) -> None:
    if _not_checkable(targets):
        return
    counted = torch.where(targets == ignore_index, 0, targets)  # ignore_index (e.g. -100) stays valid
    ranges = _ranges({"targets": counted})
    if ranges:
        low, high = ranges["targets"]
        if low < 0 or high >= vocab:
            bad = low if low < 0 else high
            raise ValueError(f"masked loss: targets must be ids 0..{vocab - 1} of the {vocab}-row weight or "
                             f"ignore_index ({ignore_index}), got {bad}")


def _ranges(named: dict[str, torch.Tensor]) -> dict[str, tuple[int, int]]:
    """(min, max) of each non-empty tensor, with one host copy for all of them."""
    named = {n: t for n, t in named.items() if t.numel()}
    if not named:
        return {}
    bounds = torch.stack([torch.stack(torch.aminmax(t)).to(torch.int64) for t in named.values()]).tolist()
    return {n: (low, high) for n, (low, high) in zip(named, bounds)}


def _already_valid(q_segments: torch.Tensor, k_segments: torch.Tensor, num_segments: int) -> bool:
    if not _last_valid_segments:
        return False
    q_ref, k_ref, state = _last_valid_segments
    return (q_ref() is q_segments and k_ref() is k_segments
            and state == (q_segments._version, k_segments._version, num_segments))


def _not_checkable(t: torch.Tensor) -> bool:
    return (torch.compiler.is_compiling() or torch.jit.is_tracing() or t.device.type == "meta"
            or (t.is_cuda and torch.cuda.is_current_stream_capturing()))
