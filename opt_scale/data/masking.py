"""Deterministic draws of masks, negatives and labels for the pretext tasks.

Everything random about a sample derives from ``(seed, epoch, sample key,
purpose)``, never from a worker's global RNG: a resumed run, a different
worker count or a different rank layout draws exactly the same masks for the
same sample in the same epoch.
"""

from __future__ import annotations

import hashlib

import numpy as np

from opt_scale.tasks.config import MatchingConfig, MLMConfig

IGNORE_INDEX = -100
TEXT, IMAGE, AUDIO = 0, 1, 2
MODALITIES = ("text", "image", "audio")


def sample_rng(seed: int, epoch: int, key: str, purpose: str) -> np.random.Generator:
    digest = hashlib.blake2b(f"{key}\x00{purpose}".encode(), digest_size=8).digest()
    return np.random.default_rng([seed, epoch, int.from_bytes(digest, "little")])


def mlm_mask(ids: np.ndarray, rng: np.random.Generator, cfg: MLMConfig, vocab_size: int,
             mask_id: int, special_ids: frozenset[int]) -> tuple[np.ndarray, np.ndarray]:
    """BERT masking: pick ``prob`` of the maskable tokens (at least one);
    replace 80% with [mask], 10% with a random token, keep 10%."""
    inputs = ids.copy()
    labels = np.full_like(ids, IGNORE_INDEX)
    maskable = np.flatnonzero(~np.isin(ids, list(special_ids)))
    if len(maskable) == 0:
        return inputs, labels
    chosen = maskable[rng.random(len(maskable)) < cfg.prob]
    if len(chosen) == 0:
        chosen = rng.choice(maskable, size=1)
    labels[chosen] = ids[chosen]
    action = rng.random(len(chosen))
    to_mask = chosen[action < cfg.replace_mask]
    to_random = chosen[(action >= cfg.replace_mask) & (action < cfg.replace_mask + cfg.replace_random)]
    inputs[to_mask] = mask_id
    if len(to_random):
        # Random replacements come from ordinary pieces only, never specials.
        candidates = np.setdiff1d(np.arange(vocab_size), np.array(sorted(special_ids)))
        inputs[to_random] = rng.choice(candidates, size=len(to_random))
    return inputs, labels


def token_mask(rng: np.random.Generator, valid: int, total: int, prob: float) -> np.ndarray:
    """Mask ``prob`` of the first ``valid`` of ``total`` positions, at least one."""
    mask = np.zeros(total, dtype=bool)
    if valid <= 0:
        return mask
    mask[:valid] = rng.random(valid) < prob
    if not mask.any():
        mask[rng.integers(valid)] = True
    return mask


def modality_keep(rng: np.random.Generator, prob: float) -> np.ndarray:
    """Mask each modality whole with ``prob``; never all three at once."""
    while True:
        keep = rng.random(3) >= prob
        if keep.any():
            return keep


def matching_class(rng: np.random.Generator, cfg: MatchingConfig) -> int:
    return int(rng.choice(5, p=np.asarray(cfg.class_probs, dtype=np.float64)))


MATCHED = 4
# With one modality left out, a 5-way label reduces to "the remaining pair
# agrees" (MATCHED) or the class naming the pair's mismatch.
PAIR_LABELS = {
    TEXT: {0: MATCHED, 4: MATCHED, 1: 3, 2: 3, 3: 3},   # image+audio: agree when swapped together
    IMAGE: {1: MATCHED, 4: MATCHED, 0: 2, 2: 2, 3: 2},  # text+audio: agree unless audio swapped
    AUDIO: {2: MATCHED, 4: MATCHED, 0: 1, 1: 1, 3: 1},  # text+image: agree unless image swapped
}


def matching_view(rng: np.random.Generator, cls: int, pair_prob: float) -> tuple[np.ndarray, int]:
    """Modalities shown in a sample's matching view, and its label then."""
    keep = np.ones(3, dtype=bool)
    if rng.random() < pair_prob:
        left_out = int(rng.integers(3))
        keep[left_out] = False
        cls = PAIR_LABELS[left_out][cls]
    return keep, cls


def matching_view_of_present(keep: np.ndarray, label: int, cls: int, present: np.ndarray) -> tuple[np.ndarray, int]:
    """The matching view of a sample that lacks a modality (an image-text or
    audio-text pair): that modality left out and the label reduced as
    :func:`matching_view` reduces it; a view left with one modality has
    nothing to match, and its label is IGNORE_INDEX."""
    missing = keep & ~present
    if not missing.any():
        return keep, label
    keep = keep & present
    if keep.sum() < 2:
        return keep, IGNORE_INDEX
    return keep, PAIR_LABELS[int(np.flatnonzero(missing)[0])][cls]


def decoder_view_keep(rng: np.random.Generator, target: int, prob: float) -> np.ndarray:
    """Modalities a decoder's memory shows: never ``target`` (the modality it
    rebuilds), so it cannot copy its answer. Of the other two, as the public
    OPT code: the first dropped whole with ``prob``, else the second dropped
    whole with ``prob``, else both shown (unmasked: see tasks/pretrainer.py)."""
    keep = np.ones(3, dtype=bool)
    keep[target] = False
    first, second = [m for m in (TEXT, IMAGE, AUDIO) if m != target]
    r = rng.random()
    if r < prob:
        keep[first] = False
    elif r < 2 * prob:
        keep[second] = False
    return keep


def matching_uniforms(rng: np.random.Generator) -> np.ndarray:
    """Two uniforms that pick a sample's matching partners (image, audio) among
    the hard-negative candidates of its batch (inverse CDF, in the model):
    the choice is a function of (seed, epoch, key) and of the similarities."""
    return rng.random(2)
