"""OPTPretrainer: the model plus every pretext task, one forward per step.

Each step runs the towers once over two copies of the batch (masked inputs
and clean inputs), then the cross-modal encoder once over four views:

* *masked*: MLM-masked text, MVM-masked patches, MAM-masked audio (masked at
  the input: hidden pixels and log-mel frames), whole modalities dropped with
  ``tasks.modality_mask.prob``; feeds MLM, MVM and MAM;
* *dtr*: clean image and audio, the text dropped: the text decoder's memory
  (its target is never in what it attends to), each of the two others
  dropped whole as ``tasks.dtr.drop_prob`` says. Clean, unlike the public
  code's 15% masked: patch masking here hides pixels, and a small shape
  under a hidden patch would leave the caption unanswerable; it is also the
  condition captioning runs in;
* *dir*: likewise, clean text and audio, the image dropped: the image decoder's memory;
* *matching*: clean text with the image and/or audio of hard negatives from
  the global batch (:mod:`.matching`), for the 5-way [CLS] head;
* *label* (the downstream vqa and classify tasks only, :mod:`.labels`): the
  clean modalities ``tasks.label.modalities`` names, for the label head
  (read from the [CLS], or from the towers' pooled outputs without a fused pass).

The clean towers' pooled outputs also feed the contrastive task
(:mod:`.contrastive`), gathered across ranks.

Every tower, decoder and head runs on every rank every step, whatever the
batch holds and whatever ``tasks.schedule`` trains (a view no active task
reads is one dummy row, its loss weighted 0), so ZeRO-3's parameter gathers
stay in lock-step. The frozen VQ tokenizer is held outside the module tree:
replicated on every rank, never partitioned, optimised or checkpointed.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from opt_scale.data.masking import AUDIO, IMAGE, TEXT
from opt_scale.model.config import ModelConfig
from opt_scale.model.decoders import IGNORE_INDEX
from opt_scale.model.layers import Linear, enable_activation_checkpointing
from opt_scale.model.opt import OPTModel
from opt_scale.model.registry import part_class
from opt_scale.model.vq import VQTokenizer

from .config import TasksConfig
from .contrastive import POOLS, ContrastiveHead
from .gather import gather_rows
from .heads import MaskedTokenHead, MatchingHead, pair_cosines
from .labels import LabelHead
from .mam import MAMHead
from .matching import content_blind_accuracy, mine_partners
from .schedule import TaskSchedule, ViewRows

Tower = tuple[torch.Tensor, torch.Tensor]  # tokens [B, L, D], valid [B, L]


def cat_rows(*parts: Tower) -> Tower:
    """Concatenate tower outputs along the batch, padding the token axis to the longest."""
    length = max(t.shape[1] for t, _ in parts)
    tokens = torch.cat([F.pad(t, (0, 0, 0, length - t.shape[1])) for t, _ in parts])
    valid = torch.cat([F.pad(v, (0, length - v.shape[1])) for _, v in parts])
    return tokens, valid


def shown_pairs(keep: torch.Tensor) -> torch.Tensor:
    """[B, 3] bool: (text, image), (text, audio), (image, audio) both shown."""
    return torch.stack([keep[:, TEXT] & keep[:, IMAGE], keep[:, TEXT] & keep[:, AUDIO],
                        keep[:, IMAGE] & keep[:, AUDIO]], dim=1)


def ignore_unless(labels: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Labels of the rows whose modality is shown; IGNORE_INDEX elsewhere."""
    return labels.masked_fill(~keep[:, None], IGNORE_INDEX)


def sample_modalities(batch: dict) -> torch.Tensor:
    """[B, 3] bool: the modalities each sample has (a batch collated before
    pairs existed has all three, audio unless it is empty)."""
    if "present" in batch:
        return batch["present"]
    present = torch.ones(len(batch["mel_len"]), 3, dtype=torch.bool, device=batch["mel_len"].device)
    present[:, AUDIO] = batch["mel_len"] > 0
    return present


def label_targets(batch: dict, rows: int, labels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``rows`` samples' soft label scores [rows, labels] and which
    of them have labels [rows] (a batch without any: zeros, none scored)."""
    if "label_targets" in batch:
        return batch["label_targets"][:rows], batch["labelled"][:rows]
    device = batch["text_ids"].device
    return torch.zeros(rows, labels, device=device), torch.zeros(rows, dtype=torch.bool, device=device)


def _local_rows(x: torch.Tensor, with_grad: bool = True) -> tuple[torch.Tensor, None]:
    return x, None


class OPTPretrainer(nn.Module):
    def __init__(self, model_cfg: ModelConfig, tasks_cfg: TasksConfig, vq: VQTokenizer | None = None,
                 seed: int = 0):
        super().__init__()
        self.tasks = tasks_cfg
        self.model_cfg = model_cfg
        self.schedule = TaskSchedule(tasks_cfg, seed)
        self.matching_blind = content_blind_accuracy(tasks_cfg.matching)
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
        self.matching = MatchingHead(d, similarity_features=tasks_cfg.matching.similarity_features)
        self.contrastive = ContrastiveHead(d, tasks_cfg.contrastive)
        # Only a model with a label vocabulary (vqa, classify) has the head: pre-trained checkpoints stay as they were.
        label = tasks_cfg.label
        self.label = (LabelHead(d if label.features == "cls" else d * len(label.modalities), label)
                      if label.names else None)
        self._vq = [vq]  # a list hides it from nn.Module: not partitioned, not optimised, not saved
        if model_cfg.activation_checkpointing:
            enable_activation_checkpointing(self)

    def lr_multipliers(self) -> dict[str, float]:
        """Parameter-name prefix -> learning-rate factor (engine/optim.py param_groups)."""
        return {"label.": self.tasks.label.lr_mult} if self.label is not None else {}

    @property
    def vq(self) -> VQTokenizer | None:
        return self._vq[0]

    def forward(self, batch: dict) -> dict:
        B = batch["text_ids"].shape[0]
        weights = self.schedule.weights(int(batch.get("step", 0)))
        n = ViewRows.plan(B, {k for k, w in weights.items() if w > 0})
        masked, clean, clean_features = self._towers(batch, n)
        losses, metrics = {}, {}

        present = sample_modalities(batch)[:n.clean_towers]  # image-text / audio-text pairs lack one
        losses["contrastive"], emb, present_all, start, scale = self.contrastive(
            clean, present, batch["image_uid"][:n.clean_towers])
        metrics["contrastive/logit_scale"] = scale

        matching_view, similarities = self._matching_view(batch, n, clean, emb, present_all, start, scale)
        clean_view = (clean["text"], clean["image"], clean["audio"])
        views = [(masked, batch["modality_keep"], n.masked), (clean_view, batch["dtr_keep"], n.dtr),
                 (clean_view, batch["dir_keep"], n.dir), (matching_view, batch["match_keep"], n.matching)]
        if self.label is not None and self.tasks.label.features == "cls":
            views.append((clean_view, self.label_keep(batch), n.label))
        towers = tuple(cat_rows(*((tower[m][0][:rows], tower[m][1][:rows]) for tower, _, rows in views))
                       for m in range(3))
        keep = torch.cat([k[:rows] for _, k, rows in views])
        out = self.model.fuse(towers, keep)
        bounds = torch.tensor([0] + [rows for _, _, rows in views]).cumsum(0).tolist()
        rows_of = lambda v: slice(bounds[v], bounds[v + 1])  # noqa: E731

        codes = self._vq_codes(batch["pixels"][:max(n.masked, n.dir)])
        self._token_losses(batch, out, rows_of(0), codes, clean_features, losses, metrics)
        self._decoder_losses(batch, out, rows_of(1), rows_of(2), codes, losses)
        m = rows_of(3)
        losses["matching"], metrics["acc/matching"], _ = self.matching(
            out.cls[m], batch["match_label"][:n.matching], similarities, shown_pairs(batch["match_keep"][:n.matching]))
        metrics["acc/matching_blind"] = torch.tensor(self.matching_blind)
        if self.label is not None:
            features = out.cls[rows_of(4)] if self.tasks.label.features == "cls" else \
                self.pooled_features(clean, self.label_keep(batch)[:n.label], n.label)
            targets, scored = label_targets(batch, n.label, len(self.tasks.label.names))
            losses["label"], metrics["acc/label"], _ = self.label(features, targets, scored)

        total = sum(weights[k] * v for k, v in losses.items())
        shown = {k: v for k, v in losses.items() if weights[k] > 0}  # sample: only the trained task is logged
        metrics = {k: v for k, v in metrics.items() if not k.startswith("acc/matching") or weights["matching"] > 0}
        if weights["mam"] == 0:
            metrics.pop("acc/mam", None)
        if weights["label"] == 0:
            metrics.pop("acc/label", None)
        return {"loss": total, **{f"loss/{k}": v for k, v in shown.items()}, **metrics}

    # -- the label view (vqa, classify) ----------------------------------

    def label_keep(self, batch: dict) -> torch.Tensor:
        """[B, 3] bool: the modalities tasks.label.modalities names, where the sample has them."""
        wanted = torch.tensor([m in self.tasks.label.modalities for m in ("text", "image", "audio")],
                              device=batch["text_ids"].device)
        return sample_modalities(batch) & wanted

    def pooled_features(self, clean: dict, keep: torch.Tensor, rows: int) -> torch.Tensor:
        """The shown towers' pooled outputs, concatenated in tasks.label.modalities' order (zeros where absent)."""
        pool = POOLS[self.tasks.contrastive.pool]
        index = {"text": TEXT, "image": IMAGE, "audio": AUDIO}
        return torch.cat([pool(clean[m][0][:rows], clean[m][1][:rows]) * keep[:, index[m], None].to(clean[m][0].dtype)
                          for m in self.tasks.label.modalities], dim=1)

    def predict_labels(self, text_ids, text_len, pixels, mel, mel_len, present: torch.Tensor) -> torch.Tensor:
        """Label logits [B, labels] of unmasked inputs (opt-eval vqa / classify)."""
        towers = self.model.encode_towers(text_ids, text_len, pixels, mel, mel_len)
        batch = {"text_ids": text_ids, "present": present}
        keep = self.label_keep(batch)
        if self.tasks.label.features == "cls":
            features = self.model.fuse(towers, keep).cls
        else:
            clean = dict(zip(("text", "image", "audio"), towers))
            features = self.pooled_features(clean, keep, len(text_ids))
        return self.label(features)

    # -- parts of the step ----------------------------------------------

    def _towers(self, batch: dict, n: ViewRows):
        """Tower outputs on masked inputs (n.masked_towers rows) and on clean
        inputs (n.clean_towers rows), in one call per tower; and the clean
        audio features (the MAM targets)."""
        Rm, Rc = n.masked_towers, n.clean_towers
        cat = lambda key: torch.cat([batch[key][:Rm], batch[key][:Rc]])  # noqa: E731
        audio = self.model.audio
        mel = torch.cat([audio.hide_frames(batch["mel"][:Rm], batch["mam_mask"][:Rm]), batch["mel"][:Rc]])
        features = audio.embed(mel, cat("mel_len"))
        towers = self.model.encode_towers(
            torch.cat([batch["mlm_input_ids"][:Rm], batch["text_ids"][:Rc]]), cat("text_len"), cat("pixels"),
            None, cat("mel_len"),
            patch_mask=torch.cat([batch["mvm_mask"][:Rm], torch.zeros_like(batch["mvm_mask"][:Rc])]),
            audio_mask=torch.cat([batch["mam_mask"][:Rm], torch.zeros_like(batch["mam_mask"][:Rc])]),
            audio_features=features)
        masked = tuple((t[:Rm], v[:Rm]) for t, v in towers)
        clean = {m: (t[Rm:], v[Rm:]) for m, (t, v) in zip(("text", "image", "audio"), towers)}
        return masked, clean, features[Rm:].detach()

    def _matching_view(self, batch, n: ViewRows, clean: dict, emb, present_all, start, scale) -> tuple:
        """Clean text with the image and audio rows the 5-way classes ask for,
        taken from the global batch (gathered with gradients); and the cosines
        of the three pairs of contrastive embeddings it shows."""
        rows = n.matching
        # Partners come from the candidates the contrastive embeddings cover:
        # the global batch, or this rank's rows with contrastive.gather off.
        gather = gather_rows if self.tasks.contrastive.gather else _local_rows
        uids, _ = gather(batch["image_uid"][:n.clean_towers], with_grad=False)
        partners = mine_partners({k: v.detach() for k, v in emb.items()}, present_all, uids, start,
                                 batch["match_class"][:rows], batch["match_keep"][:rows], batch["match_u"][:rows],
                                 scale, self.tasks.matching.hard_negatives)
        image = tuple(gather(x)[0] for x in clean["image"])
        audio = tuple(gather(x)[0] for x in clean["audio"])
        view = ((clean["text"][0][:rows], clean["text"][1][:rows]),
                (image[0][partners.image], image[1][partners.image]),
                (audio[0][partners.audio], audio[1][partners.audio]))
        similarities = pair_cosines(emb["text"][start:start + rows], emb["image"][partners.image],
                                    emb["audio"][partners.audio])
        return view, similarities

    def _token_losses(self, batch, out, rows: slice, codes, clean_features, losses: dict, metrics: dict) -> None:
        R = rows.stop - rows.start
        keep = batch["modality_keep"][:R]
        losses["mlm"], _ = self.mlm(out.text[rows], ignore_unless(batch["mlm_labels"][:R], keep[:, TEXT]))
        mvm_mask = batch["mvm_mask"][:R] & keep[:, IMAGE:IMAGE + 1]
        mvm_labels = torch.where(mvm_mask, codes[:R], torch.full_like(codes[:R], IGNORE_INDEX))
        losses["mvm"], _ = self.mvm(out.image[rows], mvm_labels)
        if self.mvm_regress is not None:
            target = self.model.vision.patches(batch["pixels"][:R])[mvm_mask]
            pred = self.mvm_regress(out.image[rows][mvm_mask]).float()
            # No masked patch on this rank (every image dropped): a zero that still
            # reaches mvm_regress, so every rank reduces the same gradients.
            regress = F.mse_loss(pred, target) if len(pred) else pred.sum() * 0.0
            losses["mvm"] = losses["mvm"] + self.tasks.mvm.regress_weight * regress
        mam_mask = batch["mam_mask"][:R] & keep[:, AUDIO:AUDIO + 1]
        audio = out.audio[rows][:, :mam_mask.shape[1]]
        losses["mam"], metrics["acc/mam"], _ = self.mam(audio, clean_features[:R], mam_mask)

    def _decoder_losses(self, batch, out, dtr: slice, dir_: slice, codes, losses: dict) -> None:
        R = dtr.stop - dtr.start
        text_ids, text_len = batch["text_ids"][:R], batch["text_len"][:R]
        beyond = torch.arange(text_ids.shape[1] - 1, device=text_ids.device)[None] >= (text_len[:, None] - 1)
        # A pair whose one other modality was dropped leaves the decoder a
        # memory of [CLS] alone: nothing to caption from, so no target.
        beyond = beyond | ~batch["dtr_keep"][:R].any(1, keepdim=True)
        targets = text_ids[:, 1:].masked_fill(beyond, IGNORE_INDEX)
        losses["dtr"], _ = self.text_decoder(text_ids[:, :-1], targets, out.memory[dtr], out.memory_lengths[dtr])
        R = dir_.stop - dir_.start
        bos = torch.full_like(codes[:R, :1], self.image_decoder.bos)
        no_image = ~sample_modalities(batch)[:R, IMAGE:IMAGE + 1] | ~batch["dir_keep"][:R].any(1, keepdim=True)
        losses["dir"], _ = self.image_decoder(torch.cat([bos, codes[:R, :-1]], 1),
                                              codes[:R].masked_fill(no_image, IGNORE_INDEX),
                                              out.memory[dir_], out.memory_lengths[dir_])

    def _vq_codes(self, pixels: torch.Tensor) -> torch.Tensor:
        """MVM/DIR targets from the frozen tokenizer (zeros when both are off)."""
        if self.vq is None:
            if self.tasks.needs_vq:
                raise RuntimeError("MVM/DIR need the frozen VQ tokenizer (model.vq.checkpoint)")
            return torch.zeros(pixels.shape[0], self.model_cfg.vision.num_patches, dtype=torch.long,
                               device=pixels.device)
        vq = self.vq.to(pixels.device)
        return vq.codes(pixels)
