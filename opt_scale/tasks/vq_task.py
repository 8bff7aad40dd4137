"""``opt-train --task vq``: train the VQ image tokenizer on the shards' images."""

from __future__ import annotations

import torch.nn as nn

from opt_scale.model.config import ModelConfig
from opt_scale.model.vq import build_vq


class VQTraining(nn.Module):
    def __init__(self, model_cfg: ModelConfig):
        super().__init__()
        self.tokenizer = build_vq(model_cfg)

    def forward(self, batch: dict) -> dict:
        return self.tokenizer(batch["pixels"])
