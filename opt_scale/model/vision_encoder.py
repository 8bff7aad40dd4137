"""Vision tower: ViT patch tokens from pixels (trainable), in place of the
paper's detector region features."""

from __future__ import annotations

import torch
import torch.nn as nn

from .config import VisionConfig
from .layers import INIT_STD, Embedding, EncoderStack, Linear
from .norm import LayerNorm

# ImageNet statistics: the usual normalisation for ViT inputs.
PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)


class VisionEncoder(nn.Module):
    def __init__(self, cfg: VisionConfig, out_hidden: int):
        super().__init__()
        self.patch_size = cfg.patch_size
        self.patchify = Linear(3 * cfg.patch_size ** 2, cfg.hidden)
        self.positions = Embedding(cfg.num_patches, cfg.hidden)
        self.modality = nn.Parameter(torch.randn(cfg.hidden) * INIT_STD)
        self.mask_token = nn.Parameter(torch.randn(cfg.hidden) * INIT_STD)
        self.embed_norm = LayerNorm(cfg.hidden)
        self.dropout = nn.Dropout(cfg.dropout)
        self.encoder = EncoderStack(cfg.layers, cfg.hidden, cfg.heads, cfg.ffn, cfg.dropout)
        self.proj = Linear(cfg.hidden, out_hidden) if cfg.hidden != out_hidden else nn.Identity()
        self.register_buffer("mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False)

    def patches(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, H, W] -> normalised patches [B, N, 3 * p * p]."""
        x = (pixels.float() / 255.0 - self.mean) / self.std
        p = self.patch_size
        B, C, H, W = x.shape
        x = x.view(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(B, (H // p) * (W // p), C * p * p)

    def forward(self, pixels: torch.Tensor, patch_mask: torch.Tensor | None = None):
        """pixels [B, 3, H, W] uint8; patch_mask [B, N] bool (True = masked,
        replaced by a learned [mask] embedding) -> tokens, valid."""
        x = self.patchify(self.patches(pixels).to(self.patchify.weight.dtype))
        if patch_mask is not None:
            x = torch.where(patch_mask[..., None], self.mask_token.to(x.dtype), x)
        N = x.shape[1]
        x = x + self.positions(torch.arange(N, device=x.device))[None] + self.modality
        x = self.dropout(self.embed_norm(x))
        x = self.encoder(x)
        valid = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        return self.proj(x), valid
