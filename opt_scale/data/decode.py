"""Decode one shard sample (bytes) into model inputs, in a loader worker."""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from PIL import Image

from opt_scale.model.config import ModelConfig

from .features import SAMPLE_RATE, frames_of_wave, log_mel
from .tokenizer import Tokenizer

AUDIO_EXTENSIONS = ("flac", "wav", "ogg")


class SampleError(ValueError):
    pass


# What an absent modality feeds its tower: every tower runs on every row
# (ZeRO-3 keeps ranks in lock-step by module calls), and the row's
# ``present`` flag keeps these stand-ins out of every view and loss.
ABSENT_AUDIO_FRAMES = 4


@dataclass
class DecodedSample:
    key: str
    caption: str
    text_ids: np.ndarray      # [len] int64, [bos] ... [eos]
    pixels: torch.Tensor      # [3, H, W] uint8 (zeros when the sample has no image)
    mel: torch.Tensor | None  # [frames, n_mels] float32 (a few zero frames when it has no audio); None with wave
    meta_json: bytes = b"{}"  # the sample's .json member, parsed on demand (nothing in training reads it)
    image_uid: int = 0        # hash of the image file: narratives of one image share it (never each other's negatives)
    present: np.ndarray = field(default_factory=lambda: np.ones(3, dtype=bool))  # text, image, audio in the sample
    # data.mel_on_device: the decoded recording [samples] float32 (empty when
    # it has no audio) in place of ``mel``, which the training device computes.
    wave: torch.Tensor | None = None

    @property
    def frames(self) -> int:
        """Log-mel frames of the sample's audio, whichever form it travels in."""
        if self.wave is None:
            return self.mel.shape[0]
        return frames_of_wave(len(self.wave)) if len(self.wave) else ABSENT_AUDIO_FRAMES

    @property
    def meta(self) -> dict:
        return json.loads(self.meta_json)


class SampleDecoder:
    def __init__(self, model_cfg: ModelConfig, tokenizer: Tokenizer, mel_on_device: bool = False):
        """``mel_on_device``: ship the decoded waveform, not its log-mel (data.mel_on_device)."""
        self.mel_on_device = mel_on_device
        self.image_size = model_cfg.vision.image_size
        self.max_text_len = model_cfg.text.max_len
        self.max_samples = int(model_cfg.audio.max_seconds * SAMPLE_RATE)
        self.n_mels = model_cfg.audio.n_mels
        self.tokenizer = tokenizer

    def __call__(self, raw: dict) -> DecodedSample:
        """A caption with an image, a recording or both (pairs from image-text
        or audio-text corpora lack one of them)."""
        key = raw.get("__key__", "?")
        try:
            caption = raw["txt"].decode("utf-8").strip()
            audio_ext = next((e for e in AUDIO_EXTENSIONS if e in raw), None)
            has_image = "jpg" in raw
            if not has_image and audio_ext is None:
                raise SampleError(f"sample {key!r} has neither an image (jpg) nor audio "
                                  f"({', '.join(AUDIO_EXTENSIONS)})")
            size = self.image_size
            return DecodedSample(
                key=key,
                caption=caption,
                text_ids=np.asarray(self.tokenizer.encode(caption, self.max_text_len), dtype=np.int64),
                pixels=self.decode_image(raw["jpg"]) if has_image else torch.zeros(3, size, size, dtype=torch.uint8),
                **self.audio_fields(raw[audio_ext] if audio_ext else None),
                meta_json=raw.get("json", b"{}"),
                # Without an image, the recording names the sample's group (its narratives are twins).
                image_uid=content_uid(raw["jpg"] if has_image else raw[audio_ext]),
                present=np.array([True, has_image, audio_ext is not None]),
            )
        except SampleError:
            raise
        except KeyError as exc:
            raise SampleError(f"sample {key!r} lacks member {exc}") from None
        except Exception as exc:
            raise SampleError(f"sample {key!r}: {type(exc).__name__}: {exc}") from None

    def decode_image(self, data: bytes) -> torch.Tensor:
        img = Image.open(io.BytesIO(data))
        img.draft("RGB", (self.image_size, self.image_size))  # JPEG DCT-domain downscale: much cheaper
        return centre_square(img.convert("RGB"), self.image_size)

    def audio_fields(self, data: bytes | None) -> dict:
        """The sample's audio as ``mel`` (computed here) or as ``wave`` (data.mel_on_device)."""
        if self.mel_on_device:
            wave = torch.from_numpy(self.read_wave(data)) if data is not None else torch.zeros(0)
            return {"mel": None, "wave": wave}
        return {"mel": self.decode_audio(data) if data is not None else torch.zeros(ABSENT_AUDIO_FRAMES, self.n_mels)}

    def decode_audio(self, data: bytes) -> torch.Tensor:
        return log_mel(self.read_wave(data), self.n_mels)

    def read_wave(self, data: bytes) -> np.ndarray:
        """Mono float32 at 16 kHz, at most ``max_samples``: only that much is decoded."""
        wave, rate = sf.read(io.BytesIO(data), dtype="float32", frames=self.max_samples)
        if rate != SAMPLE_RATE:
            raise SampleError(f"audio is {rate} Hz; shards must hold 16 kHz audio (rebuild with opt-shards build)")
        return wave.mean(axis=1) if wave.ndim == 2 else wave  # shards are mono: no copy then


def content_uid(data: bytes) -> int:
    """A signed 64-bit hash of a member's bytes (fits an int64 tensor)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)


def centre_square(img: Image.Image, size: int) -> torch.Tensor:
    """The centre square of an RGB image resized to ``size`` (antialiased bilinear): [3, size, size] uint8."""
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    # Crop before resizing: the pixels cut away are never resampled. torch's
    # uint8 antialiased bilinear is Pillow's filter in ~40% of Pillow's time.
    square = torch.from_numpy(np.array(img)).permute(2, 0, 1)[:, top:top + side, left:left + side]
    if side != size:
        square = F.interpolate(square[None], size=(size, size), mode="bilinear", antialias=True,
                               align_corners=False)[0]
    return square.contiguous()
