"""Typed configuration of the OPT model, part by part.

Every tower carries its own transformer shape; the cross-modal encoder's
width is the common width the towers project into. ``kind`` fields pick the
implementation of a part from :mod:`opt_scale.model.registry`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from opt_scale.utils.config_tools import require


@dataclass
class TransformerShape:
    layers: int = 2
    hidden: int = 128
    heads: int = 4
    ffn: int = 512
    dropout: float = 0.0

    def check(self, key: str) -> None:
        require(self.layers >= 0, f"{key}.layers", "must be >= 0")
        require(self.hidden > 0 and self.heads > 0, f"{key}.hidden", "hidden and heads must be positive")
        require(self.hidden % self.heads == 0, f"{key}.heads",
                f"hidden={self.hidden} is not divisible by heads={self.heads}")
        require(0.0 <= self.dropout < 1.0, f"{key}.dropout", "must be in [0, 1)")


@dataclass
class TextConfig(TransformerShape):
    kind: str = "bert"
    vocab_size: int = 0          # 0: taken from the tokenizer when the model is built
    max_len: int = 40            # tokens including [bos] and [eos]

    def validate(self) -> None:
        self.check("model.text")
        require(self.max_len >= 3, "model.text.max_len", "must be >= 3 ([bos] token [eos])")


@dataclass
class VisionConfig(TransformerShape):
    kind: str = "vit"
    image_size: int = 64
    patch_size: int = 8

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def validate(self) -> None:
        self.check("model.vision")
        require(self.image_size % self.patch_size == 0, "model.vision.patch_size",
                f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}")


@dataclass
class AudioConfig(TransformerShape):
    kind: str = "logmel_conv"
    n_mels: int = 80
    max_seconds: float = 6.0     # longer recordings are cropped in the loader
    conv_channels: int = 128
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
    kind: str = "prenorm"


@dataclass
class TextDecoderConfig(TransformerShape):
    """Caption decoder: causal self-attention + cross-attention to the
    cross-modal encoding; input and output embeddings tied."""
    kind: str = "transformer"
    label_smoothing: float = 0.1

    def validate(self) -> None:
        self.check("model.text_decoder")
        require(0 <= self.label_smoothing < 1, "model.text_decoder.label_smoothing", "must be in [0, 1)")


@dataclass
class ImageDecoderConfig(TransformerShape):
    """Autoregressive decoder over the VQ codes of an image."""
    kind: str = "transformer"

    def validate(self) -> None:
        self.check("model.image_decoder")


@dataclass
class VQConfig:
    """VQ image tokenizer (trained by ``opt-train --task vq``, frozen after).

    Its grid equals the ViT patch grid (downsampling factor = patch size), so
    each patch has exactly one code: the MVM target of that patch."""
    codebook_size: int = 8192
    code_dim: int = 32             # l2-normalised codes: cosine lookup keeps the codebook in use
    channels: int = 64             # width of the conv encoder/decoder
    res_blocks: int = 1
    commitment: float = 0.25
    ema_decay: float = 0.99
    checkpoint: str = ""           # vq.safetensors from `opt-train --task vq` (needed by MVM/DIR/generation)

    def validate(self) -> None:
        require(self.codebook_size >= 2, "model.vq.codebook_size", "must be >= 2")
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

    def validate(self) -> None:
        self.cross.check("model.cross")
        require(self.text.hidden == self.cross.hidden, "model.text.hidden",
                f"must equal model.cross.hidden ({self.cross.hidden}): the MLM head ties the text embedding")
