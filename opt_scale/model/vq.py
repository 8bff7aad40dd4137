"""VQ image tokenizer: conv encoder, cosine codebook with EMA updates, conv decoder.

Trained by ``opt-train --task vq`` on the same shards, then frozen: during
pre-training it turns each image into a grid of discrete codes (the MVM and
DIR targets) and turns generated codes back into pixels.

The codebook is a buffer updated by exponential moving averages of the
encoder outputs assigned to each code (VQ-VAE-2 style), with statistics
summed over all ranks so every rank holds the same codebook; codes out of use
are re-seeded from current encoder outputs every step (chosen on rank 0 and
broadcast). Codes and encoder outputs are l2-normalised: the lookup is by
cosine similarity, which keeps far more of a large codebook in use.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from .config import VQConfig

DEAD_CODE_COUNT = 1e-2  # EMA usage (samples/step) below which a code is restarted


class ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        return x + self.conv2(F.gelu(self.conv1(F.gelu(x))))


class VQTokenizer(nn.Module):
    def __init__(self, cfg: VQConfig, patch_size: int):
        super().__init__()
        n_down = int(round(math.log2(patch_size)))
        if 2 ** n_down != patch_size:
            raise ValueError(f"model.vision.patch_size={patch_size}: the VQ grid must equal the patch grid, "
                             "so the patch size must be a power of two")
        self.cfg = cfg
        c = cfg.channels
        enc = [nn.Conv2d(3, c, 3, padding=1)]
        for _ in range(n_down):
            enc += [nn.GELU(), nn.Conv2d(c, c, 4, stride=2, padding=1)]
        enc += [ResBlock(c) for _ in range(cfg.res_blocks)] + [nn.GELU(), nn.Conv2d(c, cfg.code_dim, 1)]
        self.encoder = nn.Sequential(*enc)
        dec = [nn.Conv2d(cfg.code_dim, c, 3, padding=1)] + [ResBlock(c) for _ in range(cfg.res_blocks)]
        for _ in range(n_down):
            dec += [nn.GELU(), nn.ConvTranspose2d(c, c, 4, stride=2, padding=1)]
        dec += [nn.GELU(), nn.Conv2d(c, 3, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)
        codebook = F.normalize(torch.randn(cfg.codebook_size, cfg.code_dim), dim=1)
        self.register_buffer("codebook", codebook)
        self.register_buffer("ema_sum", codebook.clone())
        # Zero usage: every code counts as dead until it wins assignments, so
        # the first steps seed the codebook from encoder outputs (a data-driven
        # initialisation).
        self.register_buffer("ema_count", torch.zeros(cfg.codebook_size))

    # -- inference ------------------------------------------------------------

    @staticmethod
    def normalize_pixels(pixels: torch.Tensor) -> torch.Tensor:
        return pixels.float() / 127.5 - 1.0

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, H, W] -> unit vectors [B, h, w, code_dim]."""
        x = self.normalize_pixels(pixels).to(self.encoder[0].weight.dtype)
        return F.normalize(self.encoder(x).permute(0, 2, 3, 1).float(), dim=-1)

    def lookup(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest code (cosine) of each vector: [..., code_dim] -> [...]."""
        flat = z.reshape(-1, z.shape[-1])
        return (flat @ self.codebook.t()).argmax(dim=1).view(z.shape[:-1])

    @torch.no_grad()
    def codes(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 images -> codes [B, h * w] in raster (= ViT patch) order."""
        return self.lookup(self.encode(pixels)).flatten(1)

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, h * w] -> images as float [B, 3, H, W] in [0, 1]."""
        side = int(math.isqrt(codes.shape[1]))
        zq = self.codebook[codes].view(codes.shape[0], side, side, -1).permute(0, 3, 1, 2)
        x = self.decoder(zq.to(self.decoder[0].weight.dtype)).float()
        return ((x + 1) / 2).clamp(0, 1)

    # -- training -------------------------------------------------------------

    def forward(self, pixels: torch.Tensor) -> dict:
        target = self.normalize_pixels(pixels)
        z = self.encode(pixels)
        codes = self.lookup(z.detach())
        zq = self.codebook[codes]
        if self.training:
            self._ema_update(z.detach(), codes)
        commit = F.mse_loss(z, zq.detach())
        zq_st = z + (zq - z).detach()  # straight-through estimator
        recon = self.decoder(zq_st.permute(0, 3, 1, 2).to(self.decoder[0].weight.dtype)).float()
        recon_loss = F.mse_loss(recon, target)
        usage = torch.bincount(codes.flatten(), minlength=self.cfg.codebook_size).float()
        p = usage / usage.sum()
        perplexity = torch.exp(-(p * torch.log(p + 1e-10)).sum())
        return {"loss": recon_loss + self.cfg.commitment * commit, "loss/recon": recon_loss,
                "loss/commit": commit, "vq/perplexity": perplexity,
                "vq/dead_codes": (self.ema_count < DEAD_CODE_COUNT).float().sum()}

    @torch.no_grad()
    def _ema_update(self, z: torch.Tensor, codes: torch.Tensor) -> None:
        flat, idx = z.reshape(-1, z.shape[-1]), codes.flatten()
        counts = torch.bincount(idx, minlength=self.cfg.codebook_size).float()
        sums = torch.zeros_like(self.ema_sum).index_add_(0, idx, flat.to(self.ema_sum.dtype))
        if dist.is_initialized() and dist.get_world_size() > 1:
            stats = torch.cat([counts[:, None], sums], dim=1)
            dist.all_reduce(stats)
            counts, sums = stats[:, 0], stats[:, 1:]
        decay = self.cfg.ema_decay
        self.ema_count.mul_(decay).add_(counts, alpha=1 - decay)
        self.ema_sum.mul_(decay).add_(sums, alpha=1 - decay)
        self.codebook.copy_(F.normalize(self.ema_sum, dim=1))
        dead = (self.ema_count < DEAD_CODE_COUNT).nonzero().squeeze(1)
        if len(dead):
            # Re-seed unused codes at current encoder outputs, every step until
            # they win assignments (Jukebox-style): the encoder's outputs start
            # out nearly parallel, so codes seeded once at step 1 would stay
            # stacked together. The seed carries almost no EMA weight, so the
            # first real assignments decide where the code goes. Rank 0 picks,
            # so every rank's codebook stays identical.
            picks = flat[torch.randint(len(flat), (len(dead),), device=flat.device)].to(self.codebook.dtype)
            if dist.is_initialized() and dist.get_world_size() > 1:
                dist.broadcast(picks, src=0)
            self.codebook[dead] = picks
            self.ema_sum[dead] = picks * 1e-3
