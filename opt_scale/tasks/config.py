"""Typed configuration of the pretext tasks: weights and probabilities.

Masks, negatives and labels are drawn in the loader workers from these
values (see :mod:`opt_scale.data.masking`); the loss heads read the weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from opt_scale.utils.config_tools import require

MATCHING_CLASSES = ("image_audio_swapped", "image_swapped", "audio_swapped",
                    "image_and_audio_swapped_apart", "matched")
TASK_NAMES = ("mlm", "mvm", "mam", "dtr", "dir", "matching", "contrastive", "label")
MODALITY_NAMES = ("text", "image", "audio")
SCHEDULES = ("sum", "sample")
DTR_MEMORIES = ("pretrain", "image", "audio", "both")


@dataclass
class MLMConfig:
    weight: float = 1.0          # loss weight (sum schedule) or draw weight (sample schedule); 0: off
    prob: float = 0.15           # share of text tokens masked
    replace_mask: float = 0.8    # BERT 80/10/10: [mask] / random token / unchanged
    replace_random: float = 0.1  # share of the chosen tokens replaced by a random ordinary piece

    def validate(self) -> None:
        require(0 < self.prob < 1, "tasks.mlm.prob", "must be in (0, 1)")
        require(self.replace_mask + self.replace_random <= 1, "tasks.mlm.replace_random",
                "replace_mask + replace_random must be <= 1")


@dataclass
class ModalityMaskConfig:
    prob: float = 0.3            # each modality masked whole, never all three

    def validate(self) -> None:
        require(0 <= self.prob < 1, "tasks.modality_mask.prob", "must be in [0, 1)")


@dataclass
class MatchingConfig:
    weight: float = 1.0          # loss weight of the 5-way matching head; 0: off
    # Probabilities of the five classes, in the order of MATCHING_CLASSES.
    class_probs: tuple[float, ...] = (0.2, 0.2, 0.2, 0.2, 0.2)
    # Share of matching samples shown with one modality left out (label
    # reduced to what the remaining pair can tell): teaches the head to judge
    # pairs, which two-modality retrieval (text->image, ...) needs.
    pair_prob: float = 0.3
    # Negatives drawn in proportion to softmax(similarity) of the contrastive
    # embeddings, over the whole global batch (ALBEF/BLIP); false: uniformly
    # among the other samples (random negatives teach little once colour alone
    # tells most of them apart).
    hard_negatives: bool = True
    # The head also reads the cosines of the shown modalities' contrastive
    # embeddings (see tasks/heads.py MatchingHead); false: [CLS] alone, as the paper.
    similarity_features: bool = True

    def validate(self) -> None:
        require(0 <= self.pair_prob < 1, "tasks.matching.pair_prob", "must be in [0, 1)")
        require(len(self.class_probs) == 5, "tasks.matching.class_probs", "needs five probabilities")
        require(abs(sum(self.class_probs) - 1) < 1e-6 and min(self.class_probs) >= 0,
                "tasks.matching.class_probs", f"must be non-negative and sum to 1, got {self.class_probs}")


@dataclass
class MVMConfig:
    """Masked vision modelling: predict the VQ code of each masked patch."""
    weight: float = 1.0          # loss weight of masked patch prediction (VQ codes); 0: off
    prob: float = 0.15           # share of patches masked
    regress_weight: float = 0.0  # optional L2 regression of the masked patches' pixels, added to the MVM loss
                                 # (so tasks.mvm.weight scales it too)

    def validate(self) -> None:
        require(0 < self.prob < 1, "tasks.mvm.prob", "must be in (0, 1)")
        require(self.regress_weight >= 0, "tasks.mvm.regress_weight", "must be >= 0")
        require(not (self.regress_weight > 0 and self.weight == 0), "tasks.mvm.regress_weight",
                "is scaled by tasks.mvm.weight, which is 0: the regression would never train")


@dataclass
class MAMConfig:
    """Masked audio modelling over subsampled log-mel tokens."""
    weight: float = 1.0          # loss weight of masked audio-token prediction; 0: off
    prob: float = 0.15           # share of audio tokens masked
    temperature: float = 0.1     # InfoNCE: positive = the true token feature, negatives = other masked tokens
    l2_weight: float = 0.0       # optional L2 regression of the true token feature

    def validate(self) -> None:
        require(0 < self.prob < 1, "tasks.mam.prob", "must be in (0, 1)")
        require(self.temperature > 0, "tasks.mam.temperature", "must be positive")


@dataclass
class DTRConfig:
    """Text reconstruction by the text decoder, from a memory with no text in it.

    Of image and audio, as the public OPT code: the image dropped whole with
    ``drop_prob`` (caption from speech), else the audio with ``drop_prob``
    (caption from the image: the captioning condition), else both shown
    (unmasked; see tasks/pretrainer.py)."""
    weight: float = 1.0          # loss weight of text reconstruction by the text decoder; 0: off
    # 0.5: half the rows caption from the image alone, half from speech alone.
    # With speech in the memory the decoder transcribes it, and the image
    # teaches little; on the demo (220 steps) image-only captions named the
    # shape right 36% of the time at 0.5 against 25% at 0.3, all else equal.
    drop_prob: float = 0.5
    # What the memory shows: "pretrain" (the drop_prob draw above), or always
    # "image" (captioning), "audio" (speech recognition) or "both".
    memory: str = "pretrain"

    def validate(self) -> None:
        require(0 <= self.drop_prob <= 0.5, "tasks.dtr.drop_prob", "must be in [0, 0.5] (two modalities drop)")
        require(self.memory in DTR_MEMORIES, "tasks.dtr.memory",
                f"must be one of {', '.join(DTR_MEMORIES)}, got {self.memory!r}")


@dataclass
class DIRConfig:
    """Image reconstruction: the image decoder predicts the VQ codes from a
    memory with no image in it (text or audio dropped whole with
    ``drop_prob`` each, as for DTR; unlike DTR left at 0.3, not measured)."""
    weight: float = 1.0          # loss weight of image reconstruction (VQ codes) by the image decoder; 0: off
    drop_prob: float = 0.3       # probability each of text and audio is dropped whole from its memory

    def validate(self) -> None:
        require(0 <= self.drop_prob <= 0.5, "tasks.dir.drop_prob", "must be in [0, 0.5] (two modalities drop)")


@dataclass
class ContrastiveConfig:
    """Alignment of the towers' pooled embeddings (InfoNCE); see tasks/contrastive.py."""
    weight: float = 1.0          # loss weight of the pairwise InfoNCE alignment; 0: off
    dim: int = 128               # embedding width of the projections
    # How a tower's tokens become one vector. "max" (feature-wise over the
    # tokens): an attribute seen anywhere, a shape in one corner or a word
    # among 60 audio tokens, sets its features; supervised probes of the
    # towers learnt shape and spoken colour words 2-4x faster than with
    # "mean" (which dilutes them in background tokens).
    pool: str = "max"
    # Negatives from every rank: embeddings all-gathered with gradients (open_clip's gather_with_grad).
    gather: bool = True
    # Each rank scores only its own rows against all columns (open_clip's
    # local_loss): same loss and gradients, 1/world of the logits.
    local_loss: bool = False
    init_temperature: float = 0.07  # the learnable temperature's start (open_clip: 0.07)
    max_logit_scale: float = 100.0  # 1 / the lowest temperature the learnable scale may reach

    def validate(self) -> None:
        require(self.dim > 0, "tasks.contrastive.dim", "must be positive")
        require(self.pool in ("max", "mean"), "tasks.contrastive.pool", f"must be max or mean, got {self.pool!r}")
        require(0 < self.init_temperature < 1, "tasks.contrastive.init_temperature", "must be in (0, 1)")
        require(self.max_logit_scale >= 1 / self.init_temperature, "tasks.contrastive.max_logit_scale",
                f"must be >= 1 / init_temperature = {1 / self.init_temperature:.1f}")


@dataclass
class LabelConfig:
    """Labels predicted from the fused or pooled inputs: the downstream
    ``vqa`` and ``classify`` tasks (``opt-train --task``), off in pre-training.

    Targets are soft scores over ``names`` (the vocabulary ``data.labels``
    names, filled in at the start of a run): VQA's answer scores, or one or
    several classes of a sample (see data_prep/labelled.py)."""
    weight: float = 0.0          # loss weight of the label head; 0: off (pre-training)
    modalities: tuple[str, ...] = ("text", "image")  # what the head sees of each sample
    # "cls": the cross-modal encoder's [CLS] over the shown modalities (VQA, as
    # the paper); "pooled": each shown tower's pooled output (tasks.contrastive.pool),
    # concatenated: what a linear probe of the towers reads.
    features: str = "cls"
    head: str = "mlp"            # "mlp" (hidden x2, GELU, LayerNorm: UNITER/OPT's VQA head) or "linear"
    # "bce": independent sigmoid per label against the soft scores (VQA,
    # multi-label); "ce": softmax over the labels (one class per sample; its
    # target the normalised scores).
    loss: str = "bce"
    # Only the head trains; every other weight stays as init_from gave it
    # (the paper's frozen-model linear classification).
    frozen: bool = False
    # The new head learns at lr x lr_mult, the pre-trained weights under it at
    # lr. UNITER's VQA head uses x10; on the demo's VQA (150 steps from the
    # demo model) x10 lowered held-out accuracy 47.9 -> 41.2%, so 1 here, and
    # 10 only for classify's lone linear layer (a frozen probe: 26.6 -> 37.5%).
    lr_mult: float = 1.0
    names: tuple[str, ...] = ()  # the label vocabulary; filled from data.labels

    def validate(self) -> None:
        require(self.features in ("cls", "pooled"), "tasks.label.features",
                f"must be cls or pooled, got {self.features!r}")
        require(self.head in ("mlp", "linear"), "tasks.label.head", f"must be mlp or linear, got {self.head!r}")
        require(self.loss in ("bce", "ce"), "tasks.label.loss", f"must be bce or ce, got {self.loss!r}")
        require(bool(self.modalities) and set(self.modalities) <= set(MODALITY_NAMES)
                and len(set(self.modalities)) == len(self.modalities), "tasks.label.modalities",
                f"must be distinct names among {', '.join(MODALITY_NAMES)}, got {self.modalities!r}")
        require(len(set(self.names)) == len(self.names), "tasks.label.names", "has a label twice")
        require(self.lr_mult > 0, "tasks.label.lr_mult", f"must be positive, got {self.lr_mult}")


@dataclass
class TasksConfig:
    # "sum": every task's loss every step (weighted). "sample": one task per
    # step, drawn in proportion to the weights from (data.seed, step), as the
    # public OPT code does; every rank draws the same task.
    schedule: str = "sum"
    mlm: MLMConfig = field(default_factory=MLMConfig)
    mvm: MVMConfig = field(default_factory=MVMConfig)
    mam: MAMConfig = field(default_factory=MAMConfig)
    modality_mask: ModalityMaskConfig = field(default_factory=ModalityMaskConfig)
    dtr: DTRConfig = field(default_factory=DTRConfig)
    dir: DIRConfig = field(default_factory=DIRConfig)
    matching: MatchingConfig = field(default_factory=MatchingConfig)
    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig)
    label: LabelConfig = field(default_factory=LabelConfig)

    def validate(self) -> None:
        require(self.schedule in SCHEDULES, "tasks.schedule",
                f"must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        weights = self.weights()
        for name, weight in weights.items():
            require(weight >= 0, f"tasks.{name}.weight", f"must be >= 0, got {weight}")
        require(sum(weights.values()) > 0, "tasks.*.weight", "every task weight is 0: nothing to train")

    def weights(self) -> dict[str, float]:
        return {name: getattr(self, name).weight for name in TASK_NAMES}

    @property
    def needs_vq(self) -> bool:
        return self.mvm.weight > 0 or self.dir.weight > 0
