"""Decode, normalise and re-encode the media of one sample (build time only).

Decoding Ogg Vorbis and resampling costs ~40 ms per 30 s clip, a full-size
JPEG decode several more: we pay it once here, so the training loader only
decodes small JPEGs and 16 kHz FLAC.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from math import gcd

import numpy as np
import soundfile as sf
from PIL import Image, ImageOps
from scipy.signal import resample_poly

SAMPLE_RATE = 16_000


class MediaError(ValueError):
    """A media file that cannot be used; ``reason`` is a short tag."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class ImageResult:
    jpeg: bytes
    original_size: tuple[int, int]  # (width, height) as stored, before rotation
    size: tuple[int, int]           # (width, height) written
    sha256: str                     # of the source file


@dataclass
class AudioResult:
    data: bytes
    extension: str                  # "flac" or "wav"
    original_rate: int
    original_channels: int
    original_seconds: float
    seconds: float                  # after the cap
    cropped: bool
    sha256: str


def process_image(raw: bytes, *, short_side: int, quality: int, rotation: int | None = None,
                  max_pixels: int = 89_478_485) -> ImageResult:
    """Decode, rotate upright, convert to RGB, shrink, re-encode as JPEG.

    ``rotation`` (degrees clockwise, as in the Open Images CSV) is applied
    after EXIF orientation. ``max_pixels`` guards against decompression bombs:
    the header is read before any pixel is decoded.
    """
    digest = hashlib.sha256(raw).hexdigest()
    try:
        img = Image.open(io.BytesIO(raw))
        width, height = img.size
        if width * height > max_pixels:
            raise MediaError("image_too_large", f"{width}x{height} exceeds {max_pixels} pixels")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()
    except MediaError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise MediaError("image_too_large", str(exc)) from None
    except Exception as exc:  # PIL raises many types for corrupt files
        raise MediaError("bad_image", f"{type(exc).__name__}: {exc}") from None
    img = ImageOps.exif_transpose(img)
    if rotation:
        # Open Images' Rotation column is clockwise; PIL rotates anticlockwise.
        img = img.rotate(-int(rotation), expand=True)
    img = img.convert("RGB")
    w, h = img.size
    scale = short_side / min(w, h)
    if scale < 1.0:
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=quality, optimize=False)
    return ImageResult(out.getvalue(), (width, height), img.size, digest)


def process_audio(raw: bytes, *, max_seconds: float, audio_format: str = "flac") -> AudioResult:
    """Decode any rate/channel count, downmix, resample to 16 kHz, cap, encode."""
    digest = hashlib.sha256(raw).hexdigest()
    if not raw:
        raise MediaError("bad_audio", "file is empty")
    try:
        wave, rate = sf.read(io.BytesIO(raw), dtype="float32", always_2d=True)
    except Exception as exc:
        raise MediaError("bad_audio", f"{type(exc).__name__}: {exc}") from None
    if wave.shape[0] == 0:
        raise MediaError("bad_audio", "no audio frames")
    channels = wave.shape[1]
    original_seconds = wave.shape[0] / rate
    mono = resample_to_16k(wave.mean(axis=1), rate)
    limit = int(max_seconds * SAMPLE_RATE) if max_seconds > 0 else len(mono)
    cropped = len(mono) > limit
    mono = np.clip(mono[:limit], -1.0, 1.0)
    out = io.BytesIO()
    if audio_format == "flac":
        sf.write(out, mono, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    elif audio_format == "wav":
        sf.write(out, mono, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    else:
        raise ValueError(f"unsupported audio format {audio_format!r} (flac or wav)")
    return AudioResult(out.getvalue(), audio_format, int(rate), int(channels), original_seconds,
                       len(mono) / SAMPLE_RATE, cropped, digest)


def resample_to_16k(mono: np.ndarray, rate: int) -> np.ndarray:
    """Polyphase resampling with scipy's Kaiser-windowed anti-aliasing filter."""
    if rate == SAMPLE_RATE:
        return mono.astype(np.float32, copy=False)
    g = gcd(int(rate), SAMPLE_RATE)
    return resample_poly(mono, SAMPLE_RATE // g, int(rate) // g).astype(np.float32)
