"""Masks, negatives and labels: right proportions, deterministic per (seed, epoch, key)."""

import numpy as np
import pytest

from opt_scale.data.masking import PAIR_LABELS as PAIR
from opt_scale.data.masking import (AUDIO, IGNORE_INDEX, IMAGE, TEXT, decoder_view_keep, matching_class, mlm_mask,
                                    modality_keep, sample_rng, token_mask)
from opt_scale.tasks.config import MatchingConfig, MLMConfig

SPECIAL = frozenset({0, 1, 2, 3, 4})
MASK_ID = 4


def test_mlm_rates_follow_bert_80_10_10():
    ids = np.concatenate([[2], np.arange(10, 110), [3]])
    chosen = to_mask = to_random = kept = 0
    for k in range(400):
        inputs, labels = mlm_mask(ids, sample_rng(0, 0, f"k{k}", "mlm"), MLMConfig(), 500, MASK_ID, SPECIAL)
        sel = labels != IGNORE_INDEX
        assert labels[0] == labels[-1] == IGNORE_INDEX  # [bos]/[eos] never masked
        assert (labels[sel] == ids[sel]).all()
        chosen += sel.sum()
        to_mask += (inputs[sel] == MASK_ID).sum()
        kept += (inputs[sel] == ids[sel]).sum()
        to_random += ((inputs[sel] != MASK_ID) & (inputs[sel] != ids[sel])).sum()
        assert not set(inputs[sel & (inputs != MASK_ID)]) & (SPECIAL - {MASK_ID})
    assert chosen / (400 * 100) == pytest.approx(0.15, abs=0.01)
    assert to_mask / chosen == pytest.approx(0.8, abs=0.02)
    assert to_random / chosen == pytest.approx(0.1, abs=0.02)
    assert kept / chosen == pytest.approx(0.1, abs=0.02)


def test_mlm_masks_at_least_one_token_of_a_short_caption():
    ids = np.array([2, 50, 3])
    for k in range(50):
        _, labels = mlm_mask(ids, sample_rng(0, 0, f"s{k}", "mlm"), MLMConfig(), 100, MASK_ID, SPECIAL)
        assert (labels != IGNORE_INDEX).sum() >= 1


def test_token_mask_stays_within_valid_length():
    for k in range(50):
        m = token_mask(sample_rng(0, 0, f"a{k}", "mam"), valid=7, total=20, prob=0.15)
        assert m.sum() >= 1 and not m[7:].any()
    assert not token_mask(sample_rng(0, 0, "empty", "mam"), 0, 5, 0.15).any()


def test_modality_masking_rate_and_never_all_three():
    n, p = 20_000, 0.3
    keeps = np.array([modality_keep(sample_rng(0, 0, f"m{k}", "modality"), p) for k in range(n)])
    assert keeps.any(1).all()
    rates = (~keeps).mean(0)
    # P(masked | not all masked) = (0.3 - 0.027) / (1 - 0.027), the same for each modality. The standard
    # error of a rate is 0.0032 here: a fallback that unmasks one fixed modality when all three were
    # drawn (0.273 vs 0.3) is 8 standard errors apart; the seed is fixed, so the test is deterministic.
    assert rates == pytest.approx([(p - p ** 3) / (1 - p ** 3)] * 3, abs=0.008)
    assert rates.max() - rates.min() < 0.01
    # And the joint law: each of the 7 allowed patterns with P(pattern) / (1 - p^3) (chi-square, 6 dof).
    from scipy.stats import chi2
    patterns = keeps @ np.array([1, 2, 4])
    observed = np.bincount(patterns, minlength=8)[1:]
    masked = 3 - np.array([bin(v).count("1") for v in range(1, 8)])
    expected = n * p ** masked * (1 - p) ** (3 - masked) / (1 - p ** 3)
    assert ((observed - expected) ** 2 / expected).sum() < chi2.ppf(0.999, 6)


def _every_draw(key: str) -> list[np.ndarray]:
    """Every draw of masking.py for one sample (purposes as the collator names them)."""
    from opt_scale.data.masking import matching_uniforms, matching_view
    rng = lambda purpose: sample_rng(7, 3, key, purpose)  # noqa: E731
    ids = np.concatenate([[2], np.arange(10, 40), [3]])
    match_rng = rng("matching")
    cls = matching_class(match_rng, MatchingConfig())
    view, label = matching_view(match_rng, cls, 0.5)
    return [*mlm_mask(ids, rng("mlm"), MLMConfig(), 500, MASK_ID, SPECIAL),
            token_mask(rng("mvm"), 64, 64, 0.15), token_mask(rng("mam"), 40, 50, 0.15),
            modality_keep(rng("modality"), 0.3), decoder_view_keep(rng("dtr"), TEXT, 0.3),
            decoder_view_keep(rng("dir"), IMAGE, 0.3), np.array([cls, label]), view, matching_uniforms(match_rng)]


def test_same_key_same_masks_whatever_the_global_rngs():
    """Masks come from the per-sample generator only: a draw from numpy's, Python's or torch's global
    RNG (which differ between loader workers and after a resume) would change them."""
    import random

    import torch
    runs = []
    for seed in (0, 1, 2):
        np.random.seed(seed)
        random.seed(seed)
        torch.manual_seed(seed)
        runs.append([_every_draw(f"key{k}") for k in range(20)])
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(runs[0][0], runs[0][1]))  # keys do matter


def test_matching_classes_are_uniform():
    classes = [matching_class(sample_rng(0, 0, f"c{k}", "matching"), MatchingConfig()) for k in range(5000)]
    assert np.bincount(classes, minlength=5) / 5000 == pytest.approx([0.2] * 5, abs=0.025)


@pytest.mark.parametrize("target", [TEXT, IMAGE])
def test_decoder_memory_never_shows_its_target(target):
    keeps = np.array([decoder_view_keep(sample_rng(0, 0, f"d{k}", "dtr"), target, 0.3) for k in range(3000)])
    assert not keeps[:, target].any()
    others = [m for m in (TEXT, IMAGE, AUDIO) if m != target]
    assert keeps[:, others].any(1).all()      # never an empty memory
    assert (~keeps[:, others]).mean(0) == pytest.approx([0.3, 0.3], abs=0.03)


def test_partners_follow_the_class_and_never_share_the_image():
    import torch

    from opt_scale.tasks.matching import mine_partners
    g = torch.Generator().manual_seed(0)
    N = 12
    emb = {m: torch.nn.functional.normalize(torch.randn(N, 8, generator=g), dim=1) for m in ("text", "image", "audio")}
    uids = torch.arange(N)
    uids[5] = uids[4]                                   # two narratives of one image
    classes = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 3, 3])
    for hard in (False, True):
        p = mine_partners(emb, torch.ones(N, 3, dtype=torch.bool), uids, 0, classes,
                          torch.ones(N, 3, dtype=torch.bool), torch.rand(N, 2, generator=g), torch.tensor(10.0), hard)
        own = torch.arange(N)
        for i, c in enumerate(classes.tolist()):
            img, aud = int(p.image[i]), int(p.audio[i])
            assert (img != i) == (c in (0, 1, 3)) and (aud != i) == (c in (0, 2, 3)), (i, c)
            if c == 0:
                assert img == aud                       # swapped together: one other sample's pair
            if c == 3:
                assert img != aud                       # swapped apart
            for row in (img, aud):
                assert row == i or uids[row] != uids[i]  # never the same image under another narrative
        assert torch.equal(p.image[classes == 4], own[classes == 4])


def test_draws_depend_on_seed_epoch_and_key_only():
    a = sample_rng(1, 2, "key", "mlm").random(4)
    assert np.array_equal(a, sample_rng(1, 2, "key", "mlm").random(4))
    for other in (sample_rng(0, 2, "key", "mlm"), sample_rng(1, 3, "key", "mlm"), sample_rng(1, 2, "kex", "mlm"),
                  sample_rng(1, 2, "key", "mvm")):
        assert not np.array_equal(a, other.random(4))


def test_pair_labels_say_whether_the_remaining_pair_agrees():
    from opt_scale.data.masking import AUDIO, IMAGE, MATCHED, TEXT, matching_view
    # class -> (image swapped, audio swapped, image and audio from the same other sample)
    facts = {0: (True, True, True), 1: (True, False, False), 2: (False, True, False), 3: (True, True, False),
             4: (False, False, False)}
    for cls, (img, aud, together) in facts.items():
        assert (PAIR[AUDIO][cls] == MATCHED) == (not img)             # text + image
        assert (PAIR[IMAGE][cls] == MATCHED) == (not aud)             # text + audio
        assert (PAIR[TEXT][cls] == MATCHED) == (together or not (img or aud))  # image + audio
    left_out = [int((~matching_view(sample_rng(0, 0, f"p{k}", "m"), 4, 0.3)[0]).sum()) for k in range(2000)]
    assert np.mean(left_out) == pytest.approx(0.3, abs=0.03) and max(left_out) <= 1
