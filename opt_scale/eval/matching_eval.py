"""How well the 5-way matching head tells matched triplets from mismatched ones.

On held-out samples, each sample is shown once per class (``MATCHING_CLASSES``:
image and audio swapped together, image swapped, audio swapped, both
swapped apart, matched), with the swapped-in image/audio taken from another
image's sample, in two ways:

* ``random``: a uniformly drawn other sample (seeded);
* ``hard``: the most similar other sample by the contrastive embeddings of
  the modalities it must pass for (the nearest neighbour: the negatives
  retrieval re-ranking has to reject).

Reported: 5-way accuracy per way with the content-blind baseline (a head
that sees which modalities are shown but not what they show; 0.2 here, every
class equally often and all three modalities shown), and per pair of
modalities the AUC of log P("matched") between true pairs and wrong pairs
(random, and nearest-neighbour), content-blind 0.5.
"""

from __future__ import annotations

import numpy as np
import torch

from opt_scale.tasks.config import MATCHING_CLASSES
from opt_scale.tasks.contrastive import PAIRS

from .retrieval import MODALITIES, EncodedSet, triplet_logits, triplet_matched


def auc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counting half."""
    pos, neg = np.asarray(positives)[:, None], np.asarray(negatives)[None, :]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


def other_images(data: EncodedSet) -> torch.Tensor:
    """[N, N] bool: sample j shows another image than sample i (a valid negative)."""
    ids = np.array(data.image_ids)
    return torch.from_numpy(ids[:, None] != ids[None, :])


def negatives(data: EncodedSet, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """way -> what is swapped in -> [N]: for each sample, the sample whose image
    ("image"), audio ("audio"), image and audio together ("pair"), or audio
    apart from the swapped image ("apart_audio") it is shown with; never a
    sample of its own image."""
    n = len(data)
    other = other_images(data)
    e = data.embeddings
    sim = {(a, b): e[a] @ e[b].t() for a in MODALITIES for b in MODALITIES}
    scores = {"image": sim["text", "image"] + sim["audio", "image"],   # an image passing for the text + audio
              "audio": sim["text", "audio"] + sim["image", "audio"],
              "pair": sim["text", "image"] + sim["text", "audio"]}    # an image + audio passing for the text
    hard = {k: v.masked_fill(~other, float("-inf")).argmax(1).numpy() for k, v in scores.items()}
    rng = np.random.default_rng(seed)
    random = {}
    for k in scores:
        random[k] = np.array([rng.choice(np.flatnonzero(other[i].numpy()) if other[i].any() else
                                         np.delete(np.arange(n), i)) for i in range(n)])
    for way in (hard, random):  # swapped apart: the audio from a sample other than the image's
        apart = way["audio"].copy()
        clash = apart == way["image"]
        apart[clash] = hard["audio"][clash] if way is random else np.array(
            [_second_best(scores["audio"][i], other[i], way["image"][i]) for i in np.flatnonzero(clash)], dtype=int)
        way["apart_audio"] = apart
    return {"hard": hard, "random": random}


def _second_best(row: torch.Tensor, allowed: torch.Tensor, excluded: int) -> int:
    masked = row.masked_fill(~allowed, float("-inf")).clone()
    masked[excluded] = float("-inf")
    return int(masked.argmax())


def class_triples(i: int, cls: int, way: dict[str, np.ndarray]) -> tuple[int, int, int]:
    """(text, image, audio) sample indices of sample ``i`` shown as class ``cls``."""
    image, audio, pair, apart = (int(way[k][i]) for k in ("image", "audio", "pair", "apart_audio"))
    return ((i, pair, pair), (i, image, i), (i, i, audio), (i, image, apart), (i, i, i))[cls]


@torch.no_grad()
def evaluate_matching(net, data: EncodedSet, device, seed: int = 0, rank: int = 0, world_size: int = 1) -> dict:
    """With ``world_size`` > 1, a collective: every rank passes the whole
    ``data`` and scores its share of the triplets; all get the result."""
    n = len(data)
    ways = negatives(data, seed)
    result: dict = {"samples": n, "content_blind_accuracy": 1.0 / len(MATCHING_CLASSES), "accuracy": {},
                    "per_class_accuracy": {}, "pair_auc": {}}
    labels = np.tile(np.arange(len(MATCHING_CLASSES)), n)
    for name, way in ways.items():
        triples = [class_triples(i, c, way) for i in range(n) for c in range(len(MATCHING_CLASSES))]
        pred = triplet_logits(net, data, triples, MODALITIES, device, rank=rank,
                              world_size=world_size).argmax(1).numpy()
        result["accuracy"][name] = float((pred == labels).mean())
        result["per_class_accuracy"][name] = {c: float((pred[labels == k] == k).mean())
                                              for k, c in enumerate(MATCHING_CLASSES)}
    other = other_images(data)
    rng = np.random.default_rng(seed + 1)
    for a, b in PAIRS:
        # Wrong pairs keep the first modality and take the second from another image's sample.
        sims = (data.embeddings[a] @ data.embeddings[b].t()).masked_fill(~other, float("-inf"))
        wrong = {"hard": sims.argmax(1).numpy(),
                 "random": np.array([rng.choice(np.flatnonzero(other[i].numpy())) for i in range(n)])}
        shard = dict(rank=rank, world_size=world_size)
        pos = triplet_matched(net, data, [(i, i, i) for i in range(n)], (a, b), device, **shard).numpy()
        result["pair_auc"][f"{a}-{b}"] = {
            name: auc(pos, triplet_matched(net, data, [tuple(int(j[i]) if m == b else i for m in MODALITIES)
                                                        for i in range(n)], (a, b), device, **shard).numpy())
            for name, j in wrong.items()}
    return result
