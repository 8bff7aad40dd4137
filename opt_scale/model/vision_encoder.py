"""Vision tower: ViT patch tokens from pixels (trainable), in place of the
paper's detector region features."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import VisionConfig
from .layers import Linear
from .tower import TokenTower

# ImageNet statistics: the usual normalisation for ViT inputs.
PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)


class ConvStem(nn.Module):
    """log2(patch) 3x3 stride-2 convolutions, each + GroupNorm + GELU, then a
    1x1 projection: one token per patch-sized cell. Channels double at each
    stride and reach ``hidden`` at the last one, so most of the work sits at
    the coarse end. The normalisation matters: on the demo's shapes a
    supervised probe of the tower reached 86% in 400 steps with it, 53%
    without (64 px)."""

    def __init__(self, patch_size: int, hidden: int):
        super().__init__()
        n = patch_size.bit_length() - 1
        widths = [max(16, hidden >> (n - 1 - i)) for i in range(n)]
        convs, norms, c_in = [], [], 3
        for width in widths:
            convs.append(nn.Conv2d(c_in, width, 3, stride=2, padding=1))
            norms.append(nn.GroupNorm(1, width))  # one group: LayerNorm over (C, H, W), batch-independent
            c_in = width
        self.convs = nn.ModuleList(convs)
        self.norms = nn.ModuleList(norms)
        self.out = Linear(c_in, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised pixels [B, 3, H, W] -> tokens [B, (H/p)(W/p), hidden] in raster order."""
        for conv, norm in zip(self.convs, self.norms):
            x = F.gelu(norm(conv(x)))
        return self.out(x.flatten(2).transpose(1, 2))


class VisionEncoder(TokenTower):
    def __init__(self, cfg: VisionConfig, out_hidden: int):
        super().__init__(cfg, cfg.num_patches, out_hidden, maskable=True, grid=cfg.image_size // cfg.patch_size)
        self.patch_size = cfg.patch_size
        if cfg.stem == "conv":
            self.stem = ConvStem(cfg.patch_size, cfg.hidden)
        else:
            self.patchify = Linear(3 * cfg.patch_size ** 2, cfg.hidden)
        self.register_buffer("mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False)

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels.float() / 255.0 - self.mean) / self.std

    def patches(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, H, W] -> normalised patches [B, N, 3 * p * p]."""
        x = self.normalise(pixels)
        p = self.patch_size
        B, C, H, W = x.shape
        x = x.view(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(B, (H // p) * (W // p), C * p * p)

    def hide_patches(self, x: torch.Tensor, patch_mask: torch.Tensor) -> torch.Tensor:
        """Normalised pixels with every masked patch set to 0 (the data mean).

        The conv stem's 3x3 kernels overlap patch borders, so a neighbour's
        token would otherwise see the edge pixels of a masked patch and MVM
        could read part of its answer there."""
        side = x.shape[-1] // self.patch_size
        hidden = patch_mask.view(-1, 1, side, side).repeat_interleave(self.patch_size, 2)
        hidden = hidden.repeat_interleave(self.patch_size, 3)
        return x.masked_fill(hidden, 0.0)

    def forward(self, pixels: torch.Tensor, patch_mask: torch.Tensor | None = None):
        """pixels [B, 3, H, W] uint8; patch_mask [B, N] bool (True = masked:
        pixels hidden, token replaced by a learned [mask] embedding) -> tokens, valid."""
        if hasattr(self, "stem"):
            x = self.normalise(pixels)
            if patch_mask is not None:
                x = self.hide_patches(x, patch_mask)
            x = self.stem(x.to(self.stem.out.weight.dtype))
        else:
            x = self.patchify(self.patches(pixels).to(self.patchify.weight.dtype))
        return self.encode(x, token_mask=patch_mask)
