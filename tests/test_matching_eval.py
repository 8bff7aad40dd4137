"""The matching evaluation's negatives and AUC (no model needed)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from opt_scale.eval.matching_eval import auc, class_triples, negatives
from opt_scale.eval.retrieval import EncodedSet
from opt_scale.tasks.config import MATCHING_CLASSES


def encoded(n: int = 10, seed: int = 0) -> EncodedSet:
    g = torch.Generator().manual_seed(seed)
    ids = [f"img{i // 2}" for i in range(n)]   # two narratives per image
    emb = {m: F.normalize(torch.randn(n, 8, generator=g), dim=1) for m in ("text", "image", "audio")}
    return EncodedSet(keys=[f"k{i}" for i in range(n)], image_ids=ids, embeddings=emb)


def test_auc_is_the_probability_a_positive_outranks_a_negative():
    assert auc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0
    assert auc(np.array([0.0]), np.array([1.0])) == 0.0
    assert auc(np.array([1.0, 1.0]), np.array([1.0])) == pytest.approx(0.5)   # ties count half


def test_negatives_never_show_the_same_image_and_hard_ones_are_the_nearest():
    data = encoded()
    ways = negatives(data, seed=3)
    ids = np.array(data.image_ids)
    for way in ways.values():
        for key, rows in way.items():
            assert (ids[rows] != ids).all(), key
        assert (way["apart_audio"] != way["image"]).all()   # swapped apart: two different other samples
    e = data.embeddings
    scores = (e["text"] @ e["image"].t() + e["audio"] @ e["image"].t())
    scores = scores.masked_fill(torch.from_numpy(ids[:, None] == ids[None, :]), float("-inf"))
    assert np.array_equal(ways["hard"]["image"], scores.argmax(1).numpy())
    assert np.array_equal(negatives(data, seed=3)["random"]["image"], ways["random"]["image"])  # seeded


def test_each_class_swaps_what_its_name_says():
    way = {"image": np.array([5]), "audio": np.array([6]), "pair": np.array([7]), "apart_audio": np.array([8])}
    expected = {"image_audio_swapped": (0, 7, 7), "image_swapped": (0, 5, 0), "audio_swapped": (0, 0, 6),
                "image_and_audio_swapped_apart": (0, 5, 8), "matched": (0, 0, 0)}
    for cls, name in enumerate(MATCHING_CLASSES):
        assert class_triples(0, cls, way) == expected[name], name
