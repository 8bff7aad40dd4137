"""Masked audio modelling head: InfoNCE over masked audio tokens (+ optional L2)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from opt_scale.model.layers import Linear


class MAMHead(nn.Module):
    """For each masked audio token, the cross-modal output (projected) must
    pick out the true token feature (the conv subsampler's output before
    masking, gradient stopped) among the other masked tokens of the batch."""

    def __init__(self, hidden: int, feature_dim: int, temperature: float, l2_weight: float):
        super().__init__()
        self.temperature = temperature
        self.l2_weight = l2_weight
        self.project = Linear(hidden, feature_dim)

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor):
        """hidden [B, T, D], targets [B, T, F] (detached), mask [B, T] bool -> (loss, accuracy, count)."""
        pred = self.project(hidden[mask]).float()            # [M, F]
        true = targets[mask].float()                         # [M, F]
        count = mask.sum()
        if pred.shape[0] == 0:  # keep the graph (and ZeRO-3's hooks) identical on every rank
            zero = pred.sum() * 0.0
            return zero, zero.detach(), count
        logits = F.normalize(pred, dim=-1) @ F.normalize(true, dim=-1).t() / self.temperature
        labels = torch.arange(len(logits), device=logits.device)
        loss = F.cross_entropy(logits, labels)
        if self.l2_weight > 0:
            loss = loss + self.l2_weight * F.mse_loss(pred, true)
        accuracy = (logits.argmax(-1) == labels).float().mean()
        return loss, accuracy.detach(), count
