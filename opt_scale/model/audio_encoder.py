"""Audio tower: 80-bin log-mel frames (10 ms) -> strided conv subsampling
(x4: 40 ms tokens) -> transformer, in place of the paper's wav2vec 2.0."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import AudioConfig
from .layers import Linear
from .tower import TokenTower


class ConvSubsampler(nn.Module):
    """``conv_layers`` Conv2d(k=3, s=2, p=1) + GELU over (time, mel)."""

    def __init__(self, cfg: AudioConfig):
        super().__init__()
        convs, freq = [], cfg.n_mels
        in_ch = 1
        for _ in range(cfg.conv_layers):
            convs.append(nn.Conv2d(in_ch, cfg.conv_channels, kernel_size=3, stride=2, padding=1))
            in_ch = cfg.conv_channels
            freq = (freq - 1) // 2 + 1
        self.convs = nn.ModuleList(convs)
        self.out = Linear(cfg.conv_channels * freq, cfg.hidden)

    def forward(self, mel: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
        """Each layer's input is zeroed past its valid length, so outputs
        near the end equal those of an unpadded input (conv zero padding)."""
        x = mel.unsqueeze(1)  # [B, 1, T, F]
        lengths = frame_lengths
        for conv in self.convs:
            inside = torch.arange(x.shape[2], device=x.device)[None, :] < lengths[:, None]
            x = F.gelu(conv(x * inside[:, None, :, None].to(x.dtype)))
            lengths = torch.div(lengths - 1, 2, rounding_mode="floor") + 1
        B, C, T, Fq = x.shape
        return self.out(x.permute(0, 2, 1, 3).reshape(B, T, C * Fq))


class AudioEncoder(TokenTower):
    def __init__(self, cfg: AudioConfig, out_hidden: int):
        super().__init__(cfg, cfg.tokens_for_frames(cfg.max_frames), out_hidden, maskable=True)
        self.cfg = cfg
        self.subsample = ConvSubsampler(cfg)

    def token_lengths(self, frame_lengths: torch.Tensor) -> torch.Tensor:
        n = frame_lengths
        for _ in range(self.cfg.conv_layers):
            n = torch.div(n - 1, 2, rounding_mode="floor") + 1
        return n

    def hidden_frames(self, token_mask: torch.Tensor, frames: int) -> torch.Tensor:
        """[B, T'] masked tokens -> [B, frames] bool: every input frame that
        reaches a masked token through the convolutions.

        With ``conv_layers`` 3x3 stride-2 layers (padding 1), token t reads
        frames s*t - (s - 1) ... s*t + (s - 1), s = 2 ** conv_layers: neighbours
        overlap, so masking the token alone would leave most of its input in
        its unmasked neighbours' view (MAM could copy its answer from them)."""
        s = 2 ** self.cfg.conv_layers
        centres = torch.zeros(token_mask.shape[0], 1, frames, device=token_mask.device)
        t = torch.arange(token_mask.shape[1], device=token_mask.device) * s
        inside = t < frames
        centres[:, 0, t[inside]] = token_mask[:, inside].to(centres.dtype)
        return F.max_pool1d(centres, kernel_size=2 * s - 1, stride=1, padding=s - 1)[:, 0] > 0

    def hide_frames(self, mel: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """The log-mel with the receptive field of every masked token set to 0 (the feature mean)."""
        return mel.masked_fill(self.hidden_frames(token_mask, mel.shape[1])[..., None], 0.0)

    def embed(self, mel: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
        """Subsampled frame features before masking: also the MAM targets."""
        return self.subsample(mel.to(self.subsample.out.weight.dtype), frame_lengths)

    def forward(self, mel: torch.Tensor, frame_lengths: torch.Tensor, token_mask: torch.Tensor | None = None,
                features: torch.Tensor | None = None):
        """mel [B, T, 80]; token_mask [B, T'] bool (True = input frames hidden,
        token replaced by [mask]) -> tokens [B, T', out], valid [B, T'].
        ``features``: :meth:`embed` of the (already hidden) mel, when the caller has it."""
        if features is None:
            features = self.embed(mel if token_mask is None else self.hide_frames(mel, token_mask), frame_lengths)
        x = features
        return self.encode(x, self.token_lengths(frame_lengths), token_mask)
