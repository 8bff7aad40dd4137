"""Typed configuration of the pretext tasks: weights and probabilities.

Masks, negatives and labels are drawn in the loader workers from these
values (see :mod:`opt_scale.data.masking`); the loss heads read the weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from opt_scale.utils.config_tools import require

MATCHING_CLASSES = ("image_audio_swapped", "image_swapped", "audio_swapped",
                    "image_and_audio_swapped_apart", "matched")


@dataclass
class MLMConfig:
    weight: float = 1.0
    prob: float = 0.15           # share of text tokens masked
    replace_mask: float = 0.8    # BERT 80/10/10: [mask] / random token / unchanged
    replace_random: float = 0.1

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
    weight: float = 1.0
    # Probabilities of the five classes, in the order of MATCHING_CLASSES.
    class_probs: tuple[float, ...] = (0.2, 0.2, 0.2, 0.2, 0.2)
    # Share of matching samples shown with one modality left out (label
    # reduced to what the remaining pair can tell): teaches the head to judge
    # pairs, which two-modality retrieval (text->image, ...) needs.
    pair_prob: float = 0.3

    def validate(self) -> None:
        require(0 <= self.pair_prob < 1, "tasks.matching.pair_prob", "must be in [0, 1)")
        require(len(self.class_probs) == 5, "tasks.matching.class_probs", "needs five probabilities")
        require(abs(sum(self.class_probs) - 1) < 1e-6 and min(self.class_probs) >= 0,
                "tasks.matching.class_probs", f"must be non-negative and sum to 1, got {self.class_probs}")


@dataclass
class MVMConfig:
    """Masked vision modelling: predict the VQ code of each masked patch."""
    weight: float = 1.0
    prob: float = 0.15
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
    weight: float = 1.0
    prob: float = 0.15
    temperature: float = 0.1     # InfoNCE: positive = the true token feature, negatives = other masked tokens
    l2_weight: float = 0.0       # optional L2 regression of the true token feature

    def validate(self) -> None:
        require(0 < self.prob < 1, "tasks.mam.prob", "must be in (0, 1)")
        require(self.temperature > 0, "tasks.mam.temperature", "must be positive")


@dataclass
class DTRConfig:
    """Denoising text reconstruction by the text decoder."""
    weight: float = 1.0


@dataclass
class DIRConfig:
    """Image reconstruction: the image decoder predicts the VQ codes."""
    weight: float = 1.0


@dataclass
class ContrastiveConfig:
    """Alignment of the towers' pooled embeddings (InfoNCE); see tasks/contrastive.py."""
    weight: float = 1.0
    dim: int = 128

    def validate(self) -> None:
        require(self.dim > 0, "tasks.contrastive.dim", "must be positive")


@dataclass
class TasksConfig:
    mlm: MLMConfig = field(default_factory=MLMConfig)
    mvm: MVMConfig = field(default_factory=MVMConfig)
    mam: MAMConfig = field(default_factory=MAMConfig)
    modality_mask: ModalityMaskConfig = field(default_factory=ModalityMaskConfig)
    dtr: DTRConfig = field(default_factory=DTRConfig)
    dir: DIRConfig = field(default_factory=DIRConfig)
    matching: MatchingConfig = field(default_factory=MatchingConfig)
    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig)

    @property
    def needs_vq(self) -> bool:
        return self.mvm.weight > 0 or self.dir.weight > 0
