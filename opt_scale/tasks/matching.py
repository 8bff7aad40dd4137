"""5-way matching: negatives mined from the contrastive similarities, and the
accuracy a content-blind head would reach.

Each sample's class (``tasks.config.MATCHING_CLASSES``) says which of its
image and audio are replaced by another sample's. Which other sample is
decided here, in the model, over the whole global batch (every rank's
samples): with ``hard_negatives`` in proportion to softmax(logit_scale x
similarity) of the shown modalities' embeddings to the candidate (ALBEF,
BLIP), among the candidates less similar than the true partner
(semi-hard, see :func:`candidate_weights`), otherwise uniformly. Candidates never share the sample's image (two
narratives of one image describe the same content). The draw uses two
uniforms per sample that the loader drew from (seed, epoch, key), so a
resumed run picks the same negatives from the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from opt_scale.data.masking import AUDIO, IMAGE, PAIR_LABELS, TEXT

from .config import MatchingConfig

IMAGE_SWAPPED_WITH_AUDIO, IMAGE_SWAPPED, AUDIO_SWAPPED, SWAPPED_APART = 0, 1, 2, 3


def content_blind_accuracy(cfg: MatchingConfig) -> float:
    """Accuracy of the best head that sees which modalities a sample shows but
    not what they show: per visibility pattern, the most frequent label.

    With a modality left out (``pair_prob``), the 5-way label collapses to
    two values whose frequencies are not 1/5 each, so this is above 0.2
    (0.32 for uniform classes and pair_prob 0.3)."""
    probs = np.asarray(cfg.class_probs, dtype=np.float64)
    accuracy = (1 - cfg.pair_prob) * probs.max()
    for left_out in (TEXT, IMAGE, AUDIO):
        reduced: dict[int, float] = {}
        for cls, p in enumerate(probs):
            label = PAIR_LABELS[left_out][cls]
            reduced[label] = reduced.get(label, 0.0) + p
        accuracy += cfg.pair_prob / 3 * max(reduced.values())
    return float(accuracy)


@dataclass
class Partners:
    image: torch.Tensor   # [B] global row whose image each sample's matching view shows
    audio: torch.Tensor   # [B] global row whose audio it shows


def inverse_cdf(weights: torch.Tensor, u: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """Row-wise draw from unnormalised ``weights`` [B, N] (>= 0) with uniforms
    ``u`` [B]; ``fallback`` [B] where a row has no candidate at all."""
    cdf = weights.cumsum(1)
    total = cdf[:, -1:]
    picks = torch.searchsorted(cdf / total.clamp(min=1e-30), u[:, None].to(cdf.dtype).clamp(max=1 - 1e-12))[:, 0]
    return torch.where(total[:, 0] > 0, picks.clamp(max=weights.shape[1] - 1), fallback)


def candidate_weights(scores: torch.Tensor, valid: torch.Tensor, positive: torch.Tensor, scale: torch.Tensor,
                      hard: bool) -> torch.Tensor:
    """softmax(scale x scores) over the valid candidates that score below the
    sample's own (``positive`` [B]); uniform over all valid ones when not
    ``hard`` or when none scores below.

    Semi-hard (FaceNet): a candidate more similar than the true partner is a
    sign of embeddings not yet trained (or of a near-duplicate), not a
    useful negative. Taken anyway, it teaches the head that high similarity
    means "swapped", and on a harder scene set the head's AUC against random
    negatives fell to 0.06."""
    uniform = valid.float()
    if not hard:
        return uniform
    below = valid & (scores < positive[:, None])
    logits = (scale * scores).masked_fill(~below, float("-inf"))
    weights = torch.softmax(logits.float(), dim=1).nan_to_num(0.0)
    return torch.where(below.any(1, keepdim=True), weights, uniform)


def mine_partners(emb: dict[str, torch.Tensor], present: torch.Tensor, uids: torch.Tensor, start: int,
                  classes: torch.Tensor, keep: torch.Tensor, u: torch.Tensor, scale: torch.Tensor,
                  hard: bool) -> Partners:
    """Partners of this rank's samples (global rows ``start`` .. ``start + B``).

    emb: modality -> global unit embeddings [N, dim] (detached); present [N, 3];
    uids [N] image hashes; classes [B] the 5-way class before any modality
    is left out; keep [B, 3] modalities the matching view shows; u [B, 2]."""
    B, N = len(classes), len(uids)
    dev = uids.device
    own = torch.arange(start, start + B, device=dev)
    others = uids[own][:, None] != uids[None, :]
    # Only fall back to same-image candidates if nothing else exists (a tiny global batch).
    others = torch.where(others.any(1, keepdim=True), others, torch.arange(N, device=dev)[None] != own[:, None])
    t, i, a = emb["text"], emb["image"], emb["audio"]
    show = keep.to(t.dtype)

    def score(target: torch.Tensor, against: dict[int, torch.Tensor]) -> torch.Tensor:
        """Similarity of each candidate's ``target`` embedding to this sample's shown modalities."""
        total = torch.zeros(B, N, device=dev, dtype=t.dtype)
        for m, e in against.items():
            total = total + show[:, m:m + 1] * (e[own] @ target.t())
        return total

    image_ok = others & present[None, :, IMAGE]
    audio_ok = others & present[None, :, AUDIO]
    image_scores = score(i, {TEXT: t, AUDIO: a})
    audio_scores = score(a, {TEXT: t, IMAGE: i})
    pair_scores = score(i, {TEXT: t}) + score(a, {TEXT: t})
    rows = torch.arange(B, device=dev)
    positive = lambda scores: scores[rows, own]  # noqa: E731  (its own image / audio / pair)
    image_pick = inverse_cdf(candidate_weights(image_scores, image_ok, positive(image_scores), scale, hard),
                             u[:, 0], own)
    audio_weights = candidate_weights(audio_scores, audio_ok, positive(audio_scores), scale, hard)
    audio_pick = inverse_cdf(audio_weights, u[:, 1], own)
    # Swapped apart: the audio's sample must differ from the image's.
    apart = audio_weights.scatter(1, image_pick[:, None], 0.0)
    apart_pick = inverse_cdf(torch.where(apart.sum(1, keepdim=True) > 0, apart, audio_weights), u[:, 1], own)
    together = inverse_cdf(candidate_weights(pair_scores, image_ok & audio_ok, positive(pair_scores), scale, hard),
                           u[:, 0], own)

    image_row, audio_row = own.clone(), own.clone()  # matched: its own image and audio
    c = classes.to(dev)
    image_row = torch.where(c == IMAGE_SWAPPED, image_pick, image_row)
    image_row = torch.where(c == SWAPPED_APART, image_pick, image_row)
    image_row = torch.where(c == IMAGE_SWAPPED_WITH_AUDIO, together, image_row)
    audio_row = torch.where(c == AUDIO_SWAPPED, audio_pick, audio_row)
    audio_row = torch.where(c == SWAPPED_APART, apart_pick, audio_row)
    audio_row = torch.where(c == IMAGE_SWAPPED_WITH_AUDIO, together, audio_row)
    return Partners(image=image_row, audio=audio_row)
