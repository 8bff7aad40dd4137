"""Named parts: a config's ``kind`` picks the implementation.

Adding a variant of a part (say, a region-feature vision tower) is adding an
entry here and a module beside it; the trainer does not change.
"""

from __future__ import annotations

from opt_scale.utils.config_tools import ConfigError

from .audio_encoder import AudioEncoder
from .cross_encoder import CrossModalEncoder
from .decoders import ImageDecoder, TextDecoder
from .text_encoder import TextEncoder
from .vision_encoder import VisionEncoder

PARTS: dict[str, dict[str, type]] = {
    "text": {"bert": TextEncoder},
    "vision": {"vit": VisionEncoder},
    "audio": {"logmel_conv": AudioEncoder},
    "cross": {"prenorm": CrossModalEncoder},
    "text_decoder": {"transformer": TextDecoder},
    "image_decoder": {"transformer": ImageDecoder},
}


def part_class(part: str, kind: str) -> type:
    choices = PARTS[part]
    if kind not in choices:
        raise ConfigError(f"config key 'model.{part}.kind': unknown kind {kind!r}; known: {', '.join(choices)}")
    return choices[kind]


def register(part: str, kind: str, cls: type) -> None:
    """Make ``cls`` available as ``model.<part>.kind=<kind>``: how a research
    variant plugs in without editing the model."""
    PARTS.setdefault(part, {})[kind] = cls
