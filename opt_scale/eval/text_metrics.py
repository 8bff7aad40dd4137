"""Caption metrics: BLEU-4 and CIDEr-D as the COCO caption toolkit
(pycocoevalcap) computes them, and word error rate.

Texts are normalised the same way for every metric (lowercase, punctuation
removed), since generated captions are lowercased by the tokenizer.
"""

from __future__ import annotations

import math
import re
from collections import Counter

_PUNCT = re.compile(r"[^\w\s']")


def normalise(text: str) -> str:
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def bleu4(hypotheses: list[str], references: list[list[str]], n_max: int = 4) -> float:
    """Corpus BLEU-4 (0-100) as the COCO caption toolkit computes it
    (pycocoevalcap's ``Bleu(4)``, equal to it on the same words: a test
    checks): n-gram counts clipped by their most frequent use in any
    reference, summed over the corpus; the brevity penalty from the
    reference length closest to each hypothesis; its tiny smoothing terms."""
    correct, guess = [0] * n_max, [0] * n_max
    test_len = ref_len = 0
    for hyp, refs in zip(hypotheses, references):
        words, ref_words = normalise(hyp).split(), [normalise(r).split() for r in refs]
        most: Counter = Counter()
        for r in ref_words:
            for n in range(n_max):
                most |= _ngrams(r, n + 1)  # | keeps the larger count: the clip
        test_len += len(words)
        ref_len += min((abs(len(r) - len(words)), len(r)) for r in ref_words)[1]
        for n in range(n_max):
            counts = _ngrams(words, n + 1)
            guess[n] += max(0, len(words) - n)
            correct[n] += sum(min(c, most[g]) for g, c in counts.items())
    score = 1.0
    for n in range(n_max):
        score *= (correct[n] + 1e-15) / (guess[n] + 1e-9)
    score **= 1.0 / n_max
    ratio = (test_len + 1e-15) / (ref_len + 1e-9)
    if ratio < 1:
        score *= math.exp(1 - 1 / ratio)
    return 100.0 * score


def _ngrams(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def cider_d(hypotheses: list[str], references: list[list[str]], n_max: int = 4, sigma: float = 6.0) -> float:
    """CIDEr-D (Vedantam et al. 2015, as in the COCO caption toolkit): tf-idf
    n-gram cosine against each reference, clipped, length-penalised, x10,
    averaged over n = 1..4, references and images. Document frequencies come
    from the references of this evaluation set."""
    refs = [[normalise(r).split() for r in rs] for rs in references]
    hyps = [normalise(h).split() for h in hypotheses]
    n_images = len(refs)
    df = [Counter() for _ in range(n_max)]
    for rs in refs:
        for n in range(n_max):
            df[n].update(set().union(*[_ngrams(r, n + 1).keys() for r in rs]))
    log_n = math.log(float(n_images))

    def vec(words, n):
        counts = _ngrams(words, n + 1)
        v = {g: c * (log_n - math.log(max(1.0, df[n][g]))) for g, c in counts.items()}
        return v, counts, math.sqrt(sum(x * x for x in v.values()))

    total = 0.0
    for hyp, rs in zip(hyps, refs):
        score = 0.0
        for n in range(n_max):
            hv, hc, hnorm = vec(hyp, n)
            for r in rs:
                rv, rc, rnorm = vec(r, n)
                dot = sum(min(hv[g], rv[g]) * rv[g] for g in hv if g in rv)  # clipped (CIDEr-D)
                cos = dot / (hnorm * rnorm) if hnorm and rnorm else 0.0
                # The toolkit measures length in bigrams (words - 1): the same gap, but for an empty caption.
                gap = max(0, len(hyp) - 1) - max(0, len(r) - 1)
                penalty = math.exp(-(gap ** 2) / (2 * sigma ** 2))
                score += cos * penalty
        total += score / n_max / len(rs) * 10.0
    return total / max(1, n_images)


def word_errors(hypothesis: str, reference: str) -> tuple[int, int]:
    """(edit distance in words, reference length).

    Twelve lines rather than a runtime dependency: jiwer computes the same
    (tests/test_eval_metrics.py proves it equal, corpus WER included)."""
    h, r = normalise(hypothesis).split(), normalise(reference).split()
    prev = list(range(len(h) + 1))
    for i, rw in enumerate(r, 1):
        cur = [i] + [0] * len(h)
        for j, hw in enumerate(h, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (rw != hw))
        prev = cur
    return prev[-1], len(r)


def wer(hypotheses: list[str], references: list[str]) -> float:
    """Corpus word error rate (0-100): total edits / total reference words."""
    edits = words = 0
    for h, r in zip(hypotheses, references):
        e, n = word_errors(h, r)
        edits += e
        words += n
    return 100.0 * edits / max(1, words)
