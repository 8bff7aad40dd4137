"""Vision tower: ViT patch tokens from pixels (trainable), in place of the
paper's detector region features."""

from __future__ import annotations

import torch

from .config import VisionConfig
from .layers import Linear
from .tower import TokenTower

# ImageNet statistics: the usual normalisation for ViT inputs.
PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)


class VisionEncoder(TokenTower):
    def __init__(self, cfg: VisionConfig, out_hidden: int):
        super().__init__(cfg, cfg.num_patches, out_hidden, maskable=True)
        self.patch_size = cfg.patch_size
        self.patchify = Linear(3 * cfg.patch_size ** 2, cfg.hidden)
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
        return self.encode(x, token_mask=patch_mask)
