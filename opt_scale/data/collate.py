"""Stack decoded samples into a batch and draw every task's masks and labels.

Runs in the loader worker. All draws are per sample, from
``sample_rng(seed, epoch, key, purpose)``. The partners of matching negatives
are picked in the model, among the hard negatives of the global batch, by two
uniforms drawn here (see :mod:`opt_scale.tasks.matching`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from opt_scale.model.config import ModelConfig
from opt_scale.tasks.config import TasksConfig

from .decode import DecodedSample
from .features import log_mel_batch
from .masking import (IGNORE_INDEX, IMAGE, TEXT, decoder_view_keep, matching_class, matching_uniforms,
                      matching_view, matching_view_of_present, mlm_mask, modality_keep, sample_rng, token_mask)
from .tokenizer import Tokenizer


@dataclass
class SampleDraws:
    """Everything random about one sample in one epoch (see :meth:`Collator.draw`)."""
    keep: np.ndarray               # [3] bool: text, image, audio shown in the masked view (never one the sample lacks)
    mlm_inputs: np.ndarray         # [len] ids after BERT masking
    mlm_labels: np.ndarray         # [len] targets at masked positions, IGNORE_INDEX elsewhere
    mvm_mask: np.ndarray           # [patches] bool: patches hidden wherever the image is shown masked
    mam_mask: np.ndarray           # [audio tokens of this sample] bool, likewise for the audio
    dtr_keep: np.ndarray           # [3] bool: modalities in the text decoder's memory (never text)
    dir_keep: np.ndarray           # [3] bool: modalities in the image decoder's memory (never image)
    match_class: int               # 5-way class (which of image / audio come from another sample)
    match_label: int               # its label: the class, reduced when the matching view leaves a modality out
    match_keep: np.ndarray         # [3] bool: modalities in the matching view
    match_u: np.ndarray            # [2] uniforms choosing the negative image / audio


def dtr_memory(drawn: np.ndarray, memory: str) -> np.ndarray:
    """The text decoder's memory: the pre-training draw, or the fixed one a
    fine-tuning task asks for (``tasks.dtr.memory``)."""
    fixed = {"image": (False, True, False), "audio": (False, False, True), "both": (False, True, True)}
    return drawn if memory == "pretrain" else np.array(fixed[memory])


class Collator:
    def __init__(self, model_cfg: ModelConfig, tasks_cfg: TasksConfig, tokenizer: Tokenizer, seed: int):
        self.model_cfg = model_cfg
        self.tasks = tasks_cfg
        self.tokenizer = tokenizer
        self.seed = seed
        # vqa / classify: each sample's label scores, over the run's vocabulary
        # (labels outside it score nothing, as VQA's rare answers).
        names = tasks_cfg.label.names if tasks_cfg.label.weight > 0 else ()
        self.label_index = {name: i for i, name in enumerate(names)}

    def __call__(self, samples: list[DecodedSample], epoch: int) -> dict:
        return self.assemble(samples, [self.draw(s, epoch) for s in samples])

    def draw(self, s: DecodedSample, epoch: int) -> SampleDraws:
        """The sample's masks, views and matching class: a function of (seed, epoch, key) alone."""
        tok, t = self.tokenizer, self.tasks
        rng = lambda purpose: sample_rng(self.seed, epoch, s.key, purpose)  # noqa: E731
        inputs, labels = mlm_mask(s.text_ids, rng("mlm"), t.mlm, tok.vocab_size, tok.mask_id, tok.special_ids)
        patches = self.model_cfg.vision.num_patches
        audio_tokens = self.model_cfg.audio.tokens_for_frames(s.frames)
        match_rng = rng("matching")
        match_class = matching_class(match_rng, t.matching)
        match_keep, match_label = matching_view(match_rng, match_class, t.matching.pair_prob)
        # A modality the sample lacks is left out of every view; the draws
        # themselves are made as for a full sample, so each stays a function
        # of (seed, epoch, key) alone.
        present = s.present
        match_keep, match_label = matching_view_of_present(match_keep, match_label, match_class, present)
        keep = modality_keep(rng("modality"), t.modality_mask.prob) & present
        if not keep.any():
            keep[TEXT] = True  # every sample has its caption
        return SampleDraws(
            keep=keep,
            mlm_inputs=inputs, mlm_labels=labels,
            mvm_mask=token_mask(rng("mvm"), patches, patches, t.mvm.prob),
            mam_mask=token_mask(rng("mam"), audio_tokens, audio_tokens, t.mam.prob),
            dtr_keep=dtr_memory(decoder_view_keep(rng("dtr"), TEXT, t.dtr.drop_prob), t.dtr.memory) & present,
            dir_keep=decoder_view_keep(rng("dir"), IMAGE, t.dir.drop_prob) & present,
            match_class=match_class, match_label=match_label, match_keep=match_keep,
            match_u=matching_uniforms(match_rng))

    def stack_audio(self, samples: list[DecodedSample], frames: int) -> dict:
        """``mel`` [n, frames, n_mels], or under data.mel_on_device the
        zero-padded waveforms ``wave`` [n, samples] and ``wave_len`` [n], which
        :func:`mel_on_device` turns into the same ``mel`` on the training device."""
        if samples[0].wave is not None:
            wave = torch.zeros(len(samples), max(len(s.wave) for s in samples))
            for i, s in enumerate(samples):
                wave[i, :len(s.wave)] = s.wave
            return {"wave": wave, "wave_len": torch.tensor([len(s.wave) for s in samples])}
        # Not zeros(): each row is written once, its copy and then only the padding zeroed.
        mel = torch.empty(len(samples), frames, self.model_cfg.audio.n_mels)
        for i, s in enumerate(samples):
            mel[i, :s.frames] = s.mel
            mel[i, s.frames:] = 0.0
        return {"mel": mel}

    def assemble(self, samples: list[DecodedSample], draws: list[SampleDraws]) -> dict:
        """Pad and stack the samples and their draws into one batch."""
        n = len(samples)
        text_len = max(len(s.text_ids) for s in samples)
        frames = max(s.frames for s in samples)
        text_ids = np.full((n, text_len), self.tokenizer.pad_id, dtype=np.int64)
        mlm_inputs = text_ids.copy()
        mlm_labels = np.full((n, text_len), IGNORE_INDEX, dtype=np.int64)
        audio = self.stack_audio(samples, frames)
        mvm_mask = np.zeros((n, self.model_cfg.vision.num_patches), dtype=bool)
        mam_mask = np.zeros((n, self.model_cfg.audio.tokens_for_frames(frames)), dtype=bool)
        for i, (s, d) in enumerate(zip(samples, draws)):
            L = len(s.text_ids)
            text_ids[i, :L] = s.text_ids
            mlm_inputs[i, :L] = d.mlm_inputs
            mlm_labels[i, :L] = d.mlm_labels
            mvm_mask[i] = d.mvm_mask
            mam_mask[i, : len(d.mam_mask)] = d.mam_mask
        stack = lambda name: torch.from_numpy(np.stack([getattr(d, name) for d in draws]))  # noqa: E731
        return {
            "keys": [s.key for s in samples],
            "image_uid": torch.tensor([s.image_uid for s in samples], dtype=torch.int64),
            "text_ids": torch.from_numpy(text_ids),
            "text_len": torch.tensor([len(s.text_ids) for s in samples]),
            "mlm_input_ids": torch.from_numpy(mlm_inputs),
            "mlm_labels": torch.from_numpy(mlm_labels),
            "pixels": torch.stack([s.pixels for s in samples]),
            **audio,
            "mel_len": torch.tensor([s.frames for s in samples]),
            "present": torch.from_numpy(np.stack([s.present for s in samples])),
            "modality_keep": stack("keep"),
            "mvm_mask": torch.from_numpy(mvm_mask),
            "mam_mask": torch.from_numpy(mam_mask),
            "dtr_keep": stack("dtr_keep"),
            "dir_keep": stack("dir_keep"),
            "match_class": torch.tensor([d.match_class for d in draws]),
            "match_label": torch.tensor([d.match_label for d in draws]),
            "match_keep": stack("match_keep"),
            "match_u": stack("match_u"),
            **self.stack_labels(samples),
        }

    def stack_labels(self, samples: list[DecodedSample]) -> dict:
        """``label_targets`` [n, labels] soft scores and ``labelled`` [n] (the
        sample has targets), in a run with a label vocabulary; else nothing."""
        if not self.label_index:
            return {}
        targets = torch.zeros(len(samples), len(self.label_index))
        labelled = torch.zeros(len(samples), dtype=torch.bool)
        for i, s in enumerate(samples):
            found = s.meta.get("targets")
            if found:
                labelled[i] = True
                for label, score in found["labels"].items():
                    if label in self.label_index:
                        targets[i, self.label_index[label]] = score
        return {"label_targets": targets, "labelled": labelled}


def mel_on_device(batch: dict, n_mels: int) -> dict:
    """A batch whose audio came as waveforms (data.mel_on_device), with its
    ``mel`` computed where the waveforms are (the training device): the same
    features the loader would have made, on the accelerator's time instead of
    the loader workers' CPU time. Other batches pass through unchanged."""
    if "wave" not in batch:
        return batch
    batch = dict(batch)
    wave, wave_len = batch.pop("wave"), batch.pop("wave_len")
    batch["mel"] = log_mel_batch(wave, wave_len, n_mels, int(batch["mel_len"].max()))
    return batch
