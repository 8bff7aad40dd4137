"""Output projection + cross-entropy at selected positions only.

``hidden`` [N, D] (or [B, L, D], flattened), ``weight`` [V, D], ``bias`` [V]
or None, ``positions`` [M] indices into the flattened hidden states,
``targets`` [M]. Only the M selected rows are projected: with 15% masking
this skips ~85% of the head's FLOPs and logits memory before any kernel is
written. Returns ``(mean loss over counted positions, count)``; positions
whose target is ``ignore_index`` are not counted. With no counted position
the loss is an exact 0 that still carries a (zero) gradient path, so every
rank runs the same graph.

Implementations (``backend=``, or ``OPT_SCALE_MASKED_LOSS_BACKEND``):

* ``"auto"`` (default): ``"triton"`` for CUDA tensors when Triton imports,
  otherwise ``"chunked"``.
* ``"chunked"``: :class:`.masked_loss_chunked.ChunkedLinearCrossEntropy`
  with the per-chunk cross-entropy in PyTorch; logits exist one chunk of
  rows at a time (``chunk_rows``, default 64 MiB of fp32 logits).
* ``"triton"``: the same chunk loop with the Triton cross-entropy kernel
  (CPU tensors need ``TRITON_INTERPRET=1``).
* ``"reference"``: all selected rows' logits at once and
  ``F.cross_entropy``; the plain formula the others are tested against.

ZeRO-3: call this from inside the ``forward`` of the module that owns (or
ties) ``weight``, so the weight is gathered; the function reads it whole.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from .index_checks import check_targets
from .masked_loss_chunked import ChunkedLinearCrossEntropy, cross_entropy_chunk_torch, rows_per_chunk
from .triton_support import triton_usable_for

BACKENDS = ("auto", "chunked", "triton", "reference")
BACKEND_ENV = "OPT_SCALE_MASKED_LOSS_BACKEND"


def masked_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                                positions: torch.Tensor, targets: torch.Tensor, *,
                                label_smoothing: float = 0.0, ignore_index: int = -100,
                                backend: str | None = None,
                                chunk_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    flat = hidden.reshape(-1, hidden.shape[-1])
    selected = flat.index_select(0, positions.reshape(-1).long())
    targets = targets.reshape(-1)
    check_targets(targets, weight.shape[0], ignore_index)  # before any backend reads them
    chosen = choose_backend(hidden, backend)
    if chosen == "reference":
        return masked_cross_entropy_reference(selected, weight, bias, targets, label_smoothing=label_smoothing,
                                              ignore_index=ignore_index)
    if chosen == "triton":
        if not triton_usable_for(hidden.device.type):
            raise RuntimeError(f"Triton cross-entropy cannot run on {hidden.device.type} tensors here "
                               "(CPU tensors need TRITON_INTERPRET=1 set before triton is imported)")
        from .masked_loss_triton import cross_entropy_chunk_triton as chunk_ce
    else:
        chunk_ce = cross_entropy_chunk_torch
    rows = chunk_rows or rows_per_chunk(weight.shape[0])
    return ChunkedLinearCrossEntropy.apply(selected, weight, bias, targets, float(label_smoothing),
                                           int(ignore_index), int(rows), chunk_ce, torch.is_grad_enabled())


def choose_backend(hidden: torch.Tensor, backend: str | None = None) -> str:
    backend = backend or os.environ.get(BACKEND_ENV, "auto")
    if backend not in BACKENDS:
        raise ValueError(f"masked loss backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    return "triton" if hidden.device.type == "cuda" and triton_usable_for("cuda") else "chunked"


def masked_cross_entropy_reference(selected: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                                   targets: torch.Tensor, *, label_smoothing: float = 0.0,
                                   ignore_index: int = -100) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of every selected row at once, then ``F.cross_entropy``."""
    logits = F.linear(selected, weight, bias).float()
    count = (targets != ignore_index).sum()
    loss_sum = F.cross_entropy(logits, targets, ignore_index=ignore_index,
                               label_smoothing=label_smoothing, reduction="sum")
    return loss_sum / count.clamp(min=1), count
