"""Stack decoded samples into a batch and draw every task's masks and labels.

Runs in the loader worker. All draws are per sample, from
``sample_rng(seed, epoch, key, purpose)``; only the partners of matching
negatives depend on the batch (other samples of the same batch), and batches
are themselves a deterministic function of the epoch plan.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from opt_scale.model.config import ModelConfig
from opt_scale.tasks.config import TasksConfig

from .decode import DecodedSample
from .masking import (AUDIO, IGNORE_INDEX, IMAGE, TEXT, matching_class, matching_sources, matching_view,
                      mlm_mask, modality_keep, sample_rng, token_mask)
from .tokenizer import Tokenizer


@dataclass
class SampleDraws:
    """Everything random about one sample in one epoch (see :meth:`Collator.draw`)."""
    keep: np.ndarray               # [3] bool: text, image, audio present in the masked view
    mlm_inputs: np.ndarray         # [len] ids after BERT masking
    mlm_labels: np.ndarray         # [len] targets at masked positions, IGNORE_INDEX elsewhere
    mvm_mask: np.ndarray | None    # [patches] bool, None when the image is dropped
    mam_mask: np.ndarray | None    # [audio tokens of this sample] bool, None when the audio is dropped
    match_class: int
    match_rng: np.random.Generator  # continues into the choice of matching partners


class Collator:
    def __init__(self, model_cfg: ModelConfig, tasks_cfg: TasksConfig, tokenizer: Tokenizer, seed: int):
        self.model_cfg = model_cfg
        self.tasks = tasks_cfg
        self.tokenizer = tokenizer
        self.seed = seed

    def __call__(self, samples: list[DecodedSample], epoch: int) -> dict:
        return self.assemble(samples, [self.draw(s, epoch) for s in samples])

    def draw(self, s: DecodedSample, epoch: int) -> SampleDraws:
        """The sample's masks and matching class: a function of (seed, epoch, key) alone."""
        tok = self.tokenizer
        keep = modality_keep(sample_rng(self.seed, epoch, s.key, "modality"), self.tasks.modality_mask.prob)
        inputs, labels = mlm_mask(s.text_ids, sample_rng(self.seed, epoch, s.key, "mlm"), self.tasks.mlm,
                                  tok.vocab_size, tok.mask_id, tok.special_ids)
        # Token-level masks only where the modality is present in the masked view.
        mvm = None
        if keep[IMAGE]:
            patches = self.model_cfg.vision.num_patches
            mvm = token_mask(sample_rng(self.seed, epoch, s.key, "mvm"), patches, patches, self.tasks.mvm.prob)
        mam = None
        if keep[AUDIO]:
            tokens = self.model_cfg.audio.tokens_for_frames(s.mel.shape[0])
            mam = token_mask(sample_rng(self.seed, epoch, s.key, "mam"), tokens, tokens, self.tasks.mam.prob)
        rng = sample_rng(self.seed, epoch, s.key, "matching")
        return SampleDraws(keep, inputs, labels, mvm, mam, matching_class(rng, self.tasks.matching), rng)

    def assemble(self, samples: list[DecodedSample], draws: list[SampleDraws]) -> dict:
        """Pad and stack the samples and their draws into one batch."""
        n = len(samples)
        text_len = max(len(s.text_ids) for s in samples)
        frames = max(s.mel.shape[0] for s in samples)
        text_ids = np.full((n, text_len), self.tokenizer.pad_id, dtype=np.int64)
        mlm_inputs = text_ids.copy()
        mlm_labels = np.full((n, text_len), IGNORE_INDEX, dtype=np.int64)
        # Not zeros(): each row is written once, its copy and then only the padding zeroed.
        mel = torch.empty(n, frames, self.model_cfg.audio.n_mels)
        mvm_mask = np.zeros((n, self.model_cfg.vision.num_patches), dtype=bool)
        mam_mask = np.zeros((n, self.model_cfg.audio.tokens_for_frames(frames)), dtype=bool)
        for i, (s, d) in enumerate(zip(samples, draws)):
            L = len(s.text_ids)
            text_ids[i, :L] = s.text_ids
            mlm_inputs[i, :L] = d.mlm_inputs
            if d.keep[TEXT]:  # a masked-out text modality has no positions to predict
                mlm_labels[i, :L] = d.mlm_labels
            mel[i, : s.mel.shape[0]] = s.mel
            mel[i, s.mel.shape[0]:] = 0.0
            if d.mvm_mask is not None:
                mvm_mask[i] = d.mvm_mask
            if d.mam_mask is not None:
                mam_mask[i, : len(d.mam_mask)] = d.mam_mask
        classes = [d.match_class for d in draws]
        match_rngs = [d.match_rng for d in draws]
        image_src, audio_src = matching_sources(classes, match_rngs)
        # Drawn after the sources, so the swaps do not depend on pair_prob.
        views = [matching_view(rng, cls, self.tasks.matching.pair_prob) for rng, cls in zip(match_rngs, classes)]
        return {
            "keys": [s.key for s in samples],
            "text_ids": torch.from_numpy(text_ids),
            "text_len": torch.tensor([len(s.text_ids) for s in samples]),
            "mlm_input_ids": torch.from_numpy(mlm_inputs),
            "mlm_labels": torch.from_numpy(mlm_labels),
            "pixels": torch.stack([s.pixels for s in samples]),
            "mel": mel,
            "mel_len": torch.tensor([s.mel.shape[0] for s in samples]),
            "modality_keep": torch.from_numpy(np.stack([d.keep for d in draws])),
            "mvm_mask": torch.from_numpy(mvm_mask),
            "mam_mask": torch.from_numpy(mam_mask),
            "match_label": torch.tensor([label for _, label in views]),
            "match_keep": torch.from_numpy(np.stack([keep for keep, _ in views])),
            "match_image_src": torch.from_numpy(image_src),
            "match_audio_src": torch.from_numpy(audio_src),
        }
