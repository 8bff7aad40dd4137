"""Stack decoded samples into a batch and draw every task's masks and labels.

Runs in the loader worker. All draws are per sample, from
``sample_rng(seed, epoch, key, purpose)``; only the partners of matching
negatives depend on the batch (other samples of the same batch), and batches
are themselves a deterministic function of the epoch plan.
"""

from __future__ import annotations

import numpy as np
import torch

from opt_scale.model.config import ModelConfig
from opt_scale.tasks.config import TasksConfig

from .decode import DecodedSample
from .masking import (AUDIO, IGNORE_INDEX, IMAGE, TEXT, matching_class, matching_sources, matching_view,
                      mlm_mask, modality_keep, sample_rng, token_mask)
from .tokenizer import Tokenizer


class Collator:
    def __init__(self, model_cfg: ModelConfig, tasks_cfg: TasksConfig, tokenizer: Tokenizer, seed: int):
        self.model_cfg = model_cfg
        self.tasks = tasks_cfg
        self.tokenizer = tokenizer
        self.seed = seed

    def __call__(self, samples: list[DecodedSample], epoch: int) -> dict:
        n = len(samples)
        tok = self.tokenizer
        text_len = max(len(s.text_ids) for s in samples)
        frames = max(s.mel.shape[0] for s in samples)
        text_ids = np.full((n, text_len), tok.pad_id, dtype=np.int64)
        mlm_inputs = text_ids.copy()
        mlm_labels = np.full((n, text_len), IGNORE_INDEX, dtype=np.int64)
        keep = np.ones((n, 3), dtype=bool)
        mel = torch.zeros(n, frames, self.model_cfg.audio.n_mels)
        patches = self.model_cfg.vision.num_patches
        audio_tokens = self.model_cfg.audio.tokens_for_frames(frames)
        mvm_mask = np.zeros((n, patches), dtype=bool)
        mam_mask = np.zeros((n, audio_tokens), dtype=bool)
        classes, match_rngs = [], []
        for i, s in enumerate(samples):
            L = len(s.text_ids)
            text_ids[i, :L] = s.text_ids
            keep[i] = modality_keep(sample_rng(self.seed, epoch, s.key, "modality"), self.tasks.modality_mask.prob)
            inputs, labels = mlm_mask(s.text_ids, sample_rng(self.seed, epoch, s.key, "mlm"), self.tasks.mlm,
                                      tok.vocab_size, tok.mask_id, tok.special_ids)
            mlm_inputs[i, :L] = inputs
            if keep[i, TEXT]:  # a masked-out text modality has no positions to predict
                mlm_labels[i, :L] = labels
            mel[i, : s.mel.shape[0]] = s.mel
            # Token-level masks only where the modality is present in the masked view.
            if keep[i, IMAGE]:
                mvm_mask[i] = token_mask(sample_rng(self.seed, epoch, s.key, "mvm"), patches, patches,
                                         self.tasks.mvm.prob)
            if keep[i, AUDIO]:
                mam_mask[i] = token_mask(sample_rng(self.seed, epoch, s.key, "mam"),
                                         self.model_cfg.audio.tokens_for_frames(s.mel.shape[0]), audio_tokens,
                                         self.tasks.mam.prob)
            rng = sample_rng(self.seed, epoch, s.key, "matching")
            classes.append(matching_class(rng, self.tasks.matching))
            match_rngs.append(rng)
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
            "modality_keep": torch.from_numpy(keep),
            "mvm_mask": torch.from_numpy(mvm_mask),
            "mam_mask": torch.from_numpy(mam_mask),
            "match_label": torch.tensor([label for _, label in views]),
            "match_keep": torch.from_numpy(np.stack([keep for keep, _ in views])),
            "match_image_src": torch.from_numpy(image_src),
            "match_audio_src": torch.from_numpy(audio_src),
        }
