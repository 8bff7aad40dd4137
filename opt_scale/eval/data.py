"""Held-out samples for evaluation: every sample once, in shard order, unmasked."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from opt_scale.data.decode import SampleDecoder, SampleError
from opt_scale.data.shard_reader import iter_samples
from opt_scale.data.sources import resolve_shards
from opt_scale.data.tokenizer import Tokenizer
from opt_scale.model.config import ModelConfig


@dataclass
class EvalBatch:
    keys: list[str]
    image_ids: list[str]
    captions: list[str]
    text_ids: torch.Tensor
    text_len: torch.Tensor
    pixels: torch.Tensor
    mel: torch.Tensor
    mel_len: torch.Tensor
    present: torch.Tensor | None = None     # [B, 3] bool: text, image, audio in the sample
    targets: list[dict | None] | None = None  # labelled samples' targets (labels, answers, label_type)


def iter_eval_batches(shards: str, model_cfg: ModelConfig, tokenizer: Tokenizer, batch_size: int,
                      max_samples: int = 0, rank: int = 0, world_size: int = 1) -> Iterator[EvalBatch]:
    """Samples ``rank, rank + world_size, ...`` of the first ``max_samples``
    (0: all), decoded like training inputs but without any masking. Corrupt
    samples are skipped (evaluation needs no equal batch counts)."""
    decoder = SampleDecoder(model_cfg, tokenizer)
    pending = []
    index = 0
    for shard in resolve_shards(shards, key="--shards"):
        for raw in iter_samples(shard.url):
            if max_samples and index >= max_samples:
                break
            mine = index % world_size == rank
            index += 1
            if not mine:
                continue
            try:
                pending.append(decoder(raw))
            except SampleError:
                continue
            if len(pending) == batch_size:
                yield collate(pending, tokenizer.pad_id, model_cfg.audio.n_mels)
                pending = []
    if pending:
        yield collate(pending, tokenizer.pad_id, model_cfg.audio.n_mels)


def interleave_shares(parts: list[list]) -> list:
    """Undo :func:`iter_eval_batches`' split: rank r's share holds samples
    r, r + world_size, ...; ``parts`` (every rank's share, in rank order)
    back in sample order, so results gathered from any number of ranks
    line up with one process's."""
    out = []
    for i in range(max((len(p) for p in parts), default=0)):
        out += [p[i] for p in parts if i < len(p)]
    return out


def first_prompts(shards: str, n: int) -> list[tuple[str, bytes | None]]:
    """The captions of the first ``n`` samples (text-to-image prompts that
    fit whatever data a run was trained on), each with its image's JPEG bytes
    (None for a sample without one): the grid shows them as the reference."""
    captions = []
    for shard in resolve_shards(shards, key="--prompts-from"):
        for raw in iter_samples(shard.url, extensions={"txt", "jpg"}):
            captions.append((raw["txt"].decode("utf-8").strip(), raw.get("jpg")))
            if len(captions) == n:
                return captions
    return captions


def collate(samples, pad_id: int, n_mels: int) -> EvalBatch:
    n = len(samples)
    text_len = torch.tensor([len(s.text_ids) for s in samples])
    mel_len = torch.tensor([s.mel.shape[0] for s in samples])
    text = torch.full((n, int(text_len.max())), pad_id, dtype=torch.long)
    mel = torch.zeros(n, int(mel_len.max()), n_mels)
    for i, s in enumerate(samples):
        text[i, : len(s.text_ids)] = torch.from_numpy(s.text_ids)
        mel[i, : s.mel.shape[0]] = s.mel
    metas = [s.meta for s in samples]
    return EvalBatch(keys=[s.key for s in samples], image_ids=[m.get("image_id", s.key) for s, m in zip(samples, metas)],
                     captions=[s.caption for s in samples], text_ids=text, text_len=text_len,
                     pixels=torch.stack([s.pixels for s in samples]), mel=mel, mel_len=mel_len,
                     present=torch.from_numpy(np.stack([s.present for s in samples])),
                     targets=[m.get("targets") for m in metas])
