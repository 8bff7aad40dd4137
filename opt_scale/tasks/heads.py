"""Loss heads. Each computes its loss inside its own ``forward``: under
ZeRO-3 a module's parameters are gathered only around its forward, so a loss
that reads a projection weight must live in the module that owns that
weight, or that registers it as an external parameter (MaskedTokenHead)."""

from __future__ import annotations

import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

from opt_scale.kernels import masked_linear_cross_entropy
from opt_scale.model.layers import Linear
from opt_scale.model.norm import LayerNorm


class MaskedTokenHead(nn.Module):
    """Transform + projection to a vocabulary, evaluated at masked positions
    only.

    A ``tied_weight`` (the text embedding, for MLM) is not registered as a
    parameter of this module: the tensor keeps the one name of its owner in
    every state dict, so the tools that refuse two names on one storage work
    on our checkpoints (DeepSpeed's ``zero_to_fp32.py --safe_serialization``,
    safetensors). ZeRO-3 still gathers it for this module's forward: it is
    registered as an external parameter (DeepSpeed's mechanism for a weight
    used outside its owner's forward)."""

    def __init__(self, hidden: int, vocab: int, tied_weight: nn.Parameter | None = None,
                 label_smoothing: float = 0.0):
        super().__init__()
        self.transform = Linear(hidden, hidden)
        self.norm = LayerNorm(hidden)
        if tied_weight is not None:
            self._tied = [tied_weight]  # a list hides it from nn.Module's registration
            if "deepspeed" in sys.modules:  # imported by every DeepSpeed launch before the model is built
                from deepspeed.runtime.zero.partition_parameters import register_external_parameter
                register_external_parameter(self, tied_weight)
        else:
            self.weight = nn.Parameter(torch.randn(vocab, hidden) * 0.02)
        self.bias = nn.Parameter(torch.zeros(vocab))
        self.label_smoothing = label_smoothing

    def projection(self) -> torch.Tensor:
        """[vocab, hidden]: the tied tensor, or this head's own weight."""
        return self._tied[0] if hasattr(self, "_tied") else self.weight

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints and exports from before the tie left the module tree
        # carry the tied tensor under this head's name too: the same values
        # as its owner's, loaded there.
        if hasattr(self, "_tied"):
            state_dict.pop(prefix + "weight", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, hidden: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100):
        """hidden [B, L, D], labels [B, L] (ignore_index where unmasked)."""
        positions = (labels.reshape(-1) != ignore_index).nonzero().squeeze(1)
        flat = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)
        h = self.norm(F.gelu(self.transform(flat)))
        loss, count = masked_linear_cross_entropy(
            h, self.projection(), self.bias, torch.arange(len(positions), device=h.device),
            labels.reshape(-1).index_select(0, positions), label_smoothing=self.label_smoothing,
            ignore_index=ignore_index)
        return loss, count


def pair_cosines(text: torch.Tensor, image: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
    """[B, 3] cosines of unit embeddings [B, dim]: (text, image), (text, audio),
    (image, audio), the order :class:`MatchingHead` reads them in."""
    return torch.stack([(text * image).sum(1), (text * audio).sum(1), (image * audio).sum(1)], dim=1)


class MatchingHead(nn.Module):
    """5-way matching from the [CLS] token (classes in tasks.config).

    With ``similarity_features`` the head also reads, for each pair of the
    shown modalities, the cosine of their contrastive embeddings (and which
    pairs are shown), through a small MLP added to the pooled [CLS]: the 5
    classes are exactly "which pairs agree", which those three numbers say
    directly, and the [CLS] adds what the fused encoding sees beyond them.
    From [CLS] alone (the paper's head) matching stayed at chance for the
    first 300 steps on the demo data."""

    def __init__(self, hidden: int, classes: int = 5, similarity_features: bool = True):
        super().__init__()
        self.pool = Linear(hidden, hidden)
        self.classify = Linear(hidden, classes)
        # torch's default init, not the 0.02 normal of the transformer layers:
        # two small layers in a row would start this path near zero, and slow.
        self.similarity = nn.Sequential(nn.Linear(6, hidden), nn.GELU(), nn.Linear(hidden, hidden)) \
            if similarity_features else None

    def forward(self, cls: torch.Tensor, labels: torch.Tensor | None = None, similarities: torch.Tensor | None = None,
                shown_pairs: torch.Tensor | None = None):
        """cls [B, D]; similarities [B, 3] cosines of (text, image), (text, audio),
        (image, audio); shown_pairs [B, 3] bool, both modalities of the pair shown."""
        h = self.pool(cls)
        if self.similarity is not None:
            shown = shown_pairs.to(h.dtype)
            # x4: cosines move in a narrow band; the MLP sees them at the scale of its other inputs.
            h = h + self.similarity(torch.cat([4 * similarities.to(h.dtype) * shown, shown], dim=1))
        logits = self.classify(torch.tanh(h)).float()
        if labels is None:
            return logits
        # IGNORE_INDEX: a pair-only sample whose view shows one modality (nothing to match).
        scored = labels != -100
        if not bool(scored.any()):  # still a loss, so the head's weights get their (zero) gradient on every rank
            zero = logits.sum() * 0.0
            return zero, zero.detach(), logits
        loss = F.cross_entropy(logits, labels, ignore_index=-100)
        accuracy = (logits.argmax(-1) == labels)[scored].float().mean()
        return loss, accuracy, logits
