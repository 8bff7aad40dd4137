"""Text tower: token + position + modality-type embeddings -> LayerNorm -> transformer."""

from __future__ import annotations

import torch
import torch.nn as nn

from .config import TextConfig
from .layers import INIT_STD, Embedding, EncoderStack, Linear
from .norm import LayerNorm


class TextEncoder(nn.Module):
    def __init__(self, cfg: TextConfig, out_hidden: int):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("model.text.vocab_size must be set (it is filled in from the tokenizer)")
        self.tokens = Embedding(cfg.vocab_size, cfg.hidden)
        self.positions = Embedding(cfg.max_len, cfg.hidden)
        self.modality = nn.Parameter(torch.randn(cfg.hidden) * INIT_STD)
        self.embed_norm = LayerNorm(cfg.hidden)
        self.dropout = nn.Dropout(cfg.dropout)
        self.encoder = EncoderStack(cfg.layers, cfg.hidden, cfg.heads, cfg.ffn, cfg.dropout)
        self.proj = Linear(cfg.hidden, out_hidden) if cfg.hidden != out_hidden else nn.Identity()

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids [B, L], lengths [B] -> tokens [B, L, out_hidden], valid [B, L]."""
        L = ids.shape[1]
        pos = torch.arange(L, device=ids.device)
        x = self.tokens(ids) + self.positions(pos)[None] + self.modality
        x = self.dropout(self.embed_norm(x))
        x = self.encoder(x, key_lengths=lengths)
        valid = pos[None, :] < lengths[:, None]
        return self.proj(x), valid
