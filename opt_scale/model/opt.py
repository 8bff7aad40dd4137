"""OPT: three single-modal towers feeding one cross-modal encoder."""

from __future__ import annotations

import torch
import torch.nn as nn

from .config import ModelConfig
from .cross_encoder import CrossOutput
from .registry import part_class


class OPTModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.cross.hidden
        self.text = part_class("text", cfg.text.kind)(cfg.text, d)
        self.vision = part_class("vision", cfg.vision.kind)(cfg.vision, d)
        self.audio = part_class("audio", cfg.audio.kind)(cfg.audio, d)
        self.cross = part_class("cross", cfg.cross.kind)(cfg.cross)

    def encode_towers(self, text_ids, text_len, pixels, mel, mel_len, patch_mask=None, audio_mask=None,
                      audio_features=None):
        """Run all three towers. Every tower runs every step on every rank,
        whatever the batch holds (ZeRO-3 gathers parameters per module call)."""
        text, text_valid = self.text(text_ids, text_len)
        image, image_valid = self.vision(pixels, patch_mask)
        audio, audio_valid = self.audio(mel, mel_len, audio_mask, audio_features)
        return (text, text_valid), (image, image_valid), (audio, audio_valid)

    def fuse(self, towers, keep: torch.Tensor) -> CrossOutput:
        """Cross-modal encoding; ``keep`` [B, 3] drops whole modalities."""
        (text, tv), (image, iv), (audio, av) = towers
        full, packed, lengths = self.cross(text, tv & keep[:, 0:1], image, iv & keep[:, 1:2], audio, av & keep[:, 2:3])
        return self.cross.split(full, packed, lengths, text.shape[1], image.shape[1])
