"""``opt-eval vqa`` and ``opt-eval classify``: the label head on held-out samples.

VQA accuracy is the official one (vqaEval.py): a predicted answer scores
min(1, matches / 3) against each 9 of the 10 human answers, averaged over
the 10 (answers normalised as there). Classification reports top-1 accuracy
(the top label is one of the sample's) and mAP (average precision of each
label's ranking of the samples, averaged over the labels that occur).

Each figure stands beside its baselines: chance (a label drawn uniformly),
and content-blind: VQA's answer prior (the single best answer for each
answer type, what a model that reads only the question's type can reach),
the majority class and, for mAP, each label's frequency (a constant score).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable

import torch

from opt_scale.tasks.pretrainer import OPTPretrainer


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """The official accuracy of one answer against the human ones."""
    if not answers:
        return 0.0
    matches = [a == prediction for a in answers]
    total = sum(matches)
    return sum(min(1.0, (total - m) / 3) for m in matches) / len(answers)


def average_precision(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """AP of ranking the samples by ``scores`` for one label (``positive`` [N] bool)."""
    order = torch.argsort(scores, descending=True)
    hits = positive[order].float()
    if hits.sum() == 0:
        return float("nan")
    precision = hits.cumsum(0) / torch.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / hits.sum())


@torch.no_grad()
def predict(net: OPTPretrainer, batches: Iterable, device) -> tuple[list[str], torch.Tensor, list[dict]]:
    """Keys, label logits [N, labels] (CPU) and targets of the labelled samples."""
    if net.label is None:
        raise ValueError("this model has no label head: evaluate a model fine-tuned with opt-train --task vqa "
                         "or --task classify")
    keys, logits, targets = [], [], []
    for b in batches:
        scored = [i for i, t in enumerate(b.targets) if t]
        if not scored:
            continue
        out = net.predict_labels(b.text_ids.to(device), b.text_len.to(device), b.pixels.to(device),
                                 b.mel.to(device), b.mel_len.to(device), b.present.to(device)).cpu()
        keys += [b.keys[i] for i in scored]
        logits.append(out[scored])
        targets += [b.targets[i] for i in scored]
    width = len(net.tasks.label.names)
    return keys, torch.cat(logits) if logits else torch.zeros(0, width), targets


def gather_predictions(keys: list[str], logits: torch.Tensor, targets: list[dict]):
    """Every rank's share, concatenated (a collective; unchanged without a
    process group). The figures do not depend on the samples' order."""
    from opt_scale.engine.distributed import all_gather_objects
    parts = all_gather_objects((keys, logits, targets))
    return ([k for p in parts for k in p[0]], torch.cat([p[1] for p in parts]), [t for p in parts for t in p[2]])


def score_vqa(names: tuple[str, ...], logits: torch.Tensor, targets: list[dict]) -> dict:
    predictions = [names[i] for i in logits.argmax(1).tolist()]
    by_type: dict[str, list[float]] = defaultdict(list)
    for pred, t in zip(predictions, targets):
        by_type[t.get("label_type") or "all"].append(vqa_accuracy(pred, t["answers"]))
    # Answer prior: per answer type, the one answer of the vocabulary that scores best there.
    blind_by_type = {}
    for kind in by_type:
        group = [t for t in targets if (t.get("label_type") or "all") == kind]
        candidates = Counter(a for t in group for a in t["answers"] if a in set(names))
        blind_by_type[kind] = max((sum(vqa_accuracy(a, t["answers"]) for t in group) / len(group)
                                   for a in candidates), default=0.0)
    chance = sum(vqa_accuracy(a, t["answers"]) for t in targets for a in names) / max(1, len(targets) * len(names))
    n = len(targets)
    return {
        "samples": n,
        "accuracy": 100 * sum(sum(v) for v in by_type.values()) / max(1, n),
        "by_type": {k: {"questions": len(v), "accuracy": 100 * sum(v) / len(v),
                        "answer_prior": 100 * blind_by_type[k]} for k, v in sorted(by_type.items())},
        "chance": 100 * chance,
        "answer_prior": 100 * sum(blind_by_type[k] * len(v) for k, v in by_type.items()) / max(1, n),
        "examples": [{"answers": t["answers"][:3], "predicted": p} for p, t in list(zip(predictions, targets))[:5]],
    }


def score_classes(names: tuple[str, ...], logits: torch.Tensor, targets: list[dict]) -> dict:
    index = {name: i for i, name in enumerate(names)}
    positive = torch.zeros(len(targets), len(names), dtype=torch.bool)
    for row, t in enumerate(targets):
        for label in t["labels"]:
            if label in index:
                positive[row, index[label]] = True
    n = len(targets)
    top = logits.argmax(1)
    top1 = float(positive[torch.arange(n), top].float().mean()) if n else 0.0
    occurring = [j for j in range(len(names)) if positive[:, j].any()]
    aps = [average_precision(logits[:, j], positive[:, j]) for j in occurring]
    counts = positive.sum(0).float()
    return {
        "samples": n,
        "top1": 100 * top1,
        "mAP": 100 * sum(aps) / len(aps) if aps else 0.0,
        "chance_top1": 100 / len(names),
        "majority_top1": 100 * float(counts.max()) / max(1, n),
        "chance_mAP": 100 * float((counts[occurring] / max(1, n)).mean()) if occurring else 0.0,
        "per_class": {names[j]: {"samples": int(counts[j]), "AP": 100 * ap} for j, ap in zip(occurring, aps)},
    }
