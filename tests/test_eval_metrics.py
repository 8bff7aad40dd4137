"""Evaluation metrics on hand-made inputs with known answers."""

import pytest
import torch

from opt_scale.eval.retrieval import EncodedSet, correct_matrix, recall_at_k
from opt_scale.eval.text_metrics import bleu4, cider_d, normalise, wer, word_errors


def test_recall_at_k_on_a_known_similarity_matrix():
    scores = torch.tensor([[0.9, 0.1, 0.3, 0.2],    # query 0: right answer (0) ranked 1st
                           [0.8, 0.1, 0.7, 0.6],    # query 1: right answer (1) ranked 4th
                           [0.2, 0.9, 0.5, 0.1],    # query 2: right answer (2) ranked 2nd
                           [0.1, 0.2, 0.3, 0.4]])   # query 3: right answer (3) ranked 1st
    correct = torch.eye(4, dtype=torch.bool)
    r = recall_at_k(scores, correct, ks=(1, 2, 3, 4))
    assert r == {1: 0.5, 2: 0.75, 3: 0.75, 4: 1.0}


def test_recall_counts_any_of_several_right_answers_and_queries_with_none():
    scores = torch.tensor([[0.1, 0.5, 0.9], [0.9, 0.5, 0.1]])
    correct = torch.tensor([[True, True, False], [False, False, False]])
    assert recall_at_k(scores, correct, ks=(1, 2)) == {1: 0.0, 2: 0.5}


def test_correct_pairs_follow_images_or_narratives():
    data = EncodedSet(keys=["a_1", "a_2", "b_1"], image_ids=["a", "a", "b"])
    by_image = correct_matrix(data, ("text",), "image")
    assert by_image.tolist() == [[True, True, False], [True, True, False], [False, False, True]]
    by_narrative = correct_matrix(data, ("text",), "audio")
    assert by_narrative.tolist() == [[True, False, False], [False, True, False], [False, False, True]]


def test_bleu4_known_values():
    ref = "a small red circle on the left of a gray background"
    assert bleu4([ref], [[ref]]) == pytest.approx(100.0)
    assert bleu4(["completely different words here now"], [[ref]]) == pytest.approx(0.0, abs=1e-6)
    # Case and punctuation do not count.
    assert bleu4(["A small red circle on the LEFT of a gray background."], [[ref]]) == pytest.approx(100.0)
    partial = bleu4(["a small red circle on the right of a gray background"], [[ref]])
    assert 40 < partial < 80


def test_bleu4_and_cider_equal_the_coco_caption_toolkit():
    """pycocoevalcap's Bleu(4) and Cider on the same (normalised) words: several references per image
    (an image with one), a hypothesis longer than its references, one with no n-gram in common."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    refs = [["A small red circle on the left of a gray background.", "a red disc at the left, gray behind it"],
            ["a large blue square in the middle of a white background"],
            ["a small green triangle at the top", "green triangle, top of a black background", "a tiny triangle"],
            ["an orange diamond on the right", "orange diamond at the right of the picture"]]
    hyps = ["a small red circle on the left of a white background", "a large blue square",
            "a small green triangle at the top of a black background in this picture", "nothing matches here"]
    gts = {i: [normalise(r) for r in rs] for i, rs in enumerate(refs)}
    res = {i: [normalise(h)] for i, h in enumerate(hyps)}
    theirs_bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    theirs_cider, _ = Cider().compute_score(gts, res)
    assert bleu4(hyps, refs) == pytest.approx(100 * theirs_bleu[3], rel=1e-9, abs=1e-9)
    assert cider_d(hyps, refs) == pytest.approx(float(theirs_cider), rel=1e-9, abs=1e-9)
    assert 0 < bleu4(hyps, refs) < 100 and cider_d(hyps, refs) > 0


def test_word_error_rate_known_values():
    assert word_errors("the cat sat", "the cat sat on the mat") == (3, 6)
    assert word_errors("the bat sat on mat", "the cat sat on the mat") == (2, 6)
    assert wer(["a b c", "x"], ["a b d", "x y"]) == pytest.approx(100 * 2 / 5)
    assert normalise("Hello, World!") == "hello world"


def test_word_error_rate_equals_jiwer():
    """jiwer (the usual WER library) on the same normalised words, corpus-level
    as ours: insertions, deletions, substitutions, an empty hypothesis."""
    import jiwer
    refs = ["In this image I can see a small red circle.", "a large blue square on the left",
            "the cat sat on the mat", "one two three four five", "a b c d"]
    hyps = ["in this image i see a small red red circle", "a blue square on the left of a",
            "the bat sat mat", "", "d c b a"]
    theirs = jiwer.wer([normalise(r) for r in refs], [normalise(h) for h in hyps])
    assert wer(hyps, refs) == pytest.approx(100 * theirs, rel=1e-12)
    for h, r in zip(hyps, refs):
        counts = jiwer.process_words(normalise(r), normalise(h))
        assert word_errors(h, r)[0] == counts.substitutions + counts.deletions + counts.insertions


def test_cider_prefers_the_right_caption_and_is_zero_for_unrelated():
    refs = [["a small red circle"], ["a large blue square"], ["a small green triangle"]]
    good = cider_d(["a small red circle", "a large blue square", "a small green triangle"], refs)
    bad = cider_d(["a large blue square", "a small green triangle", "a small red circle"], refs)
    unrelated = cider_d(["xyz qqq", "www vvv", "ppp ooo"], refs)
    assert good > bad > unrelated == 0.0
    assert good == pytest.approx(10.0, rel=1e-6)  # identical to its reference: cosine 1, x10


def test_caption_scores_reward_the_reference_and_punish_a_wrong_caption():
    from opt_scale.eval.captioning import SOURCES, score_captions
    refs = ["a small red circle on the left of a gray background", "a large blue square at the top of a white background",
            "a small green triangle in the middle of a black background", "a large yellow cross on the right of a gray background"]
    wrong = ["a large yellow cross on the right of a gray background", "a small red circle on the left of a gray background",
             "a large blue square at the top of a white background", "a small green triangle in the middle of a black background"]

    def captions(hypotheses):
        return {"keys": ["k0", "k1", "k2", "k3"], "image_ids": ["i0", "i1", "i2", "i3"], "references": refs,
                **{s: list(hypotheses) for s in SOURCES}}

    perfect, rotated = score_captions(captions(refs)), score_captions(captions(wrong))
    empty = score_captions(captions([""] * 4))
    for source in SOURCES:
        assert perfect[source]["BLEU-4"] == pytest.approx(100.0)
        assert rotated[source]["BLEU-4"] < 50 and empty[source]["BLEU-4"] == pytest.approx(0.0, abs=1e-6)
        assert perfect[source]["CIDEr"] > 2 * rotated[source]["CIDEr"] >= 0 and empty[source]["CIDEr"] == 0.0
    assert perfect["audio"]["WER"] == 0.0
    assert 30 < rotated["audio"]["WER"] <= 100 and empty["audio"]["WER"] == pytest.approx(100.0)
    assert set(perfect["image"]) == {"BLEU-4", "CIDEr"} and set(perfect["audio"]) == {"BLEU-4", "CIDEr", "WER"}
