"""The fused attention as a ``torch.library`` custom op, so ``torch.compile``
traces it as one opaque node (with a fake implementation for shapes) instead
of graph-breaking on a Triton launch.

Two ops, forward and backward, each taking ``impl``:

* ``"triton"`` runs the kernels of :mod:`.attention_triton` (CUDA tensors, or
  CPU tensors under ``TRITON_INTERPRET=1``);
* ``"blocked"`` is the op's CPU implementation in PyTorch: the same
  recurrence (scores, LSE, recomputed probabilities in the backward) over
  blocks of queries, so memory holds [block, Lk] scores, not [Lq, Lk].

The autograd formula is registered on the forward op and calls the backward
op, so compiled graphs see two custom nodes and no Triton internals.
"""

from __future__ import annotations

import math

import torch

from .triton_support import triton_usable_for

QUERY_BLOCK = 256  # rows of the blocked CPU implementation: [B, H, 256, Lk] fp32 scores at a time


# --------------------------------------------------------------------------- blocked PyTorch implementation

def _block_mask(rows: slice, Lq: int, Lk: int, device, key_lengths, q_segments, k_segments, allowed_pairs,
                causal: bool) -> torch.Tensor | None:
    """[B or 1, 1, rows, Lk] bool mask of the query rows ``rows`` (True = may attend)."""
    mask = None
    keys = torch.arange(Lk, device=device)
    if key_lengths is not None:
        mask = (keys[None, :] < key_lengths.to(device).long()[:, None])[:, None, None, :]
    if allowed_pairs is not None:
        seg = allowed_pairs.to(device=device, dtype=torch.bool)[
            q_segments[:, rows].long()[:, :, None], k_segments.long()[:, None, :]][:, None]
        mask = seg if mask is None else mask & seg
    if causal:
        positions = torch.arange(rows.start, rows.stop, device=device) + (Lk - Lq)
        c = (keys[None, :] <= positions[:, None])[None, None]
        mask = c if mask is None else mask & c
    return mask


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def blocked_forward(q, k, v, key_lengths, q_segments, k_segments, allowed_pairs, causal: bool, scale: float):
    B, H, Lq, _ = q.shape
    Lk = k.shape[2]
    ct = _compute_dtype(q.dtype)
    kf, vf = k.to(ct), v.to(ct)
    out = torch.empty_like(q, memory_format=torch.contiguous_format)  # as the fake says
    lse = torch.empty(B, H, Lq, dtype=torch.float32, device=q.device)
    for start in range(0, Lq, QUERY_BLOCK):
        rows = slice(start, min(start + QUERY_BLOCK, Lq))
        s = torch.matmul(q[:, :, rows].to(ct), kf.transpose(-1, -2)) * scale
        mask = _block_mask(rows, Lq, Lk, q.device, key_lengths, q_segments, k_segments, allowed_pairs, causal)
        if mask is not None:
            s = s.masked_fill(~mask, float("-inf"))
        row_lse = torch.logsumexp(s, dim=-1)
        empty = torch.isneginf(row_lse)  # every key masked
        row_lse = row_lse.masked_fill(empty, 0.0)
        p = torch.exp(s - row_lse[..., None])  # masked entries: exp(-inf) = 0
        out[:, :, rows] = torch.matmul(p, vf).to(q.dtype)
        lse[:, :, rows] = row_lse.float()
    return out, lse


def blocked_backward(dout, q, k, v, out, lse, dlse, key_lengths, q_segments, k_segments, allowed_pairs,
                     causal: bool, scale: float):
    B, H, Lq, _ = q.shape
    Lk = k.shape[2]
    ct = _compute_dtype(q.dtype)
    kf, vf = k.to(ct), v.to(ct)
    delta = (dout.to(ct) * out.to(ct)).sum(-1)
    if dlse is not None:
        delta = delta - dlse.to(ct)
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    dk = torch.zeros(k.shape, dtype=ct, device=k.device)
    dv = torch.zeros(v.shape, dtype=ct, device=v.device)
    for start in range(0, Lq, QUERY_BLOCK):
        rows = slice(start, min(start + QUERY_BLOCK, Lq))
        qb, dob = q[:, :, rows].to(ct), dout[:, :, rows].to(ct)
        s = torch.matmul(qb, kf.transpose(-1, -2)) * scale
        mask = _block_mask(rows, Lq, Lk, q.device, key_lengths, q_segments, k_segments, allowed_pairs, causal)
        p = torch.exp(s - lse[:, :, rows, None].to(ct))
        if mask is not None:
            p = p.masked_fill(~mask, 0.0)
        dv += torch.matmul(p.transpose(-1, -2), dob)
        ds = p * (torch.matmul(dob, vf.transpose(-1, -2)) - delta[:, :, rows, None])
        dq[:, :, rows] = (torch.matmul(ds, kf) * scale).to(q.dtype)
        dk += torch.matmul(ds.transpose(-1, -2), qb) * scale
    return dq, dk.to(k.dtype), dv.to(v.dtype)


# --------------------------------------------------------------------------- triton glue

def _kernel_mask_inputs(q, key_lengths, q_segments, k_segments, allowed_pairs):
    """int32 vectors on q's device: (key lengths, q_allow bit sets, k_bit bit sets)."""
    from .attention_triton import segment_bits
    q_allow = k_bit = None
    if allowed_pairs is not None:
        q_allow, k_bit = segment_bits(q_segments.to(q.device), k_segments.to(q.device), allowed_pairs.to(q.device))
    lengths = None
    if key_lengths is not None:
        lengths = key_lengths.to(device=q.device, dtype=torch.int32).contiguous()
    return lengths, q_allow, k_bit


def _triton_forward(q, k, v, key_lengths, q_segments, k_segments, allowed_pairs, causal, scale):
    from .attention_triton import attention_forward
    masks = _kernel_mask_inputs(q, key_lengths, q_segments, k_segments, allowed_pairs)
    return attention_forward(q, k, v, *masks, causal, scale)


def _triton_backward(dout, q, k, v, out, lse, dlse, key_lengths, q_segments, k_segments, allowed_pairs,
                     causal, scale):
    from .attention_triton import attention_backward
    masks = _kernel_mask_inputs(q, key_lengths, q_segments, k_segments, allowed_pairs)
    return attention_backward(dout, q, k, v, out, lse, dlse, *masks, causal, scale)


def _check_impl(impl: str, device_type: str) -> None:
    if impl == "triton" and not triton_usable_for(device_type):
        raise RuntimeError(f"Triton attention cannot run on {device_type} tensors here "
                           "(CPU tensors need TRITON_INTERPRET=1 set before triton is imported)")
    if impl not in ("triton", "blocked"):
        raise ValueError(f"unknown fused attention impl {impl!r}")


# --------------------------------------------------------------------------- custom ops

@torch.library.custom_op("opt_scale::fused_attention", mutates_args=())
def fused_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_lengths: torch.Tensor | None,
                       q_segments: torch.Tensor | None, k_segments: torch.Tensor | None,
                       allowed_pairs: torch.Tensor | None, causal: bool, scale: float,
                       impl: str) -> tuple[torch.Tensor, torch.Tensor]:
    _check_impl(impl, q.device.type)
    fn = _triton_forward if impl == "triton" else blocked_forward
    out, lse = fn(q, k, v, key_lengths, q_segments, k_segments, allowed_pairs, causal, scale)
    return out, lse


@fused_attention_op.register_fake
def _(q, k, v, key_lengths, q_segments, k_segments, allowed_pairs, causal, scale, impl):
    B, H, Lq, _ = q.shape
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty(B, H, Lq, dtype=torch.float32)


@torch.library.custom_op("opt_scale::fused_attention_backward", mutates_args=())
def fused_attention_backward_op(dout: torch.Tensor, dlse: torch.Tensor | None, q: torch.Tensor, k: torch.Tensor,
                                v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                                key_lengths: torch.Tensor | None, q_segments: torch.Tensor | None,
                                k_segments: torch.Tensor | None, allowed_pairs: torch.Tensor | None, causal: bool,
                                scale: float, impl: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_impl(impl, q.device.type)
    fn = _triton_backward if impl == "triton" else blocked_backward
    return fn(dout, q, k, v, out, lse, dlse, key_lengths, q_segments, k_segments, allowed_pairs, causal, scale)


@fused_attention_backward_op.register_fake
def _(dout, dlse, q, k, v, out, lse, key_lengths, q_segments, k_segments, allowed_pairs, causal, scale, impl):
    return (torch.empty(q.shape, dtype=q.dtype, device=q.device), torch.empty(k.shape, dtype=k.dtype, device=k.device),
            torch.empty(v.shape, dtype=v.dtype, device=v.device))


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, key_lengths, q_segments, k_segments, allowed_pairs, causal, scale, impl = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, key_lengths, q_segments, k_segments, allowed_pairs)
    ctx.causal, ctx.scale, ctx.impl = causal, scale, impl


def _backward(ctx, dout, dlse):
    q, k, v, out, lse, key_lengths, q_segments, k_segments, allowed_pairs = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(out)
    dq, dk, dv = fused_attention_backward_op(dout.contiguous(), dlse, q, k, v, out, lse, key_lengths, q_segments,
                                             k_segments, allowed_pairs, ctx.causal, ctx.scale, ctx.impl)
    return dq, dk, dv, None, None, None, None, None, None, None


torch.library.register_autograd("opt_scale::fused_attention", _backward, setup_context=_setup_context)


def fused_attention(q, k, v, *, key_lengths=None, q_segments=None, k_segments=None, allowed_pairs=None,
                    causal: bool = False, scale: float | None = None,
                    impl: str = "triton") -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse) through the custom op; see :mod:`.attention` for the semantics."""
    scale = float(scale) if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    return fused_attention_op(q, k, v, key_lengths, q_segments, k_segments, allowed_pairs, bool(causal), scale, impl)
