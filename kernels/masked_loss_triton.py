"""Triton cross-entropy of one chunk of logits, gradient written in place.

The chunk's projection runs as a cuBLAS matmul (tensor cores at their peak;
a hand-written GEMM would not beat it); what Triton fuses is everything after
it: one program per row streams the row's logits twice, first for an online
max / sum-exp (plus the row sum for label smoothing), then to overwrite each
logit with its gradient ``(softmax - (1-eps)*onehot - eps/V) / count``. The
row is read twice and written once; PyTorch's unfused version reads and
writes it about six times (logsumexp, gather, sub, exp, scatter, mul).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_support import interpreter_active, next_power_of_2


@triton.jit
def _cross_entropy_rows_kernel(
    Logits, stride_row, Targets, Loss, InvCount, vocab, ignore_index, label_smoothing,
    HAS_SMOOTHING: tl.constexpr, BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    base = Logits + row * stride_row
    target = tl.load(Targets + row).to(tl.int32)
    counted = target != ignore_index
    offs0 = tl.arange(0, BLOCK_V)

    # Pass 1: per-lane running max and sum of exp (a lane that only saw -inf
    # subtracts 0 instead of -inf, avoiding NaN), plus the row sum.
    m_lane = tl.full([BLOCK_V], float("-inf"), dtype=tl.float32)
    s_lane = tl.zeros([BLOCK_V], dtype=tl.float32)
    x_sum = tl.zeros([BLOCK_V], dtype=tl.float32)
    for start in range(0, vocab, BLOCK_V):
        offs = start + offs0
        x = tl.load(base + offs, mask=offs < vocab, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m_lane, x)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        s_lane = s_lane * tl.exp(m_lane - m_safe) + tl.exp(x - m_safe)
        m_lane = m_new
        if HAS_SMOOTHING:
            x_sum += tl.where(offs < vocab, x, 0.0)
    m = tl.max(m_lane, 0)
    lse = m + tl.log(tl.sum(s_lane * tl.exp(m_lane - m), 0))

    safe_target = tl.where(counted, target, 0)
    x_target = tl.load(base + safe_target).to(tl.float32)
    loss = lse - (1.0 - label_smoothing) * x_target
    if HAS_SMOOTHING:
        loss -= label_smoothing / vocab * tl.sum(x_sum, 0)
    tl.store(Loss + row, tl.where(counted, loss, 0.0))

    # Pass 2: overwrite the logits with d(mean loss)/d(logits).
    row_scale = tl.where(counted, tl.load(InvCount), 0.0)
    for start in range(0, vocab, BLOCK_V):
        offs = start + offs0
        x = tl.load(base + offs, mask=offs < vocab, other=0.0).to(tl.float32)
        g = tl.exp(x - lse)
        if HAS_SMOOTHING:
            g -= label_smoothing / vocab
        g = tl.where(offs == safe_target, g - (1.0 - label_smoothing), g)
        tl.store(base + offs, g * row_scale, mask=offs < vocab)


def cross_entropy_chunk_triton(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float,
                               ignore_index: int, inv_count: torch.Tensor) -> torch.Tensor:
    """Same contract as :func:`.masked_loss_chunked.cross_entropy_chunk_torch`."""
    rows, V = logits.shape
    loss = torch.empty(rows, dtype=torch.float32, device=logits.device)
    if rows == 0:
        return loss
    if logits.stride(1) != 1:
        raise ValueError("logits rows must be contiguous")
    # Memory-bound: a wide block and many warps per row keep enough loads in
    # flight on H100; the interpreter prefers few, wide NumPy operations.
    block = min(next_power_of_2(V), 1024 if interpreter_active() else 4096)
    _cross_entropy_rows_kernel[(rows,)](
        logits, logits.stride(0), targets.contiguous(), loss, inv_count.reshape(1), V, ignore_index,
        float(label_smoothing), HAS_SMOOTHING=label_smoothing > 0, BLOCK_V=block,
        num_warps=1 if interpreter_active() else 16 if block >= 4096 else 8)
    return loss
