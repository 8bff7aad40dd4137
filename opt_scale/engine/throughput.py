"""Per-step work accounting: tokens per modality and analytic FLOPs per tower."""

from __future__ import annotations

import torch

from opt_scale.model.config import ModelConfig
from opt_scale.model.flops import SequenceLengths, part_forward_flops


def audio_token_lengths(mel_len: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    n = mel_len.clone()
    for _ in range(cfg.audio.conv_layers):
        n = torch.div(n - 1, 2, rounding_mode="floor") + 1
    return n


def modality_tokens(batch: dict, cfg: ModelConfig) -> dict[str, float]:
    return {"text": float(batch["text_len"].sum()),
            "image": float(batch["pixels"].shape[0] * cfg.vision.num_patches),
            "audio": float(audio_token_lengths(batch["mel_len"], cfg).sum())}


def batch_train_flops(batch: dict, cfg: ModelConfig) -> dict[str, float]:
    """Training FLOPs (3x forward) of this micro-batch per part, at each
    sample's actual text and audio length."""
    total: dict[str, float] = {}
    audio = audio_token_lengths(batch["mel_len"], cfg).tolist()
    for text_len, audio_len in zip(batch["text_len"].tolist(), audio):
        lengths = SequenceLengths(int(text_len), cfg.vision.num_patches, int(audio_len),
                                  3 if cfg.cross.summary_tokens else 0)
        for part, f in part_forward_flops(cfg, lengths).items():
            total[part] = total.get(part, 0.0) + 3.0 * f
    return total
