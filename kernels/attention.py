"""Attention with key lengths, modality segments and causality, no N x N mask
in the caller's hands: masks are described by small integer vectors.

Semantics (all implementations agree):

* ``q``: [B, H, Lq, D]; ``k``, ``v``: [B, H, Lk, D].
* ``key_lengths`` [B] int: keys at positions >= length are padding.
* ``q_segments`` [B, Lq], ``k_segments`` [B, Lk] int and ``allowed_pairs``
  [S, S] bool: query of segment i may attend to key of segment j iff
  ``allowed_pairs[i, j]``.
* ``causal``: query i (of Lq) sits at absolute position ``Lk - Lq + i`` and
  sees keys at positions <= that (bottom-right aligned, so decoding with a
  KV cache uses the same flag).
* A query row whose keys are all masked returns zeros (and, with
  ``return_lse``, a log-sum-exp of -inf replaced by 0 so it stays finite).

Implementations (``backend=``, or ``OPT_SCALE_ATTENTION_BACKEND`` for code
that cannot pass it, e.g. a whole model under the Triton interpreter):

* ``"auto"`` (default): ``"triton"`` for CUDA tensors when Triton imports,
  otherwise ``"sdpa"``.
* ``"sdpa"``: PyTorch ``scaled_dot_product_attention`` with an equivalent
  boolean mask built here (the CPU path; autograd by PyTorch).
* ``"triton"``: the fused flash-attention kernels (:mod:`.attention_triton`)
  behind the ``opt_scale::fused_attention`` custom op. Forcing it on CPU
  tensors needs ``TRITON_INTERPRET=1`` (tests, ``opt-bench kernels``).
* ``"blocked"``: the custom op's PyTorch implementation (query-blocked, same
  recurrence as the kernels).
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F

from .index_checks import check_segment_ids
from .triton_support import triton_usable_for

BACKENDS = ("auto", "sdpa", "triton", "blocked")
BACKEND_ENV = "OPT_SCALE_ATTENTION_BACKEND"


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
              key_lengths: torch.Tensor | None = None,
              q_segments: torch.Tensor | None = None,
              k_segments: torch.Tensor | None = None,
              allowed_pairs: torch.Tensor | None = None,
              causal: bool = False,
              scale: float | None = None,
              return_lse: bool = False,
              backend: str | None = None):
    if (q_segments is None) != (k_segments is None) or ((q_segments is None) != (allowed_pairs is None)):
        raise ValueError("q_segments, k_segments and allowed_pairs go together")
    if allowed_pairs is not None:
        check_segment_ids(q_segments, k_segments, allowed_pairs.shape[0])  # before any backend reads them
    chosen = choose_backend(q, backend, num_segments=allowed_pairs.shape[0] if allowed_pairs is not None else 0)
    if chosen == "sdpa":
        return attention_reference(q, k, v, key_lengths=key_lengths, q_segments=q_segments,
                                   k_segments=k_segments, allowed_pairs=allowed_pairs, causal=causal,
                                   scale=scale, return_lse=return_lse)
    from .attention_op import fused_attention
    out, lse = fused_attention(q, k, v, key_lengths=key_lengths, q_segments=q_segments, k_segments=k_segments,
                               allowed_pairs=allowed_pairs, causal=causal, scale=scale, impl=chosen)
    return (out, lse) if return_lse else out


def choose_backend(q: torch.Tensor, backend: str | None = None, num_segments: int = 0) -> str:
    """The implementation a call runs: see the module doc."""
    backend = backend or os.environ.get(BACKEND_ENV, "auto")
    if backend not in BACKENDS:
        raise ValueError(f"attention backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    # Auto picks the kernels where they are compile-checked (opt-bench kernels):
    # head dims up to 128 (above that fp32 tiles can exceed shared memory on
    # every config) and up to 31 segments (int32 bit sets). backend="triton"
    # still forces them.
    if q.device.type == "cuda" and q.shape[-1] <= 128 and num_segments <= 31 and triton_usable_for("cuda"):
        return "triton"
    return "sdpa"


def build_mask(batch: int, lq: int, lk: int, device: torch.device, *,
               key_lengths=None, q_segments=None, k_segments=None, allowed_pairs=None,
               causal: bool = False) -> torch.Tensor | None:
    """Boolean [B, 1, Lq, Lk] mask (True = may attend), or None if unmasked."""
    mask = None
    if key_lengths is not None:
        mask = (torch.arange(lk, device=device)[None, :] < key_lengths[:, None].to(device))[:, None, None, :]
    if allowed_pairs is not None:
        seg = allowed_pairs.to(device=device, dtype=torch.bool)[q_segments.long()[:, :, None], k_segments.long()[:, None, :]]
        seg = seg[:, None]
        mask = seg if mask is None else mask & seg
    if causal:
        qpos = torch.arange(lq, device=device)[:, None] + (lk - lq)
        c = (torch.arange(lk, device=device)[None, :] <= qpos)[None, None]
        mask = c if mask is None else mask & c
    if mask is not None:
        mask = mask.expand(batch, 1, lq, lk)
    return mask


def attention_reference(q, k, v, *, key_lengths=None, q_segments=None, k_segments=None,
                        allowed_pairs=None, causal=False, scale=None, return_lse=False):
    """PyTorch path: ``scaled_dot_product_attention`` with an equivalent mask."""
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    scale = scale if scale is not None else 1.0 / math.sqrt(D)
    mask = build_mask(B, Lq, Lk, q.device, key_lengths=key_lengths, q_segments=q_segments,
                      k_segments=k_segments, allowed_pairs=allowed_pairs, causal=causal)
    if mask is None:
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)
        row_ok = None
    else:
        row_ok = mask.any(-1, keepdim=True)  # [B, 1, Lq, 1]
        # Fully masked rows would give NaN: let them see everything, then zero them.
        safe = mask | ~row_ok
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=safe, scale=scale)
        out = out.masked_fill(~row_ok, 0.0)
    if not return_lse:
        return out
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    return out, lse
