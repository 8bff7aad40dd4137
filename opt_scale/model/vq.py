"""VQ image tokenizer: conv encoder, quantizer, conv decoder.

Trained by ``opt-train --task vq`` on the same shards, then frozen: during
pre-training it turns each image into a grid of discrete codes (the MVM and
DIR targets) and turns generated codes back into pixels. The quantizer
(:mod:`.quantizers`) is FSQ by default, or a cosine codebook with EMA
updates (``model.vq.quantizer``).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import VQConfig
from .quantizers import FSQ, CosineCodebook


class ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(1, channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(1, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(F.gelu(self.norm2(self.conv1(F.gelu(self.norm1(x))))))


def level_widths(channels: int, levels: int) -> list[int]:
    """Conv widths from full resolution down to the code grid: ``channels``
    at the grid, halved per level up (at least 32): most of the capacity
    where each position describes a whole patch, little at full resolution."""
    return [max(32, channels >> (levels - i)) for i in range(levels + 1)]


class VQTokenizer(nn.Module):
    """Images at ``cfg.image_size`` -> a ``grid`` x ``grid`` map of codes.

    ``grid`` is the vision tower's patch grid (one code per patch: the MVM
    target of that patch); the VQ may see the image at a lower resolution
    than the tower (``model.vq.image_size``), which keeps its cost, and that
    of generated images, down while the tower sees fine detail."""

    def __init__(self, cfg: VQConfig, grid: int):
        super().__init__()
        factor = cfg.image_size // grid
        n_down = int(round(math.log2(factor))) if factor > 0 else -1
        if factor <= 0 or 2 ** n_down != factor or factor * grid != cfg.image_size:
            raise ValueError(f"model.vq.image_size={cfg.image_size} over a {grid} x {grid} patch grid: the VQ's "
                             "downsampling factor (image_size / grid) must be a power of two")
        self.cfg = cfg
        self.grid = grid
        if cfg.quantizer == "fsq":
            self.quantizer = FSQ(cfg.fsq_levels)
        else:
            self.quantizer = CosineCodebook(cfg.codebook_size, cfg.code_dim, cfg.ema_decay)
        dim = self.quantizer.dim
        widths = level_widths(cfg.channels, n_down)
        enc = [nn.Conv2d(3, widths[0], 3, padding=1)]
        for i in range(n_down):
            enc += [nn.GELU(), nn.Conv2d(widths[i], widths[i + 1], 4, stride=2, padding=1)]
        enc += [ResBlock(widths[-1]) for _ in range(cfg.res_blocks)]
        enc += [nn.GroupNorm(1, widths[-1]), nn.GELU(), nn.Conv2d(widths[-1], dim, 1)]
        self.encoder = nn.Sequential(*enc)
        dec = [nn.Conv2d(dim, widths[-1], 3, padding=1)] + [ResBlock(widths[-1]) for _ in range(cfg.res_blocks)]
        for i in reversed(range(n_down)):
            dec += [nn.GELU(), nn.ConvTranspose2d(widths[i + 1], widths[i], 4, stride=2, padding=1)]
        dec += [nn.GELU(), nn.Conv2d(widths[0], 3, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    # -- inference ------------------------------------------------------------

    def normalize_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, H, W] at any size -> [-1, 1] at the VQ's resolution."""
        x = pixels.float() / 127.5 - 1.0
        if x.shape[-1] != self.cfg.image_size or x.shape[-2] != self.cfg.image_size:
            x = F.interpolate(x, size=(self.cfg.image_size, self.cfg.image_size), mode="bilinear", antialias=True,
                              align_corners=False)
        return x

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, H, W] -> encoder outputs [B, grid, grid, dim] (before quantization)."""
        x = self.normalize_pixels(pixels).to(self.encoder[0].weight.dtype)
        return self.encoder(x).permute(0, 2, 3, 1).float()

    @torch.no_grad()
    def codes(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 images -> codes [B, grid * grid] in raster (= ViT patch) order."""
        return self.quantizer.lookup(self.encode(pixels)).flatten(1)

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, grid * grid] -> images as float [B, 3, image_size, image_size] in [0, 1]."""
        zq = self.quantizer.vectors(codes).view(codes.shape[0], self.grid, self.grid, -1).permute(0, 3, 1, 2)
        return ((self._decode(zq) + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def reconstruct(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 images -> their reconstruction through the codes, float [0, 1] at the VQ's resolution."""
        return self.decode_codes(self.codes(pixels))

    def _decode(self, zq: torch.Tensor) -> torch.Tensor:
        return self.decoder(zq.to(self.decoder[0].weight.dtype)).float()

    # -- training -------------------------------------------------------------

    def forward(self, pixels: torch.Tensor) -> dict:
        target = self.normalize_pixels(pixels)
        zq, codes, commit = self.quantizer.quantize(self.encode(pixels))
        recon = self._decode(zq.permute(0, 3, 1, 2))
        recon_loss = F.mse_loss(recon, target)
        usage = torch.bincount(codes.flatten(), minlength=self.quantizer.codebook_size).float()
        p = usage / usage.sum()
        out = {"loss": recon_loss + self.cfg.commitment * commit, "loss/recon": recon_loss,
               "vq/perplexity": torch.exp(-(p * torch.log(p + 1e-10)).sum()),
               "vq/psnr_db": psnr(recon.detach(), target), "vq/codes_in_batch": (usage > 0).float().sum()}
        if isinstance(self.quantizer, CosineCodebook):
            out["loss/commit"] = commit
            out["vq/dead_codes"] = self.quantizer.dead_codes()
        return out


def build_vq(model_cfg) -> VQTokenizer:
    """The VQ tokenizer a model config asks for (its resolution resolved, its grid the patch grid)."""
    from dataclasses import replace
    return VQTokenizer(replace(model_cfg.vq, image_size=model_cfg.vq_image_size, checkpoint=""), model_cfg.patch_grid)


def psnr(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio (dB) of images in [-1, 1] (peak-to-peak 2)."""
    mse = F.mse_loss(recon.float().clamp(-1, 1), target.float())
    return 10 * torch.log10(4.0 / mse.clamp(min=1e-10))
