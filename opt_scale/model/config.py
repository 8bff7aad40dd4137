"""Typed configuration of the OPT model, part by part.

Every tower carries its own transformer shape; the cross-modal encoder's
width is the common width the towers project into. ``kind`` fields pick the
implementation of a part from :mod:`opt_scale.model.registry`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from opt_scale.utils.config_tools import require


@dataclass
class TransformerShape:
    layers: int = 2              # transformer blocks
    hidden: int = 128            # model width
    heads: int = 4               # attention heads (hidden must divide by it)
    ffn: int = 512               # feed-forward width
    dropout: float = 0.1         # the public OPT code: 0.1 in the encoders (0.2 in the decoders, below)
    qk_norm: bool = False        # cosine attention with a learned per-head scale (layers.QKNorm); OPT: dot product

    def check(self, key: str) -> None:
        require(self.layers >= 0, f"{key}.layers", "must be >= 0")
        require(self.hidden > 0 and self.heads > 0, f"{key}.hidden", "hidden and heads must be positive")
        require(self.hidden % self.heads == 0, f"{key}.heads",
                f"hidden={self.hidden} is not divisible by heads={self.heads}")
        require(0.0 <= self.dropout < 1.0, f"{key}.dropout", "must be in [0, 1)")


@dataclass
class TextConfig(TransformerShape):
    """Text tower. ``layers=0`` is the paper's text encoder: word piece +
    position + modality embeddings and a LayerNorm, no transformer layers (the
    cross-modal encoder does all the contextualising)."""
    kind: str = "bert"           # implementation in opt_scale/model/registry.py (bert: the text tower)
    vocab_size: int = 0          # 0: taken from the tokenizer when the model is built
    max_len: int = 40            # tokens including [bos] and [eos]

    def validate(self) -> None:
        self.check("model.text")
        require(self.max_len >= 3, "model.text.max_len", "must be >= 3 ([bos] token [eos])")


STEMS = ("conv", "linear")
QUANTIZERS = ("fsq", "ema")


@dataclass
class VisionConfig(TransformerShape):
    kind: str = "vit"            # implementation (vit: patch tokens, no detector)
    image_size: int = 64         # pixels of the square input
    patch_size: int = 8          # pixels per patch token (a power of two for the conv stem)
    # How pixels become patch tokens. "linear": ViT's patchify (one linear map
    # per patch). "conv": log2(patch_size) 3x3 stride-2 convolutions (Xiao et
    # al. 2021, "Early convolutions help transformers see better"): edge and
    # corner detectors shared across positions, which is what tells a square
    # from a disc; on the demo data shape was at chance with "linear".
    stem: str = "conv"

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def validate(self) -> None:
        self.check("model.vision")
        require(self.image_size % self.patch_size == 0, "model.vision.patch_size",
                f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}")
        require(self.stem in STEMS, "model.vision.stem", f"must be one of {', '.join(STEMS)}, got {self.stem!r}")
        require(self.stem != "conv" or self.patch_size & (self.patch_size - 1) == 0, "model.vision.stem",
                f"conv needs a power-of-two patch_size (stride-2 convolutions), got {self.patch_size}")


@dataclass
class AudioConfig(TransformerShape):
    kind: str = "logmel_conv"    # implementation (logmel_conv: stride-2 convs over log-mel frames)
    n_mels: int = 80             # log-mel bands
    max_seconds: float = 6.0     # longer recordings are cropped in the loader
    conv_channels: int = 128     # channels of the convolutional subsampler
    conv_layers: int = 2         # each a stride-2 conv: 10 ms frames -> 40 ms tokens

    @property
    def max_frames(self) -> int:
        from opt_scale.data.features import frames_for_seconds
        return frames_for_seconds(self.max_seconds)

    def tokens_for_frames(self, frames: int) -> int:
        for _ in range(self.conv_layers):
            frames = (frames - 1) // 2 + 1
        return frames

    def validate(self) -> None:
        self.check("model.audio")
        require(self.n_mels == 80, "model.audio.n_mels", "OPT's audio front end uses 80 mel bins")
        require(self.max_seconds > 0, "model.audio.max_seconds", "must be positive")


@dataclass
class CrossConfig(TransformerShape):
    kind: str = "prenorm"        # implementation (prenorm transformer)
    # A max-pooled token per modality after [CLS] (see cross_encoder.py). Off:
    # on the demo (220 steps) it changed neither retrieval, matching nor
    # caption accuracy measurably.
    summary_tokens: bool = False


@dataclass
class TextDecoderConfig(TransformerShape):
    """Caption decoder: causal self-attention + cross-attention to the
    cross-modal encoding; input and output embeddings tied."""
    kind: str = "transformer"    # implementation (transformer decoder with cross-attention)
    dropout: float = 0.2         # the public OPT code's decoders
    label_smoothing: float = 0.1 # label smoothing of the caption loss (DTR)

    def validate(self) -> None:
        self.check("model.text_decoder")
        require(0 <= self.label_smoothing < 1, "model.text_decoder.label_smoothing", "must be in [0, 1)")


@dataclass
class ImageDecoderConfig(TransformerShape):
    """Autoregressive decoder over the VQ codes of an image."""
    kind: str = "transformer"    # implementation (transformer decoder)
    dropout: float = 0.2         # the public OPT code's decoders

    def validate(self) -> None:
        self.check("model.image_decoder")


@dataclass
class VQConfig:
    """VQ image tokenizer (trained by ``opt-train --task vq``, frozen after).

    Its grid equals the ViT patch grid, so each patch has exactly one code:
    the MVM target of that patch. It may work at a lower resolution than the
    vision tower (``image_size``; downsampling factor = image_size / grid,
    a power of two): generated images come out at that size."""
    quantizer: str = "fsq"         # fsq (finite scalar quantization) | ema (cosine codebook, EMA updates)
    # fsq: values per dimension; the codebook size is their product (the
    # FSQ paper's choices: 1000 = 8x5x5x5, 4375 = 7x5x5x5x5, 15360 = 8x8x8x6x5).
    fsq_levels: tuple[int, ...] = (8, 8, 8, 6, 5)
    codebook_size: int = 15360     # MVM classes and image decoder vocabulary: must equal prod(fsq_levels) for fsq
    code_dim: int = 32             # ema: l2-normalised codes (cosine lookup keeps the codebook in use)
    channels: int = 64             # conv width at the code grid (halved per level above it)
    image_size: int = 0            # resolution the VQ sees and draws; 0: model.vision.image_size
    res_blocks: int = 1          # residual blocks per resolution of the VQ encoder and decoder
    commitment: float = 0.25       # ema only
    ema_decay: float = 0.99        # ema only
    checkpoint: str = ""           # vq.safetensors from `opt-train --task vq` (needed by MVM/DIR/generation)

    def validate(self) -> None:
        require(self.quantizer in QUANTIZERS, "model.vq.quantizer",
                f"must be one of {', '.join(QUANTIZERS)}, got {self.quantizer!r}")
        require(self.codebook_size >= 2, "model.vq.codebook_size", "must be >= 2")
        if self.quantizer == "fsq":
            require(len(self.fsq_levels) >= 1 and min(self.fsq_levels) >= 2, "model.vq.fsq_levels",
                    f"needs at least one dimension of at least 2 levels, got {list(self.fsq_levels)}")
            require(math.prod(self.fsq_levels) == self.codebook_size, "model.vq.codebook_size",
                    f"is {self.codebook_size} but model.vq.fsq_levels={list(self.fsq_levels)} make "
                    f"{math.prod(self.fsq_levels)} codes; set both together")
        require(self.image_size >= 0, "model.vq.image_size", "must be >= 0 (0: the vision tower's)")
        require(0 < self.ema_decay < 1, "model.vq.ema_decay", "must be in (0, 1)")


@dataclass
class ModelConfig:
    text: TextConfig = field(default_factory=TextConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    cross: CrossConfig = field(default_factory=CrossConfig)
    text_decoder: TextDecoderConfig = field(default_factory=TextDecoderConfig)
    image_decoder: ImageDecoderConfig = field(default_factory=ImageDecoderConfig)
    vq: VQConfig = field(default_factory=VQConfig)
    # Recompute each transformer block in backward instead of keeping its
    # activations (towers, cross-modal encoder, decoders): far less activation
    # memory for a second forward of every block (figures: `opt-bench memory`).
    activation_checkpointing: bool = False

    @property
    def vq_image_size(self) -> int:
        return self.vq.image_size or self.vision.image_size

    @property
    def patch_grid(self) -> int:
        """Patches (and VQ codes) per side of an image."""
        return self.vision.image_size // self.vision.patch_size

    def validate(self) -> None:
        self.cross.check("model.cross")
        factor = self.vq_image_size // self.patch_grid
        require(factor * self.patch_grid == self.vq_image_size and factor & (factor - 1) == 0 and factor > 0,
                "model.vq.image_size", f"{self.vq_image_size} must be a power-of-two multiple of the "
                f"{self.patch_grid} x {self.patch_grid} patch grid (one VQ code per patch)")
        require(self.text.hidden == self.cross.hidden, "model.text.hidden",
                f"must equal model.cross.hidden ({self.cross.hidden}): the MLM head ties the text embedding")
