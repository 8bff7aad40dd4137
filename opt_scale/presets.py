"""Named model/training presets, from CI-sized to multi-billion-parameter.

``base`` follows the paper: cross-modal encoder 12 layers / 768 hidden / 12
heads / FFN 3072, and the public code's decoders (6 layers, d=1024, 16
heads). ``xl`` (~10B parameters) only fits with ZeRO-3 partitioning.
Run ``opt-train --config NAME --print-model`` for parameters and FLOPs per part.
"""

from __future__ import annotations

from opt_scale.config import RunConfig
from opt_scale.engine.config import TrainConfig
from opt_scale.model.config import (AudioConfig, CrossConfig, ImageDecoderConfig, ModelConfig, TextConfig,
                                    TextDecoderConfig, VisionConfig, VQConfig)


def _shape(layers: int, hidden: int, heads: int) -> dict:
    return dict(layers=layers, hidden=hidden, heads=heads, ffn=4 * hidden)


def _model(tower: dict, cross: dict, decoder: dict, *, max_len: int, image: int, patch: int, audio_s: float,
           conv: int, vq: VQConfig, conv_layers: int = 2) -> ModelConfig:
    # The VQ sees images at 8 px per code (the public code's factor), whatever
    # the tower's patch size: a 16 px code would have to draw a quarter of a
    # shape's outline from one of 1-8k vectors.
    vq.image_size = 8 * (image // patch)
    return ModelConfig(
        text=TextConfig(max_len=max_len, **tower),
        vision=VisionConfig(image_size=image, patch_size=patch, **tower),
        audio=AudioConfig(max_seconds=audio_s, conv_channels=conv, conv_layers=conv_layers, **tower),
        cross=CrossConfig(**cross),
        text_decoder=TextDecoderConfig(**decoder),
        image_decoder=ImageDecoderConfig(**decoder),
        vq=vq,
    )


def tiny() -> RunConfig:
    s = _shape(2, 128, 4)
    return RunConfig(
        # Three stride-2 convs (80 ms audio tokens) keep the cross-modal
        # sequence short enough for CPU runs. 128 px images in 16 px patches:
        # as many tokens as 64 px in 8 px patches, and a probe of the tower
        # told the demo's shapes apart 97% (vs 86%) after the same 400 steps.
        model=_model(s, s, s, max_len=40, image=128, patch=16, audio_s=5.0, conv=32, conv_layers=3,
                     vq=VQConfig(fsq_levels=(8, 5, 5, 5), codebook_size=1000, channels=128)),
        train=TrainConfig(steps=300, micro_batch_size=8, lr=1e-3, warmup_steps=30, out_dir="runs/tiny"),
    )


def small() -> RunConfig:
    s = _shape(4, 256, 4)
    return RunConfig(
        model=_model(s, s, s, max_len=64, image=128, patch=16, audio_s=10.0, conv=64,
                     vq=VQConfig(fsq_levels=(7, 5, 5, 5, 5), codebook_size=4375, channels=128)),
        train=TrainConfig(steps=20_000, micro_batch_size=32, lr=5e-4, warmup_steps=1000, out_dir="runs/small"),
    )


def base() -> RunConfig:
    s = _shape(12, 768, 12)
    return RunConfig(
        model=_model(s, s, _shape(6, 1024, 16), max_len=128, image=224, patch=16, audio_s=20.0, conv=256,
                     vq=VQConfig(channels=256, res_blocks=2)),
        train=TrainConfig(steps=200_000, micro_batch_size=64, lr=1e-4, warmup_steps=10_000, out_dir="runs/base"),
    )


def large() -> RunConfig:
    s = _shape(24, 1024, 16)
    return RunConfig(
        model=_model(s, s, _shape(12, 1024, 16), max_len=128, image=224, patch=16, audio_s=20.0, conv=256,
                     vq=VQConfig(channels=256, res_blocks=2)),
        train=TrainConfig(steps=300_000, micro_batch_size=32, lr=8e-5, warmup_steps=10_000, out_dir="runs/large"),
    )


def xl() -> RunConfig:
    s = _shape(32, 2560, 32)
    return RunConfig(
        model=_model(s, s, _shape(16, 2560, 32), max_len=128, image=224, patch=16, audio_s=20.0, conv=512,
                     vq=VQConfig(channels=256, res_blocks=2)),
        train=TrainConfig(steps=300_000, micro_batch_size=16, lr=5e-5, warmup_steps=10_000, out_dir="runs/xl"),
    )


PRESETS = {"tiny": tiny, "small": small, "base": base, "large": large, "xl": xl}
