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
    # Same as sacrebleu on the normalised strings; case and punctuation do not count.
    assert bleu4(["A small red circle on the LEFT of a gray background."], [[ref]]) == pytest.approx(100.0)
    partial = bleu4(["a small red circle on the right of a gray background"], [[ref]])
    assert 40 < partial < 80


def test_word_error_rate_known_values():
    assert word_errors("the cat sat", "the cat sat on the mat") == (3, 6)
    assert word_errors("the bat sat on mat", "the cat sat on the mat") == (2, 6)
    assert wer(["a b c", "x"], ["a b d", "x y"]) == pytest.approx(100 * 2 / 5)
    assert normalise("Hello, World!") == "hello world"


def test_cider_prefers_the_right_caption_and_is_zero_for_unrelated():
    refs = [["a small red circle"], ["a large blue square"], ["a small green triangle"]]
    good = cider_d(["a small red circle", "a large blue square", "a small green triangle"], refs)
    bad = cider_d(["a large blue square", "a small green triangle", "a small red circle"], refs)
    unrelated = cider_d(["xyz qqq", "www vvv", "ppp ooo"], refs)
    assert good > bad > unrelated == 0.0
    assert good == pytest.approx(10.0, rel=1e-6)  # identical to its reference: cosine 1, x10
