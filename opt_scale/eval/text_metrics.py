"""Caption metrics: BLEU-4 (sacrebleu), CIDEr-D and word error rate.

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


def bleu4(hypotheses: list[str], references: list[list[str]]) -> float:
    """Corpus BLEU-4 (0-100) with sacrebleu's standard settings."""
    import sacrebleu
    n_refs = max(len(r) for r in references)
    ref_streams = [[normalise(r[i]) if i < len(r) else normalise(r[0]) for r in references] for i in range(n_refs)]
    return float(sacrebleu.corpus_bleu([normalise(h) for h in hypotheses], ref_streams).score)


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
                penalty = math.exp(-((len(hyp) - len(r)) ** 2) / (2 * sigma ** 2))
                score += cos * penalty
        total += score / n_max / len(rs) * 10.0
    return total / max(1, n_images)


def word_errors(hypothesis: str, reference: str) -> tuple[int, int]:
    """(edit distance in words, reference length)."""
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
