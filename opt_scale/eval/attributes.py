"""Does a caption name what is in the image? Per-attribute caption accuracy.

BLEU and CIDEr reward a caption for its template: on the demo data "in this
image i can see a small red circle ..." scores well with the wrong shape.
Here a generated caption is right about an attribute (colour, shape, position,
size, background) when it names exactly the value its reference names, among
the demo generator's words (``data_prep.demo_data``). Only references naming
exactly one colour and one shape (a single object) are scored; others, and
data sets with other words, are left out and counted as ``skipped``.

Every accuracy stands beside two baselines: chance (one over the number of
values) and content-blind (always naming the most frequent reference value,
what a captioner that ignores its input can reach).
"""

from __future__ import annotations

import re
from collections import Counter

from opt_scale.data_prep.demo_data import BACKGROUNDS, COLORS, POSITIONS, SHAPES, SIZES

ATTRIBUTES: dict[str, frozenset[str]] = {
    "colour": frozenset(COLORS), "shape": frozenset(SHAPES), "position": frozenset(POSITIONS),
    "size": frozenset(SIZES), "background": frozenset(BACKGROUNDS)}


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def named(text: str) -> dict[str, set[str]]:
    """attribute -> the values ``text`` names (the demo's vocabularies are disjoint)."""
    words = _words(text)
    return {attr: words & vocab for attr, vocab in ATTRIBUTES.items()}


def attribute_accuracy(generated: list[str], references: list[str]) -> dict:
    """Per attribute: accuracy over single-object references, chance and content-blind baselines."""
    scored = [(named(g), named(r)) for g, r in zip(generated, references)]
    scored = [(g, r) for g, r in scored if len(r["colour"]) == 1 and len(r["shape"]) == 1]
    result: dict = {"samples": len(scored), "skipped": len(generated) - len(scored), "attributes": {}}
    if not scored:
        return result
    for attr, vocab in ATTRIBUTES.items():
        pairs = [(g[attr], r[attr]) for g, r in scored if len(r[attr]) == 1]
        if not pairs:
            continue
        most_common = Counter(next(iter(r)) for _, r in pairs).most_common(1)[0][1]
        result["attributes"][attr] = {"accuracy": sum(g == r for g, r in pairs) / len(pairs),
                                      "chance": 1 / len(vocab), "content_blind": most_common / len(pairs)}
    both = [g["colour"] == r["colour"] and g["shape"] == r["shape"] for g, r in scored]
    blind = Counter((next(iter(r["colour"])), next(iter(r["shape"]))) for _, r in scored).most_common(1)[0][1]
    result["attributes"]["colour+shape"] = {
        "accuracy": sum(both) / len(both), "chance": 1 / (len(COLORS) * len(SHAPES)),
        "content_blind": blind / len(scored)}
    return result
