"""What the three single-modal towers share.

Each tower turns its raw input into token embeddings its own way (word
pieces, pixel patches, subsampled log-mel frames); from there all do the
same: optional [mask] replacement, + position + modality-type embeddings ->
LayerNorm -> transformer -> projection to the cross-modal width.

Image patch positions are a fixed 2-D sin-cos code over the patch grid (as
MAE) plus a learned embedding. Learned alone they start at std 0.02, far
below the content they are added to: after the demo's 220 steps captions
still named every shape's position "right" (while naming its colour right
every time); with the code, held-out text-to-image R@1 rose from 66% to 86%.
Text and audio keep learned positions only: the same 1-D code there put
position features into every token, which the contrastive task's max
pooling then carried, and alignment failed (R@5 at chance).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .config import TransformerShape
from .layers import INIT_STD, Embedding, EncoderStack, Linear
from .norm import LayerNorm


def sincos_1d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """[N] positions -> [N, dim] sin-cos code (Transformer), values in [-1, 1]."""
    half = dim // 2
    freq = torch.exp(-math.log(10_000.0) * torch.arange(half, dtype=torch.float64) / max(half, 1))
    angle = positions.double()[:, None] * freq[None]
    code = torch.cat([angle.sin(), angle.cos()], dim=1)
    return torch.nn.functional.pad(code, (0, dim - 2 * half)).float()


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """[grid * grid, dim]: the 2-D code of a raster grid (half the channels
    for the row, half for the column)."""
    rows, cols = torch.arange(grid).repeat_interleave(grid), torch.arange(grid).repeat(grid)
    half = dim // 2
    return torch.cat([sincos_1d(rows, half), sincos_1d(cols, dim - half)], dim=1)


class TokenTower(nn.Module):
    def __init__(self, cfg: TransformerShape, max_tokens: int, out_hidden: int, maskable: bool, grid: int = 0):
        super().__init__()
        # A buffer, not a parameter: fixed, and never partitioned by ZeRO-3.
        # grid: the tower's tokens are a grid x grid raster (images), which gets the fixed code.
        self.register_buffer("fixed_positions", sincos_2d(grid, cfg.hidden) if grid else None, persistent=False)
        self.positions = Embedding(max_tokens, cfg.hidden)
        self.modality = nn.Parameter(torch.randn(cfg.hidden) * INIT_STD)
        self.mask_token = nn.Parameter(torch.randn(cfg.hidden) * INIT_STD) if maskable else None
        self.embed_norm = LayerNorm(cfg.hidden)
        self.dropout = nn.Dropout(cfg.dropout)
        self.encoder = EncoderStack(cfg.layers, cfg.hidden, cfg.heads, cfg.ffn, cfg.dropout, cfg.qk_norm)
        self.proj = Linear(cfg.hidden, out_hidden) if cfg.hidden != out_hidden else nn.Identity()

    def encode(self, x: torch.Tensor, lengths: torch.Tensor | None = None,
               token_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Token embeddings [B, L, hidden] -> (outputs [B, L, out_hidden], valid [B, L])."""
        if token_mask is not None:
            x = torch.where(token_mask[..., None], self.mask_token.to(x.dtype), x)
        L = x.shape[1]
        pos = torch.arange(L, device=x.device)
        positions = self.positions(pos)
        if self.fixed_positions is not None:
            positions = positions + self.fixed_positions[:L].to(positions.dtype)
        x = self.dropout(self.embed_norm(x + positions[None] + self.modality))
        x = self.encoder(x, key_lengths=lengths)
        if lengths is None:
            valid = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        else:
            valid = pos[None, :] < lengths[:, None]
        return self.proj(x), valid
