"""OPTPretrainer: the model plus every pretext task, one forward per step.

Each step encodes two views of the batch in one pass (batch dimension 2B):

* the *masked* view: MLM-masked text, MVM-masked patches, MAM-masked audio
  tokens, whole modalities dropped with ``tasks.modality_mask.prob``; feeds
  the token-level losses (MLM, MVM, MAM) and the decoders (DTR, DIR);
* the *matching* view: clean inputs whose image/audio are swapped with other
  samples' according to the 5-way matching label (for ``pair_prob`` of the
  samples one modality is left out and the label reduced to the remaining
  pair); feeds the [CLS] head. The towers' clean outputs also feed the
  contrastive alignment task.

All towers, decoders and heads run on every rank every step, whatever the
batch holds (a modality that is absent or dropped is a masked dummy), so
ZeRO-3's parameter gathers stay in lock-step across ranks. The frozen VQ
tokenizer is held outside the module tree: it is replicated on every rank,
never partitioned, never optimised, never checkpointed with the model.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from opt_scale.model.config import ModelConfig
from opt_scale.model.decoders import IGNORE_INDEX
from opt_scale.model.layers import Linear
from opt_scale.model.opt import OPTModel
from opt_scale.model.registry import part_class
from opt_scale.model.vq import VQTokenizer

from .config import TasksConfig
from .contrastive import ContrastiveHead
from .heads import MaskedTokenHead, MatchingHead
from .mam import MAMHead


class OPTPretrainer(nn.Module):
    def __init__(self, model_cfg: ModelConfig, tasks_cfg: TasksConfig, vq: VQTokenizer | None = None):
        super().__init__()
        self.tasks = tasks_cfg
        self.model_cfg = model_cfg
        self.model = OPTModel(model_cfg)
        d = model_cfg.cross.hidden
        self.mlm = MaskedTokenHead(d, model_cfg.text.vocab_size, tied_weight=self.model.text.tokens.weight)
        self.mvm = MaskedTokenHead(d, model_cfg.vq.codebook_size)
        patch_pixels = 3 * model_cfg.vision.patch_size ** 2
        self.mvm_regress = Linear(d, patch_pixels) if tasks_cfg.mvm.regress_weight else None
        self.mam = MAMHead(d, model_cfg.audio.hidden, tasks_cfg.mam.temperature, tasks_cfg.mam.l2_weight)
        self.text_decoder = part_class("text_decoder", model_cfg.text_decoder.kind)(
            model_cfg.text_decoder, model_cfg.text.vocab_size, model_cfg.text.max_len, d,
            label_smoothing=model_cfg.text_decoder.label_smoothing)
        self.image_decoder = part_class("image_decoder", model_cfg.image_decoder.kind)(
            model_cfg.image_decoder, model_cfg.vq.codebook_size + 1, model_cfg.vision.num_patches, d)
        self.matching = MatchingHead(d)
        self.contrastive = ContrastiveHead(d, tasks_cfg.contrastive.dim)
        self._vq = [vq]  # a list hides it from nn.Module: not partitioned, not optimised, not saved

    @property
    def vq(self) -> VQTokenizer | None:
        return self._vq[0]

    def forward(self, batch: dict) -> dict:
        B = batch["text_ids"].shape[0]
        cat = lambda a, b: torch.cat([a, b], dim=0)  # noqa: E731
        audio_features = self.model.audio.embed(batch["mel"], batch["mel_len"])
        towers = self.model.encode_towers(
            cat(batch["mlm_input_ids"], batch["text_ids"]),
            cat(batch["text_len"], batch["text_len"]),
            cat(batch["pixels"], batch["pixels"]),
            None,
            cat(batch["mel_len"], batch["mel_len"]),
            patch_mask=cat(batch["mvm_mask"], torch.zeros_like(batch["mvm_mask"])),
            audio_mask=cat(batch["mam_mask"], torch.zeros_like(batch["mam_mask"])),
            audio_features=cat(audio_features, audio_features),
        )
        clean = {m: (tokens[B:], valid[B:]) for m, (tokens, valid) in zip(("text", "image", "audio"), towers)}
        towers = self._swap_for_matching(towers, B, batch["match_image_src"], batch["match_audio_src"])
        keep = cat(batch["modality_keep"], batch["match_keep"])
        out = self.model.fuse(towers, keep)
        memory, memory_lengths = out.memory[:B], out.memory_lengths[:B]
        codes = self._vq_codes(batch["pixels"])
        t = self.tasks
        losses = {}

        losses["mlm"], _ = self.mlm(out.text[:B], batch["mlm_labels"])
        mvm_labels = torch.where(batch["mvm_mask"], codes, torch.full_like(codes, IGNORE_INDEX))
        losses["mvm"], _ = self.mvm(out.image[:B], mvm_labels)
        if self.mvm_regress is not None:
            target = self.model.vision.patches(batch["pixels"])[batch["mvm_mask"]]
            pred = self.mvm_regress(out.image[:B][batch["mvm_mask"]]).float()
            # No masked patch on this rank (every image dropped): a zero that still
            # reaches mvm_regress, so every rank reduces the same gradients.
            regress = F.mse_loss(pred, target) if len(pred) else pred.sum() * 0.0
            losses["mvm"] = losses["mvm"] + t.mvm.regress_weight * regress
        losses["mam"], mam_acc, _ = self.mam(out.audio[:B], audio_features.detach(), batch["mam_mask"])

        text_targets = batch["text_ids"][:, 1:].masked_fill(
            torch.arange(batch["text_ids"].shape[1] - 1, device=codes.device)[None] >= (batch["text_len"][:, None] - 1),
            IGNORE_INDEX)
        losses["dtr"], _ = self.text_decoder(batch["text_ids"][:, :-1], text_targets, memory, memory_lengths)
        bos = torch.full_like(codes[:, :1], self.image_decoder.bos)
        losses["dir"], _ = self.image_decoder(torch.cat([bos, codes[:, :-1]], 1), codes, memory, memory_lengths)

        losses["matching"], match_acc, _ = self.matching(out.cls[B:], batch["match_label"])
        has_audio = batch["mel_len"] > 0  # text and images are always there; a batch may lack audio
        present = torch.stack([torch.ones_like(has_audio), torch.ones_like(has_audio), has_audio], dim=1)
        losses["contrastive"] = self.contrastive(clean, present)
        weights = {"mlm": t.mlm.weight, "mvm": t.mvm.weight, "mam": t.mam.weight, "dtr": t.dtr.weight,
                   "dir": t.dir.weight, "matching": t.matching.weight, "contrastive": t.contrastive.weight}
        total = sum(weights[k] * v for k, v in losses.items())
        result = {"loss": total, **{f"loss/{k}": v for k, v in losses.items()},
                  "acc/matching": match_acc, "acc/mam": mam_acc}
        return result

    def _vq_codes(self, pixels: torch.Tensor) -> torch.Tensor:
        """MVM/DIR targets from the frozen tokenizer (zeros when both are off)."""
        if self.vq is None:
            if self.tasks.needs_vq:
                raise RuntimeError("MVM/DIR need the frozen VQ tokenizer (model.vq.checkpoint)")
            return torch.zeros(pixels.shape[0], self.model_cfg.vision.num_patches, dtype=torch.long,
                               device=pixels.device)
        vq = self.vq.to(pixels.device)
        return vq.codes(pixels)

    @staticmethod
    def _swap_for_matching(towers, B, image_src, audio_src):
        """Second half of the batch: take image/audio tower outputs of other samples."""
        text, (image, iv), (audio, av) = towers
        image = torch.cat([image[:B], image[B:][image_src]])
        iv = torch.cat([iv[:B], iv[B:][image_src]])
        audio = torch.cat([audio[:B], audio[B:][audio_src]])
        av = torch.cat([av[:B], av[B:][audio_src]])
        return text, (image, iv), (audio, av)
