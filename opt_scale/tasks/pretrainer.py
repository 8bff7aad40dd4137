"""OPTPretrainer: the model plus every pretext task, one forward per step.

Each step encodes two views of the batch in one pass (batch dimension 2B):

* the *masked* view: MLM-masked text, whole modalities dropped with
  ``tasks.modality_mask.prob``; feeds the token-level losses;
* the *matching* view: clean inputs whose image/audio are swapped with other
  samples' according to the 5-way matching label; feeds the [CLS] head.

All towers and heads run on every rank every step, whatever the batch holds,
so ZeRO-3's parameter gathers stay in lock-step across ranks.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from opt_scale.model.config import ModelConfig
from opt_scale.model.opt import OPTModel

from .config import TasksConfig
from .heads import MaskedTokenHead, MatchingHead


class OPTPretrainer(nn.Module):
    def __init__(self, model_cfg: ModelConfig, tasks_cfg: TasksConfig):
        super().__init__()
        self.tasks = tasks_cfg
        self.model = OPTModel(model_cfg)
        d = model_cfg.cross.hidden
        if model_cfg.text.hidden != d:
            raise ValueError("model.text.hidden must equal model.cross.hidden: the MLM head ties the text embedding")
        self.mlm = MaskedTokenHead(d, model_cfg.text.vocab_size, tied_weight=self.model.text.tokens.weight)
        self.matching = MatchingHead(d)

    def forward(self, batch: dict) -> dict:
        B = batch["text_ids"].shape[0]
        cat = lambda a, b: torch.cat([a, b], dim=0)  # noqa: E731
        towers = self.model.encode_towers(
            cat(batch["mlm_input_ids"], batch["text_ids"]),
            cat(batch["text_len"], batch["text_len"]),
            cat(batch["pixels"], batch["pixels"]),
            cat(batch["mel"], batch["mel"]),
            cat(batch["mel_len"], batch["mel_len"]),
        )
        towers = self._swap_for_matching(towers, B, batch["match_image_src"], batch["match_audio_src"])
        keep = cat(batch["modality_keep"], torch.ones_like(batch["modality_keep"]))
        out = self.model.fuse(towers, keep)

        mlm_loss, mlm_count = self.mlm(out.text[:B], batch["mlm_labels"])
        match_loss, match_acc, _ = self.matching(out.cls[B:], batch["match_label"])
        total = self.tasks.mlm.weight * mlm_loss + self.tasks.matching.weight * match_loss
        return {"loss": total, "loss/mlm": mlm_loss, "loss/matching": match_loss,
                "acc/matching": match_acc, "count/mlm": mlm_count}

    @staticmethod
    def _swap_for_matching(towers, B, image_src, audio_src):
        """Second half of the batch: take image/audio tower outputs of other samples."""
        text, (image, iv), (audio, av) = towers
        image = torch.cat([image[:B], image[B:][image_src]])
        iv = torch.cat([iv[:B], iv[B:][image_src]])
        audio = torch.cat([audio[:B], audio[B:][audio_src]])
        av = torch.cat([av[:B], av[B:][audio_src]])
        return text, (image, iv), (audio, av)
