"""Sample-level modality alignment: contrastive (InfoNCE) over pooled tower outputs.

Not one of the paper's tasks; added because (1) it aligns the three towers'
embeddings, which cross-modal retrieval ranks by (the paper scored every pair
with the cross-modal encoder, which does not scale past a few thousand
candidates), (2) its similarities pick the hard negatives of the matching
task (ALBEF's "align before fuse"). ``tasks.contrastive.weight=0`` turns
the loss off (the projections still embed, for retrieval and mining).

As open_clip: embeddings are gathered from every rank with gradients, so the
negatives are the whole global batch (``gather``); with ``local_loss`` each
rank scores only its own rows against all columns, which is the same loss
(the mean over ranks of the row-wise losses) with 1/world of the logits; the
temperature is learnable (a logit scale, clamped at ``max_logit_scale``).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from opt_scale.model.layers import Linear, masked_max, masked_mean

from .config import ContrastiveConfig
from .gather import gather_rows, row_offset, world_size

MODALITIES = ("text", "image", "audio")
PAIRS = (("text", "image"), ("text", "audio"), ("image", "audio"))


POOLS = {"max": masked_max, "mean": masked_mean}


class ContrastiveHead(nn.Module):
    def __init__(self, hidden: int, cfg: ContrastiveConfig):
        super().__init__()
        self.cfg = cfg
        self.proj = nn.ModuleDict({m: Linear(hidden, cfg.dim) for m in MODALITIES})
        # Shape [1], not a scalar: ZeRO-3 cannot partition 0-dim parameters.
        self.log_scale = nn.Parameter(torch.full((1,), math.log(1 / cfg.init_temperature)))

    def embed(self, modality: str, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Unit-norm sample embedding of one modality (also used for retrieval)."""
        return F.normalize(self.proj[modality](POOLS[self.cfg.pool](tokens, valid)).float(), dim=-1)

    def logit_scale(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=self.cfg.max_logit_scale)[0]

    def forward(self, towers: dict[str, tuple[torch.Tensor, torch.Tensor]], present: torch.Tensor,
                image_uid: torch.Tensor | None = None):
        """towers: modality -> (tokens [B, L, D], valid [B, L]) of this rank;
        present [B, 3] bool (modality really there); image_uid [B] (samples of
        one image are not each other's negatives: their logits are left out).

        Returns (loss, global embeddings {modality: [N, dim]}, global present
        [N, 3], this rank's first row in them, logit scale). The loss is the
        symmetric InfoNCE of each pair over the samples that have both,
        averaged over the pairs; under ``local_loss`` it is this rank's rows'
        share, whose mean over ranks is the global loss."""
        local = torch.cat([self.embed(m, *towers[m]) for m in MODALITIES], dim=1)
        uid = image_uid if image_uid is not None else torch.arange(len(local), device=local.device)
        if self.cfg.gather:
            everyone, rows = gather_rows(local)
            present_all, _ = gather_rows(present)
            uid_all, _ = gather_rows(uid, with_grad=False)
            start = row_offset(rows)
        else:
            everyone, present_all, uid_all, start = local, present, uid, 0
        dim = self.cfg.dim
        emb = {m: everyone[:, i * dim:(i + 1) * dim] for i, m in enumerate(MODALITIES)}
        scale = self.logit_scale()
        index = {m: i for i, m in enumerate(MODALITIES)}
        mine = torch.zeros(len(everyone), dtype=torch.bool, device=everyone.device)
        mine[start:start + len(local)] = True
        losses = []
        for a, b in PAIRS:
            both = present_all[:, index[a]] & present_all[:, index[b]]
            ea, eb = emb[a][both], emb[b][both]
            # Rows scored here: all of them, or (local_loss) this rank's.
            rows = mine[both] if self.cfg.local_loss else torch.ones(len(ea), dtype=torch.bool, device=ea.device)
            labels = torch.arange(len(ea), device=ea.device)[rows]
            u = uid_all[both]
            twin = (u[:, None] == u[None, :]) & ~torch.eye(len(u), dtype=torch.bool, device=u.device)
            twin = twin[rows]
            logits_ab = (scale * ea[rows] @ eb.t()).masked_fill(twin, float("-inf"))
            logits_ba = (scale * eb[rows] @ ea.t()).masked_fill(twin, float("-inf"))
            total = int(both.sum())
            if total < 2:  # no negatives: a zero that still reaches every parameter of the pair
                losses.append(scale * 0.0 + (emb[a].sum() + emb[b].sum()) * 0.0)
                continue
            loss = (F.cross_entropy(logits_ab, labels, reduction="sum")
                    + F.cross_entropy(logits_ba, labels, reduction="sum")) / 2
            # Over the global row count; a local share is scaled by the world
            # size, so that its mean over ranks is the global mean.
            ranks = world_size() if self.cfg.local_loss and self.cfg.gather else 1
            losses.append(loss * ranks / total)
        return torch.stack(losses).mean(), emb, present_all, start, scale.detach()
