"""What the three single-modal towers share.

Each tower turns its raw input into token embeddings its own way (word
pieces, pixel patches, subsampled log-mel frames); from there all do the
same: optional [mask] replacement, + position + modality-type embeddings ->
LayerNorm -> transformer -> projection to the cross-modal width.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .config import TransformerShape
from .layers import INIT_STD, Embedding, EncoderStack, Linear
from .norm import LayerNorm


class TokenTower(nn.Module):
    def __init__(self, cfg: TransformerShape, max_tokens: int, out_hidden: int, maskable: bool):
        super().__init__()
        self.positions = Embedding(max_tokens, cfg.hidden)
        self.modality = nn.Parameter(torch.randn(cfg.hidden) * INIT_STD)
        self.mask_token = nn.Parameter(torch.randn(cfg.hidden) * INIT_STD) if maskable else None
        self.embed_norm = LayerNorm(cfg.hidden)
        self.dropout = nn.Dropout(cfg.dropout)
        self.encoder = EncoderStack(cfg.layers, cfg.hidden, cfg.heads, cfg.ffn, cfg.dropout)
        self.proj = Linear(cfg.hidden, out_hidden) if cfg.hidden != out_hidden else nn.Identity()

    def encode(self, x: torch.Tensor, lengths: torch.Tensor | None = None,
               token_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Token embeddings [B, L, hidden] -> (outputs [B, L, out_hidden], valid [B, L])."""
        if token_mask is not None:
            x = torch.where(token_mask[..., None], self.mask_token.to(x.dtype), x)
        L = x.shape[1]
        pos = torch.arange(L, device=x.device)
        x = self.dropout(self.embed_norm(x + self.positions(pos)[None] + self.modality))
        x = self.encoder(x, key_lengths=lengths)
        if lengths is None:
            valid = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        else:
            valid = pos[None, :] < lengths[:, None]
        return self.proj(x), valid
