"""Captioning evaluation: captions from image, audio and both, scored."""

from __future__ import annotations

from collections import defaultdict

import torch

from opt_scale.model.generation import OPTGenerator

from .text_metrics import bleu4, cider_d, wer

SOURCES = ("image", "audio", "image+audio")


@torch.no_grad()
def caption_set(gen: OPTGenerator, batches, beam: int, max_len: int | None = None) -> dict:
    """Generated captions per source, with the references and sample keys."""
    out = {"keys": [], "references": [], "image_ids": [], **{s: [] for s in SOURCES}}
    for b in batches:
        out["keys"] += b.keys
        out["references"] += b.captions
        out["image_ids"] += b.image_ids
        out["image"] += gen.caption(pixels=b.pixels, beam=beam, max_len=max_len)
        out["audio"] += gen.caption(mel=b.mel, mel_len=b.mel_len, beam=beam, max_len=max_len)
        out["image+audio"] += gen.caption(pixels=b.pixels, mel=b.mel, mel_len=b.mel_len, beam=beam, max_len=max_len)
    return out


def gather_captions(captions: dict) -> dict:
    """Every rank's :func:`caption_set` (its share of the samples) in sample
    order (a collective; unchanged without a process group)."""
    from opt_scale.engine.distributed import all_gather_objects

    from .data import interleave_shares
    parts = all_gather_objects(captions)
    return {k: interleave_shares([part[k] for part in parts]) for k in captions}


def score_captions(captions: dict) -> dict[str, dict[str, float]]:
    """BLEU-4 and CIDEr-D per source (all narratives of an image are its
    references), and the WER of audio-only captions against the transcript."""
    by_image = defaultdict(list)
    for image_id, ref in zip(captions["image_ids"], captions["references"]):
        by_image[image_id].append(ref)
    refs = [by_image[i] for i in captions["image_ids"]]
    scores = {s: {"BLEU-4": bleu4(captions[s], refs), "CIDEr": cider_d(captions[s], refs)} for s in SOURCES}
    scores["audio"]["WER"] = wer(captions["audio"], captions["references"])
    return scores
