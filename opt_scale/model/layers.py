"""Transformer building blocks shared by every tower and decoder.

Pre-LN blocks (OPT uses pre-LN, GELU). Attention goes through
:func:`opt_scale.kernels.attention`, so masks travel as key lengths and
segment ids, never as N x N tensors. Weights are initialised inside the
layers' own constructors: under ``deepspeed.zero.Init`` a parameter is
partitioned as soon as its module is built, so initialising afterwards would
write into an empty shard.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from opt_scale.kernels import attention

from .norm import LayerNorm

INIT_STD = 0.02


@dataclass(frozen=True)
class Packing:
    """Variable-length rows stored flat: only real tokens, no padding.

    Token t of the flat [T, D] tensor sits at position ``index[t]`` of the
    padded [rows * length] layout; row r has ``lengths[r]`` tokens, first in
    its row. Linear layers and norms run on the T real tokens only;
    attention scatters them into the padded layout (key lengths mask the
    rest) and gathers its output back. On the cross-modal encoder, where
    dropped modalities make rows of very different lengths, this skips
    ~30-40% of the work that padding would cost."""
    index: torch.Tensor      # [T] int64
    lengths: torch.Tensor    # [rows]
    rows: int
    length: int

    @classmethod
    def from_valid(cls, valid: torch.Tensor) -> "Packing":
        """Rows whose valid tokens (``valid`` [rows, L] bool, any order) are
        packed to the front, in order."""
        lengths = valid.sum(1)
        length = max(1, int(lengths.max()))
        pos = valid.long().cumsum(1) - 1
        rows = torch.arange(valid.shape[0], device=valid.device)[:, None].expand_as(valid)
        return cls((rows * length + pos)[valid], lengths, valid.shape[0], length)

    def pad(self, flat: torch.Tensor) -> torch.Tensor:
        """[T, C] -> [rows, length, C], zeros at padding."""
        out = flat.new_zeros(self.rows * self.length, flat.shape[-1])
        return out.index_copy(0, self.index, flat).view(self.rows, self.length, -1)

    def unpad(self, padded: torch.Tensor) -> torch.Tensor:
        return padded.reshape(self.rows * self.length, -1).index_select(0, self.index)


class Linear(nn.Linear):
    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=INIT_STD)
        if self.bias is not None:
            nn.init.zeros_(self.bias)


class Embedding(nn.Embedding):
    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=INIT_STD)
        self._fill_padding_idx_with_zero()


# Cosine attention's per-head scale: where it starts, and the largest it may grow to (Swin Transformer v2).
QK_SCALE_INIT = 5.0
QK_SCALE_MAX = 100.0


class QKNorm(nn.Module):
    """Cosine attention (Swin Transformer v2; ViT-22B and OLMo 2 normalise
    queries and keys the same way): each head's logits are a learned scale
    times cos(q, k), instead of q.k / sqrt(d).

    Why: with std-0.02 projections, q.k / sqrt(d) starts near zero for every
    pair, so attention starts uniform: each query reads the mean of the keys'
    values, and learning *where* to look waits for the projections to grow.
    What a caption needs from an image (the shape of a small object) is on a
    few tokens; the mean dilutes it. Here logits start at the scale (5) times
    random cosines, so attention is selective from the first step and
    learning moves it, not its temperature. ``model.<part>.qk_norm``."""

    def __init__(self, heads: int):
        super().__init__()
        self.log_scale = nn.Parameter(torch.full((heads,), math.log(QK_SCALE_INIT)))

    def forward(self, q: torch.Tensor, k: torch.Tensor | None = None):
        """q [B, H, Lq, d], k [B, H, Lk, d] -> (scaled unit queries, unit keys), for attention at
        scale 1; k None: the keys are normalised elsewhere (cached memory keys). Called as a module
        (never a bare method), so ZeRO-3's hooks gather the scale."""
        scale = self.log_scale.clamp(max=math.log(QK_SCALE_MAX)).exp().to(q.dtype)[:, None, None]
        return F.normalize(q, dim=-1) * scale, None if k is None else F.normalize(k, dim=-1)


class SelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, qk_norm: bool = False):
        super().__init__()
        self.heads = heads
        self.qkv = Linear(hidden, 3 * hidden)
        self.out = Linear(hidden, hidden)
        self.qk_norm = QKNorm(heads) if qk_norm else None

    def forward(self, x: torch.Tensor, *, key_lengths=None, causal: bool = False,
                segments=None, allowed_pairs=None, cache: dict | None = None,
                packing: Packing | None = None) -> torch.Tensor:
        if packing is not None:  # x is flat [T, D]; attention runs on the padded layout
            qkv = packing.pad(self.qkv(x))
            o = self._attend(qkv, key_lengths=packing.lengths, causal=causal, segments=segments,
                             allowed_pairs=allowed_pairs)
            return self.out(packing.unpad(o))
        return self.out(self._attend(self.qkv(x), key_lengths=key_lengths, causal=causal, segments=segments,
                                     allowed_pairs=allowed_pairs, cache=cache))

    def _attend(self, qkv: torch.Tensor, *, key_lengths=None, causal: bool = False, segments=None,
                allowed_pairs=None, cache: dict | None = None) -> torch.Tensor:
        """qkv [B, L, 3D] -> attention output [B, L, D] (before the output projection)."""
        B, L, D3 = qkv.shape
        D = D3 // 3
        q, k, v = qkv.view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        scale = None
        if self.qk_norm is not None:
            q, k = self.qk_norm(q, k)
            scale = 1.0
        if cache is not None:  # incremental decoding: keys/values of earlier steps
            if "k" in cache:
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        o = attention(q, k, v, key_lengths=key_lengths, causal=causal, q_segments=segments,
                      k_segments=segments, allowed_pairs=allowed_pairs, scale=scale)
        return o.transpose(1, 2).reshape(B, L, D)


class CrossAttention(nn.Module):
    """Queries from the decoder, keys/values from an encoder's output."""

    def __init__(self, hidden: int, heads: int, memory_hidden: int | None = None, qk_norm: bool = False):
        super().__init__()
        self.heads = heads
        self.q = Linear(hidden, hidden)
        self.kv = Linear(memory_hidden or hidden, 2 * hidden)
        self.out = Linear(hidden, hidden)
        self.qk_norm = QKNorm(heads) if qk_norm else None

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_lengths=None,
                cache: dict | None = None) -> torch.Tensor:
        B, L, D = x.shape
        h = self.heads
        q = self.q(x).view(B, L, h, D // h).transpose(1, 2)
        if cache is not None and "mk" in cache:  # memory projections are computed once per sequence
            k, v = cache["mk"], cache["mv"]
        else:
            M = memory.shape[1]
            k, v = self.kv(memory).view(B, M, 2, h, D // h).permute(2, 0, 3, 1, 4)
            if self.qk_norm is not None:
                k = F.normalize(k, dim=-1)
            if cache is not None:
                cache["mk"], cache["mv"] = k, v
        scale = None
        if self.qk_norm is not None:
            q, _ = self.qk_norm(q)  # the keys are normalised above, once per sequence
            scale = 1.0
        o = attention(q, k, v, key_lengths=memory_lengths, scale=scale)
        return self.out(o.transpose(1, 2).reshape(B, L, D))


class FeedForward(nn.Module):
    def __init__(self, hidden: int, ffn: int, dropout: float):
        super().__init__()
        self.up = Linear(hidden, ffn)
        self.down = Linear(ffn, hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.dropout(F.gelu(self.up(x))))


class EncoderBlock(nn.Module):
    def __init__(self, hidden: int, heads: int, ffn: int, dropout: float, qk_norm: bool = False):
        super().__init__()
        self.norm1 = LayerNorm(hidden)
        self.attn = SelfAttention(hidden, heads, qk_norm)
        self.norm2 = LayerNorm(hidden)
        self.ffn = FeedForward(hidden, ffn, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, key_lengths=None, segments=None, allowed_pairs=None, packing: Packing | None = None):
        """x [B, L, D], or flat [T, D] with ``packing``."""
        x = x + self.dropout(self.attn(self.norm1(x), key_lengths=key_lengths, segments=segments,
                                       allowed_pairs=allowed_pairs, packing=packing))
        return x + self.dropout(self.ffn(self.norm2(x)))


class DecoderBlock(nn.Module):
    """Causal self-attention, cross-attention to memory, feed-forward."""

    def __init__(self, hidden: int, heads: int, ffn: int, dropout: float, memory_hidden: int | None = None,
                 qk_norm: bool = False):
        super().__init__()
        self.norm1 = LayerNorm(hidden)
        self.self_attn = SelfAttention(hidden, heads, qk_norm)
        self.norm2 = LayerNorm(hidden)
        self.cross_attn = CrossAttention(hidden, heads, memory_hidden, qk_norm)
        self.norm3 = LayerNorm(hidden)
        self.ffn = FeedForward(hidden, ffn, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, memory, memory_lengths=None, key_lengths=None, cache: dict | None = None):
        x = x + self.dropout(self.self_attn(self.norm1(x), key_lengths=key_lengths, causal=True, cache=cache))
        x = x + self.dropout(self.cross_attn(self.norm2(x), memory, memory_lengths, cache=cache))
        return x + self.dropout(self.ffn(self.norm3(x)))


def run_block(block: nn.Module, recompute: bool, *args, **kwargs) -> torch.Tensor:
    """``block(*args, **kwargs)``; with ``recompute`` (model.activation_checkpointing),
    while training, its inner activations are not kept but recomputed in backward.

    Reentrant checkpointing, as DeepSpeed's own: the recomputed forward gathers
    the block's ZeRO-3 partitions again through ZeRO's module hooks. (Both
    variants pass tests/test_zero3_consistency.py with DeepSpeed 0.19; the
    non-reentrant one checks the shapes of the tensors it saved, which has
    been reported failing with partitioned weights, huggingface/trl#2514.)
    Every tensor that may need a gradient (hidden states, a decoder's
    memory) must therefore come in ``args``: reentrant checkpointing passes
    gradients to its explicit inputs only; ``kwargs`` are for the rest
    (packing). With no input needing a gradient it would give the block's
    weights none, so such a call runs as it is."""
    needs_grad = any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)
    if not (recompute and block.training and torch.is_grad_enabled() and needs_grad):
        return block(*args, **kwargs)
    return checkpoint(lambda *inputs: block(*inputs, **kwargs), *args, use_reentrant=True)


def enable_activation_checkpointing(module: nn.Module) -> int:
    """Recompute every transformer block of ``module`` in backward (the
    towers', the cross-modal encoder's, the decoders'); returns the number of
    stacks switched. Only the block inputs stay in memory between forward
    and backward: one [tokens, hidden] tensor per block instead of about
    ten, at the price of a second forward of each block."""
    stacks = [m for m in module.modules() if hasattr(m, "recompute")]
    for stack in stacks:
        stack.recompute = True
    return len(stacks)


def compile_blocks(module: nn.Module, backend: str) -> int:
    """torch.compile every transformer block of ``module`` (train.compile);
    returns the number of blocks. Call before ``deepspeed.initialize``.

    Each block becomes a ZeRO-3 leaf (DeepSpeed gathers its parameters at the
    block's own hooks and puts none on its children) and only its ``forward``
    is compiled, so the hooks stay eager around one hook-free graph per
    block: compiling the module call instead traced DeepSpeed's per-submodule
    hooks and recompiled at every submodule until torch gave up. Parameter
    names and state dicts are unchanged, so checkpoints load either way;
    blocks run under activation checkpointing too."""
    from deepspeed.utils import set_z3_leaf_modules_by_name
    names = [f"{stack_name}.blocks.{i}" if stack_name else f"blocks.{i}"
             for stack_name, stack in module.named_modules() if hasattr(stack, "recompute")
             for i in range(len(stack.blocks))]
    blocks, _ = set_z3_leaf_modules_by_name(module, names)
    for block in blocks:
        block.forward = torch.compile(block.forward, backend=backend, dynamic=True)
    return len(blocks)


class EncoderStack(nn.Module):
    def __init__(self, layers: int, hidden: int, heads: int, ffn: int, dropout: float, qk_norm: bool = False):
        super().__init__()
        self.blocks = nn.ModuleList(EncoderBlock(hidden, heads, ffn, dropout, qk_norm) for _ in range(layers))
        self.norm = LayerNorm(hidden)
        self.recompute = False  # see enable_activation_checkpointing

    def forward(self, x, key_lengths=None, segments=None, allowed_pairs=None, packing: Packing | None = None):
        """``segments`` [B, L] (a modality id per token) and ``allowed_pairs``
        [S, S] (which segment may attend to which) restrict attention inside the
        fused kernel. OPT's cross-modal encoder attends all-to-all and passes
        neither; they are there for variants that keep modalities apart.
        With ``packing``, ``x`` is the flat [T, D] real tokens (see :class:`Packing`)."""
        for block in self.blocks:
            x = run_block(block, self.recompute, x, key_lengths, segments, allowed_pairs, packing=packing)
        return self.norm(x)


def masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over the valid tokens [B, L, D] -> [B, D] (zeros for a row with none)."""
    w = valid.to(x.dtype)[..., None]
    return (x * w).sum(1) / w.sum(1).clamp(min=1.0)


def masked_max(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Feature-wise max over the valid tokens [B, L, D] -> [B, D] (zeros for a row with none)."""
    out = x.masked_fill(~valid[..., None], torch.finfo(x.dtype).min).max(1).values
    return torch.where(valid.any(1, keepdim=True), out, torch.zeros_like(out))
