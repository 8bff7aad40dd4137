"""Named model/training presets, from CI-sized to multi-billion-parameter.

``base`` follows the paper's cross-modal encoder (12 layers, 768 hidden, 12
heads, FFN 3072); ``xl`` only fits with ZeRO-3 partitioning.
"""

from __future__ import annotations

from opt_scale.config import RunConfig
from opt_scale.engine.config import TrainConfig
from opt_scale.model.config import AudioConfig, CrossConfig, ModelConfig, TextConfig, VisionConfig


def _shape(layers: int, hidden: int, heads: int) -> dict:
    return dict(layers=layers, hidden=hidden, heads=heads, ffn=4 * hidden)


def tiny() -> RunConfig:
    s = _shape(2, 128, 4)
    return RunConfig(
        model=ModelConfig(text=TextConfig(max_len=40, **s), vision=VisionConfig(image_size=64, patch_size=8, **s),
                          audio=AudioConfig(max_seconds=5.0, conv_channels=32, **s), cross=CrossConfig(**s)),
        train=TrainConfig(steps=300, micro_batch_size=8, lr=1e-3, warmup_steps=30, out_dir="runs/tiny"),
    )


def small() -> RunConfig:
    s = _shape(4, 256, 4)
    return RunConfig(
        model=ModelConfig(text=TextConfig(max_len=64, **s), vision=VisionConfig(image_size=128, patch_size=16, **s),
                          audio=AudioConfig(max_seconds=10.0, conv_channels=64, **s), cross=CrossConfig(**s)),
        train=TrainConfig(steps=20_000, micro_batch_size=32, lr=5e-4, warmup_steps=1000, out_dir="runs/small"),
    )


def base() -> RunConfig:
    s = _shape(12, 768, 12)
    return RunConfig(
        model=ModelConfig(text=TextConfig(max_len=128, **s), vision=VisionConfig(image_size=224, patch_size=16, **s),
                          audio=AudioConfig(max_seconds=20.0, conv_channels=256, **s), cross=CrossConfig(**s)),
        train=TrainConfig(steps=200_000, micro_batch_size=64, lr=1e-4, warmup_steps=10_000, out_dir="runs/base"),
    )


def large() -> RunConfig:
    s = _shape(24, 1024, 16)
    return RunConfig(
        model=ModelConfig(text=TextConfig(max_len=128, **s), vision=VisionConfig(image_size=224, patch_size=14, **s),
                          audio=AudioConfig(max_seconds=20.0, conv_channels=256, **s), cross=CrossConfig(**s)),
        train=TrainConfig(steps=300_000, micro_batch_size=32, lr=8e-5, warmup_steps=10_000, out_dir="runs/large"),
    )


def xl() -> RunConfig:
    s = _shape(32, 2560, 32)
    return RunConfig(
        model=ModelConfig(text=TextConfig(max_len=128, **s), vision=VisionConfig(image_size=224, patch_size=14, **s),
                          audio=AudioConfig(max_seconds=20.0, conv_channels=512, **s), cross=CrossConfig(**s)),
        train=TrainConfig(steps=300_000, micro_batch_size=16, lr=5e-5, warmup_steps=10_000, out_dir="runs/xl"),
    )


PRESETS = {"tiny": tiny, "small": small, "base": base, "large": large, "xl": xl}
