"""Triton kernels of the fused cross-modal attention (flash-attention style).

Forward: one program per (query tile, batch x head) walks the key tiles with
an online softmax, so no [Lq, Lk] score matrix ever exists in memory; it
writes the output and the per-row log-sum-exp (natural log, fp32) that the
backward recomputes probabilities from. Backward: one kernel per key tile
accumulates dK and dV over query tiles, another per query tile accumulates
dQ over key tiles (two passes instead of atomics: deterministic, and dQ
stays in registers).

Masks arrive as small integer vectors, never as an N x N tensor:

* ``key_lengths`` [B]: keys at positions >= length are padding. Loops stop
  at the last tile holding a real key.
* segments, pre-digested by the launcher into bit sets: ``q_allow`` [B, Lq]
  holds for each query the set of key segments it may see (bit j set iff
  ``allowed_pairs[seg_q, j]``), ``k_bit`` [B, Lk] holds ``1 << seg_k``. A
  pair is allowed iff ``q_allow & k_bit != 0``, two integer ops per score.
  OR-reducing both over a tile tells, exactly at the level of segment sets,
  whether any pair in the tile can be allowed; tiles that cannot are skipped
  before their matmuls. Tile edges need not fall on segment boundaries.
* causal, bottom-right aligned: query i sits at absolute position
  ``Lk - Lq + i``. Loops stop at (forward, dQ) or start from (dK/dV) the
  diagonal tile.

Rows whose keys are all masked keep ``l == 0``; they write zeros and an LSE
of 0 (finite), and their probabilities are 0 in the backward.

All dot products accumulate in fp32; fp16/bf16 inputs are fed to the tensor
cores as they are and the probabilities are cast back to the value dtype
before the P @ V product, as in FlashAttention-2.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .triton_support import interpreter_active, next_power_of_2

LOG2E = 1.4426950408889634


# --------------------------------------------------------------------------- configs

def _configs(shapes: list[tuple[int, int, int, int]]) -> list[triton.Config]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) -> autotune configs. The
    interpreter gets one small config: autotuning there would only multiply
    the (slow) interpreted runs."""
    if interpreter_active():
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=1, num_stages=1)]
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s) for bm, bn, w, s in shapes]


# H100: 128x64 and 128x128 tiles with 4-8 warps are where FlashAttention-2
# lands; the smaller ones win for short sequences (few programs otherwise).
_FWD_SHAPES = [(128, 128, 8, 3), (128, 64, 4, 3), (128, 64, 8, 4), (64, 64, 4, 3), (64, 32, 4, 4)]
# Backward kernels hold more tiles live (q, dO, k, v, two accumulators): smaller.
_BWD_SHAPES = [(64, 128, 8, 3), (64, 64, 4, 3), (32, 128, 4, 3), (32, 64, 4, 2)]


H100_SHARED_MEMORY = 227 * 1024  # per block, opted in


def shared_memory_budget(q) -> int:
    """Shared memory a block may use on ``q``'s GPU (A100: 163 KiB, H100: 227
    KiB); H100's where there is no GPU to ask (the interpreter, compile_check)."""
    if getattr(q, "is_cuda", False):
        props = torch.cuda.get_device_properties(q.device)
        return getattr(props, "shared_memory_per_block_optin", H100_SHARED_MEMORY)
    return H100_SHARED_MEMORY


def _prune_by_shared_memory(configs, named_args, **kwargs):
    """Drop configs whose tiles cannot fit in the GPU's shared memory. The
    estimate (Q tile + double-buffered K and V tiles per stage) is above
    what ptxas reports for every config we compiled for sm_80 and sm_90
    (``compile_check --launch-variants``), so what survives fits; fp32 inputs
    at head_dim 128 lose the big tiles (a 64x128 dK/dV tile there needs 256
    KiB). The budget is the device's: with H100's 227 KiB an A100 (163 KiB)
    kept a dQ config that needs 176 KiB there. ``shared_budget`` overrides it
    (compile_check, for a target that is not here)."""
    head = kwargs.get("BLOCK_D", named_args.get("BLOCK_D", 64))
    q = named_args.get("Q")
    elem = q.element_size() if hasattr(q, "element_size") else 2
    budget = kwargs.get("shared_budget") or shared_memory_budget(q)
    kept = [c for c in configs
            if (c.kwargs["BLOCK_M"] * head + 2 * c.num_stages * c.kwargs["BLOCK_N"] * head) * elem <= budget]
    return kept or configs[-1:]


_AUTOTUNE_KEY = ["BLOCK_D", "SEQ_Q_BUCKET", "SEQ_K_BUCKET", "CAUSAL", "HAS_LENGTHS", "HAS_SEGMENTS"]


@triton.jit
def _bit_or(a, b):
    return a | b


@triton.jit
def _scores_mask(offs_m, offs_n, Lq, kv_len, causal_shift, q_allow, k_bit,
                 CAUSAL: tl.constexpr, HAS_SEGMENTS: tl.constexpr):
    """[BLOCK_M, BLOCK_N] True where query offs_m may attend key offs_n."""
    valid = (offs_m[:, None] < Lq) & (offs_n[None, :] < kv_len)
    if CAUSAL:
        valid = valid & (offs_n[None, :] <= offs_m[:, None] + causal_shift)
    if HAS_SEGMENTS:
        valid = valid & ((q_allow[:, None] & k_bit[None, :]) != 0)
    return valid


@triton.jit
def _segment_bits(Bits, b, length, offs, limit, HAS_SEGMENTS: tl.constexpr, BLOCK: tl.constexpr):
    """(bit sets of positions ``offs`` of sample b, their OR over the tile);
    positions at or past ``limit`` contribute nothing. Zeros without segments."""
    bits = tl.zeros([BLOCK], dtype=tl.int32)
    if HAS_SEGMENTS:
        bits = tl.load(Bits + b * length + offs, mask=offs < limit, other=0)
    return bits, tl.reduce(bits, 0, _bit_or)


@triton.jit
def _visible_key_end(pid_m, kv_len, Lq, causal_shift, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr):
    """Exclusive end of the keys that query tile pid_m can see: the key
    length, and with causality the last real query's own absolute position."""
    hi = kv_len
    if CAUSAL:
        hi = tl.minimum(hi, tl.minimum((pid_m + 1) * BLOCK_M, Lq) + causal_shift)
    return hi


@triton.jit
def _key_length(KeyLengths, b, Lk, HAS_LENGTHS: tl.constexpr):
    kv_len = Lk
    if HAS_LENGTHS:
        kv_len = tl.minimum(tl.load(KeyLengths + b).to(tl.int32), Lk)
    return kv_len


# --------------------------------------------------------------------------- forward

@triton.autotune(configs=_configs(_FWD_SHAPES), key=_AUTOTUNE_KEY,
                 prune_configs_by={"early_config_prune": _prune_by_shared_memory})
@triton.jit
def _attention_fwd_kernel(
    Q, K, V, Out, Lse, KeyLengths, QAllow, KBit,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    H, Lq, Lk, D, qk_scale,
    SEQ_Q_BUCKET, SEQ_K_BUCKET,  # autotune key only: retune per length bucket, not per length
    CAUSAL: tl.constexpr, HAS_LENGTHS: tl.constexpr, HAS_SEGMENTS: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D

    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                mask=(offs_m[:, None] < Lq) & d_ok[None, :], other=0.0)
    kv_len = _key_length(KeyLengths, b, Lk, HAS_LENGTHS)
    causal_shift = Lk - Lq
    hi = _visible_key_end(pid_m, kv_len, Lq, causal_shift, CAUSAL, BLOCK_M)
    q_allow, q_tile_bits = _segment_bits(QAllow, b, Lq, offs_m, Lq, HAS_SEGMENTS, BLOCK_M)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running max, log2 units
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        k_bit, k_tile_bits = _segment_bits(KBit, b, Lk, offs_n, kv_len, HAS_SEGMENTS, BLOCK_N)
        live = True
        if HAS_SEGMENTS:  # no allowed segment pair in this tile: skip its matmuls
            live = (q_tile_bits & k_tile_bits) != 0
        if live:
            kv_mask = (offs_n[:, None] < kv_len) & d_ok[None, :]
            k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd, mask=kv_mask, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
            valid = _scores_mask(offs_m, offs_n, Lq, kv_len, causal_shift, q_allow, k_bit, CAUSAL, HAS_SEGMENTS)
            s = tl.where(valid, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            # a row with nothing visible yet keeps m = -inf: subtract 0 instead of -inf (no NaN)
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.math.exp2(s - m_safe[:, None])
            alpha = tl.math.exp2(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd, mask=kv_mask, other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
            m_i = m_new

    empty_row = l_i == 0.0
    l_safe = tl.where(empty_row, 1.0, l_i)
    out = acc / l_safe[:, None]
    lse = tl.where(empty_row, 0.0, (m_i + tl.math.log2(l_safe)) * 0.6931471805599453)
    row_ok = offs_m < Lq
    tl.store(Out + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od,
             out.to(Out.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
    tl.store(Lse + pid_bh * Lq + offs_m, lse, mask=row_ok)


# --------------------------------------------------------------------------- backward

@triton.autotune(configs=_configs(_BWD_SHAPES), key=_AUTOTUNE_KEY,
                 prune_configs_by={"early_config_prune": _prune_by_shared_memory})
@triton.jit
def _attention_bwd_dkdv_kernel(
    Q, K, V, DO, Lse, Delta, DK, DV, KeyLengths, QAllow, KBit,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_dom, stride_dod,
    H, Lq, Lk, D, qk_scale, scale,
    SEQ_Q_BUCKET, SEQ_K_BUCKET,
    CAUSAL: tl.constexpr, HAS_LENGTHS: tl.constexpr, HAS_SEGMENTS: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One program per key tile: dV = P^T dO, dK = scale * dS^T Q over query tiles.
    dK/dV are written contiguous [B, H, Lk, D] by this kernel."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    kv_len = _key_length(KeyLengths, b, Lk, HAS_LENGTHS)
    causal_shift = Lk - Lq

    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    if start_n < kv_len:  # a tile of padding keys only has zero gradients
        kv_mask = (offs_n[:, None] < kv_len) & d_ok[None, :]
        k = tl.load(K + b * stride_kb + h * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd,
                    mask=kv_mask, other=0.0)
        v = tl.load(V + b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                    mask=kv_mask, other=0.0)
        k_bit, k_tile_bits = _segment_bits(KBit, b, Lk, offs_n, kv_len, HAS_SEGMENTS, BLOCK_N)
        lo = 0
        if CAUSAL:
            # queries before this one see none of the tile's keys
            lo = tl.maximum(start_n - causal_shift, 0) // BLOCK_M * BLOCK_M
        q_base = Q + b * stride_qb + h * stride_qh
        do_base = DO + b * stride_dob + h * stride_doh
        for start_m in range(lo, Lq, BLOCK_M):
            offs_m = start_m + offs_m0
            q_allow, q_tile_bits = _segment_bits(QAllow, b, Lq, offs_m, Lq, HAS_SEGMENTS, BLOCK_M)
            live = True
            if HAS_SEGMENTS:
                live = (q_tile_bits & k_tile_bits) != 0
            if live:
                q_mask = (offs_m[:, None] < Lq) & d_ok[None, :]
                q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd, mask=q_mask, other=0.0)
                do = tl.load(do_base + offs_m[:, None] * stride_dom + offs_d[None, :] * stride_dod,
                             mask=q_mask, other=0.0)
                lse2 = tl.load(Lse + pid_bh * Lq + offs_m, mask=offs_m < Lq, other=0.0) * 1.4426950408889634
                delta = tl.load(Delta + pid_bh * Lq + offs_m, mask=offs_m < Lq, other=0.0)
                s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
                valid = _scores_mask(offs_m, offs_n, Lq, kv_len, causal_shift, q_allow, k_bit, CAUSAL, HAS_SEGMENTS)
                p = tl.where(valid, tl.math.exp2(s - lse2[:, None]), 0.0)
                dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=DOT_PRECISION)
                dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
                ds = p * (dp - delta[:, None])
                dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=DOT_PRECISION)
    out_offs = pid_bh * Lk * D + offs_n[:, None] * D + offs_d[None, :]
    out_mask = (offs_n[:, None] < Lk) & d_ok[None, :]
    tl.store(DK + out_offs, (dk * scale).to(DK.dtype.element_ty), mask=out_mask)
    tl.store(DV + out_offs, dv.to(DV.dtype.element_ty), mask=out_mask)


@triton.autotune(configs=_configs(_BWD_SHAPES), key=_AUTOTUNE_KEY,
                 prune_configs_by={"early_config_prune": _prune_by_shared_memory})
@triton.jit
def _attention_bwd_dq_kernel(
    Q, K, V, DO, Lse, Delta, DQ, KeyLengths, QAllow, KBit,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_dom, stride_dod,
    H, Lq, Lk, D, qk_scale, scale,
    SEQ_Q_BUCKET, SEQ_K_BUCKET,
    CAUSAL: tl.constexpr, HAS_LENGTHS: tl.constexpr, HAS_SEGMENTS: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One program per query tile: dQ = scale * dS K over key tiles (contiguous output)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    row_ok = offs_m < Lq
    q_mask = row_ok[:, None] & d_ok[None, :]
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                mask=q_mask, other=0.0)
    do = tl.load(DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dom + offs_d[None, :] * stride_dod,
                 mask=q_mask, other=0.0)
    lse2 = tl.load(Lse + pid_bh * Lq + offs_m, mask=row_ok, other=0.0) * 1.4426950408889634
    delta = tl.load(Delta + pid_bh * Lq + offs_m, mask=row_ok, other=0.0)
    kv_len = _key_length(KeyLengths, b, Lk, HAS_LENGTHS)
    causal_shift = Lk - Lq
    hi = _visible_key_end(pid_m, kv_len, Lq, causal_shift, CAUSAL, BLOCK_M)
    q_allow, q_tile_bits = _segment_bits(QAllow, b, Lq, offs_m, Lq, HAS_SEGMENTS, BLOCK_M)

    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        k_bit, k_tile_bits = _segment_bits(KBit, b, Lk, offs_n, kv_len, HAS_SEGMENTS, BLOCK_N)
        live = True
        if HAS_SEGMENTS:  # no allowed segment pair in this tile: skip its matmuls
            live = (q_tile_bits & k_tile_bits) != 0
        if live:
            kv_mask = (offs_n[:, None] < kv_len) & d_ok[None, :]
            k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd, mask=kv_mask, other=0.0)
            v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd, mask=kv_mask, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
            valid = _scores_mask(offs_m, offs_n, Lq, kv_len, causal_shift, q_allow, k_bit, CAUSAL, HAS_SEGMENTS)
            p = tl.where(valid, tl.math.exp2(s - lse2[:, None]), 0.0)
            dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)
    tl.store(DQ + pid_bh * Lq * D + offs_m[:, None] * D + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty),
             mask=q_mask)


# --------------------------------------------------------------------------- launchers

def _dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs use TF32 tensor cores only where the user allowed TF32 for
    matmuls; half types always run natively."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def _mask_args(key_lengths, q_allow, k_bit, q: torch.Tensor) -> tuple:
    """Kernels take a pointer for every mask input; absent ones get a dummy
    that the constexpr flags never read."""
    dummy = q.new_empty(1, dtype=torch.int32)
    return (key_lengths if key_lengths is not None else dummy,
            q_allow if q_allow is not None else dummy,
            k_bit if k_bit is not None else dummy)


def _common_meta(q, k, key_lengths, q_allow, causal: bool) -> dict:
    Lq, Lk, D = q.shape[2], k.shape[2], q.shape[3]
    return dict(SEQ_Q_BUCKET=next_power_of_2(Lq), SEQ_K_BUCKET=next_power_of_2(Lk), CAUSAL=causal,
                HAS_LENGTHS=key_lengths is not None, HAS_SEGMENTS=q_allow is not None,
                DOT_PRECISION=_dot_precision(q.dtype), BLOCK_D=max(16, next_power_of_2(D)))


def attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_lengths: torch.Tensor | None,
                      q_allow: torch.Tensor | None, k_bit: torch.Tensor | None, causal: bool,
                      scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (out [B, H, Lq, D] in q's dtype, lse [B, H, Lq] fp32)."""
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty(B, H, Lq, device=q.device, dtype=torch.float32)
    lengths, allow, bits = _mask_args(key_lengths, q_allow, k_bit, q)
    grid = lambda meta: (triton.cdiv(Lq, meta["BLOCK_M"]), B * H)  # noqa: E731
    _attention_fwd_kernel[grid](
        q, k, v, out, lse, lengths, allow, bits,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        H, Lq, Lk, D, scale * LOG2E, **_common_meta(q, k, key_lengths, q_allow, causal))
    return out, lse


def attention_backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                       lse: torch.Tensor, dlse: torch.Tensor | None, key_lengths: torch.Tensor | None,
                       q_allow: torch.Tensor | None, k_bit: torch.Tensor | None, causal: bool,
                       scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    # delta_i = sum_d dO*O - dLSE_i: d(lse_i)/d(s_ij) = P_ij, so an LSE
    # gradient only shifts the row term of dS = P * (dP - delta).
    delta = (dout.float() * out.float()).sum(-1)
    if dlse is not None:
        delta = delta - dlse.float()
    delta = delta.contiguous()
    lse = lse.contiguous()
    dq = torch.empty(B, H, Lq, D, device=q.device, dtype=q.dtype)
    dk = torch.empty(B, H, Lk, D, device=k.device, dtype=k.dtype)
    dv = torch.empty(B, H, Lk, D, device=v.device, dtype=v.dtype)
    lengths, allow, bits = _mask_args(key_lengths, q_allow, k_bit, q)
    meta = _common_meta(q, k, key_lengths, q_allow, causal)
    strides = (*q.stride(), *k.stride(), *v.stride(), *dout.stride())
    _attention_bwd_dkdv_kernel[lambda m: (triton.cdiv(Lk, m["BLOCK_N"]), B * H)](
        q, k, v, dout, lse, delta, dk, dv, lengths, allow, bits, *strides,
        H, Lq, Lk, D, scale * LOG2E, scale, **meta)
    _attention_bwd_dq_kernel[lambda m: (triton.cdiv(Lq, m["BLOCK_M"]), B * H)](
        q, k, v, dout, lse, delta, dq, lengths, allow, bits, *strides,
        H, Lq, Lk, D, scale * LOG2E, scale, **meta)
    return dq, dk, dv


def segment_bits(q_segments: torch.Tensor, k_segments: torch.Tensor,
                 allowed_pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q_allow [B, Lq], k_bit [B, Lk]) int32 bit sets; see the module doc."""
    S = allowed_pairs.shape[0]
    if S > 31:
        raise ValueError(f"at most 31 segments fit the int32 bit sets, got {S}")
    device = allowed_pairs.device
    weights = torch.ones(S, dtype=torch.int64, device=device) << torch.arange(S, device=device)
    allow_rows = (allowed_pairs.to(torch.int64) * weights[None, :]).sum(1)
    device = q_segments.device
    q_allow = allow_rows.to(device)[q_segments.long()].to(torch.int32).contiguous()
    k_bit = (torch.ones((), dtype=torch.int64, device=device) << k_segments.long()).to(torch.int32).contiguous()
    return q_allow, k_bit


def default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)
