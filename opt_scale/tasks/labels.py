"""The label head of the downstream ``vqa`` and ``classify`` tasks.

VQA (as the public OPT code, after UNITER): the cross-modal [CLS] of the
question and the image through a two-layer MLP (hidden x2, GELU, LayerNorm)
to one logit per answer of the vocabulary, trained with binary cross-entropy
against the answers' soft scores (summed over the answers, as UNITER does,
so a question's loss does not shrink with the vocabulary's size).

Classification (the paper's frozen model + linear layer): a linear layer on
the cross-modal [CLS] or on the towers' pooled outputs, softmax
cross-entropy (one class per sample) or BCE (several).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from opt_scale.model.layers import Linear
from opt_scale.model.norm import LayerNorm

from .config import LabelConfig


class LabelHead(nn.Module):
    def __init__(self, in_features: int, cfg: LabelConfig):
        super().__init__()
        self.cfg = cfg
        labels = len(cfg.names)
        if cfg.head == "mlp":
            self.net = nn.Sequential(Linear(in_features, 2 * in_features), nn.GELU(), LayerNorm(2 * in_features),
                                     Linear(2 * in_features, labels))
        else:
            self.net = Linear(in_features, labels)

    def forward(self, features: torch.Tensor, targets: torch.Tensor | None = None,
                scored: torch.Tensor | None = None):
        """features [B, F]; targets [B, labels] soft scores; scored [B] bool
        (rows that have labels). Returns logits, or (loss, top-1 hit rate, logits)."""
        logits = self.net(features).float()
        if targets is None:
            return logits
        if scored is None:
            scored = torch.ones(len(logits), dtype=torch.bool, device=logits.device)
        if not bool(scored.any()):  # a zero that reaches every weight, so each rank reduces the same gradients
            zero = logits.sum() * 0.0
            return zero, zero.detach(), logits
        x, y = logits[scored], targets[scored].float()
        if self.cfg.loss == "bce":
            loss = F.binary_cross_entropy_with_logits(x, y, reduction="sum") / len(x)
        else:
            loss = F.cross_entropy(x, y / y.sum(1, keepdim=True).clamp(min=1e-6))
        # The soft score of the top answer: VQA's training accuracy, top-1 accuracy for one class per sample.
        hit = y.gather(1, x.argmax(1, keepdim=True)).squeeze(1).clamp(max=1).mean()
        return loss, hit.detach(), logits
