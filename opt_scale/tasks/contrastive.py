"""Sample-level modality alignment: contrastive (InfoNCE) over pooled tower outputs.

Not one of the paper's tasks; added because (1) it aligns the three towers'
embeddings, which cross-modal retrieval needs for its fast pre-ranking (the
matching head then re-ranks the top candidates, as in OPT's protocol), and
(2) aligned towers let the 5-way matching head learn far sooner (as in
ALBEF's "align before fuse"). ``tasks.contrastive.weight=0`` turns it off.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from opt_scale.model.layers import Linear

PAIRS = (("text", "image"), ("text", "audio"), ("image", "audio"))


def masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    w = valid.to(x.dtype)[..., None]
    return (x * w).sum(1) / w.sum(1).clamp(min=1.0)


class ContrastiveHead(nn.Module):
    def __init__(self, hidden: int, dim: int, init_temperature: float = 0.07):
        super().__init__()
        self.proj = nn.ModuleDict({m: Linear(hidden, dim) for m in ("text", "image", "audio")})
        # Shape [1], not a scalar: ZeRO-3 cannot partition 0-dim parameters.
        self.log_scale = nn.Parameter(torch.full((1,), math.log(1 / init_temperature)))

    def embed(self, modality: str, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Unit-norm sample embedding of one modality (also used for retrieval)."""
        return F.normalize(self.proj[modality](masked_mean(tokens, valid)).float(), dim=-1)

    def forward(self, towers: dict[str, tuple[torch.Tensor, torch.Tensor]], present: torch.Tensor):
        """towers: modality -> (tokens [B, L, D], valid [B, L]); present [B, 3]
        bool (modality really there). Symmetric InfoNCE for each pair, over the
        samples that have both modalities."""
        emb = {m: self.embed(m, *towers[m]) for m in ("text", "image", "audio")}
        index = {"text": 0, "image": 1, "audio": 2}
        scale = self.log_scale.exp().clamp(max=100.0)[0]
        losses = []
        for a, b in PAIRS:
            both = present[:, index[a]] & present[:, index[b]]
            ea, eb = emb[a][both], emb[b][both]
            if len(ea) < 2:
                losses.append(scale * 0.0 + (emb[a].sum() + emb[b].sum()) * 0.0)
                continue
            logits = scale * ea @ eb.t()
            labels = torch.arange(len(ea), device=ea.device)
            losses.append((F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2)
        return torch.stack(losses).mean()
