"""Autoregressive decoders over the cross-modal encoding.

* :class:`TextDecoder` rebuilds / generates captions (DTR, captioning);
* :class:`ImageDecoder` predicts / generates an image's VQ codes (DIR,
  text-to-image).

Both are pre-LN transformer decoders (causal self-attention, cross-attention
to the packed cross-modal memory, feed-forward) whose output projection is
tied to their input embedding. Training losses are computed inside
``forward`` (ZeRO-3 gathers the tied weight only there); :meth:`step` serves
generation with per-layer KV caches.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from opt_scale.kernels import masked_linear_cross_entropy

from .config import TransformerShape
from .layers import DecoderBlock, Embedding, run_block
from .norm import LayerNorm

IGNORE_INDEX = -100


class CausalDecoder(nn.Module):
    def __init__(self, cfg: TransformerShape, vocab: int, max_len: int, memory_hidden: int,
                 label_smoothing: float = 0.0):
        super().__init__()
        self.vocab = vocab
        self.max_len = max_len
        self.label_smoothing = label_smoothing
        self.tokens = Embedding(vocab, cfg.hidden)
        self.positions = Embedding(max_len, cfg.hidden)
        self.blocks = nn.ModuleList(
            DecoderBlock(cfg.hidden, cfg.heads, cfg.ffn, cfg.dropout, memory_hidden, cfg.qk_norm)
            for _ in range(cfg.layers))
        self.norm = LayerNorm(cfg.hidden)
        self.out_bias = nn.Parameter(torch.zeros(vocab))
        self.recompute = False  # see layers.enable_activation_checkpointing

    def hidden(self, inputs: torch.Tensor, memory: torch.Tensor, memory_lengths: torch.Tensor,
               caches: list[dict] | None = None, start: int = 0) -> torch.Tensor:
        L = inputs.shape[1]
        pos = torch.arange(start, start + L, device=inputs.device)
        x = self.tokens(inputs) + self.positions(pos)[None]
        for i, block in enumerate(self.blocks):
            # Generation (a key/value cache per block) runs without gradients: never recomputed.
            x = run_block(block, self.recompute, x, memory, memory_lengths,
                          cache=None if caches is None else caches[i])
        return self.norm(x)

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor, memory: torch.Tensor,
                memory_lengths: torch.Tensor):
        """Teacher-forced loss: inputs/targets [B, L] (targets IGNORE_INDEX at padding)."""
        h = self.hidden(inputs, memory, memory_lengths)
        flat_targets = targets.reshape(-1)
        positions = (flat_targets != IGNORE_INDEX).nonzero().squeeze(1)
        return masked_linear_cross_entropy(h, self.tokens.weight, self.out_bias, positions,
                                           flat_targets.index_select(0, positions),
                                           label_smoothing=self.label_smoothing, ignore_index=IGNORE_INDEX)

    def step(self, inputs: torch.Tensor, memory: torch.Tensor, memory_lengths: torch.Tensor,
             caches: list[dict], start: int) -> torch.Tensor:
        """Logits [B, vocab] for the last of ``inputs`` given cached earlier steps.

        For generation on consolidated weights (not inside a ZeRO-3 engine)."""
        h = self.hidden(inputs, memory, memory_lengths, caches, start)[:, -1]
        return (h @ self.tokens.weight.t() + self.out_bias).float()

    def new_caches(self) -> list[dict]:
        return [{} for _ in self.blocks]


class TextDecoder(CausalDecoder):
    """Caption decoder; vocabulary = the SentencePiece vocabulary."""


class ImageDecoder(CausalDecoder):
    """VQ-code decoder; vocabulary = codebook + one [bos] code."""

    @property
    def bos(self) -> int:
        return self.vocab - 1


def reorder_caches(caches: list[dict], index: torch.Tensor) -> None:
    """Beam search: keep the caches of the surviving beams, in their new order."""
    for cache in caches:
        for k in list(cache):
            cache[k] = cache[k].index_select(0, index)
