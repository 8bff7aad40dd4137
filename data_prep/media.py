"""Decode, normalise and re-encode the media of one sample (build time only).

Decoding Ogg Vorbis and resampling costs tens of ms per 30 s clip, a
full-size JPEG decode several more: we pay it once here, so the training
loader only decodes small JPEGs and 16 kHz FLAC. Where the time goes (see
``opt-bench shards --stages``): Vorbis decoding dominates and is fixed; the
rest is kept small by decoding JPEGs at reduced size in the DCT domain
(Pillow's draft mode), resampling with soxr in float32, and never decoding
audio past the crop limit.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import warnings
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr
from PIL import Image

SAMPLE_RATE = 16_000
AUDIO_FORMATS = ("flac", "wav")  # lossless and deterministic (an Ogg encoder picks a random stream serial)
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold

# EXIF Orientation tag -> transposition that makes the pixels upright.
EXIF_ORIENTATION = 0x0112
EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Open Images' Rotation column: degrees *counterclockwise* the image must be
# rotated to be upright (storage.googleapis.com/openimages/web/2018-05-17-rotation-information.html).
# PIL's ROTATE_* transpositions are counterclockwise too.
CSV_ROTATION = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}

_ADDRESS_RE = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")


class MediaError(ValueError):
    """A media file that cannot be used; ``reason`` is a short tag."""

    def __init__(self, reason: str, detail: str):
        # Library messages quote object reprs with memory addresses; strip
        # them so failure reports are identical from run to run.
        detail = _ADDRESS_RE.sub("<data>", detail)
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class ImageResult:
    jpeg: bytes
    original_size: tuple[int, int]  # (width, height) as stored, before rotation
    size: tuple[int, int]           # (width, height) written, upright
    source_format: str              # "JPEG", "PNG", ...
    exif_orientation: int           # 1 (upright) when absent
    rotation: str                   # what was applied: "none", "exif:6", "csv:90"
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
    sha256: str                     # of the source file


def process_image(raw: bytes, *, short_side: int, quality: int, rotation: int | None = None,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageResult:
    """Decode, rotate upright, convert to RGB, shrink, re-encode as JPEG.

    The EXIF orientation describes the stored pixels themselves, so when a
    file carries one it wins; otherwise ``rotation`` (the Open Images CSV's
    counterclockwise degrees) is applied. ``max_pixels`` guards against
    decompression bombs: the header is checked before any pixel is decoded.
    """
    digest = hashlib.sha256(raw).hexdigest()
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS * 2 < max_pixels:
        # Pillow refuses inside Image.open above twice its own limit: raise
        # that (process-wide) so a larger --max-image-pixels takes effect.
        Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            # Our own max_pixels check below is the limit that counts.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(raw))  # reads the header only
        width, height = img.size
        if width * height > max_pixels:
            raise MediaError("image_too_large", f"{width}x{height} exceeds {max_pixels} pixels")
        source_format = img.format or "?"
        orientation = exif_orientation(img)
        if source_format == "JPEG":
            # DCT-domain downscaling by 1/2, 1/4 or 1/8 while decoding, never
            # below the target short side: most of the decode and resize work
            # disappears (about 4x faster on a 1024x768 photo).
            img.draft("RGB", (short_side, short_side))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
    except MediaError:
        raise
    except Image.DecompressionBombError as exc:
        raise MediaError("image_too_large", str(exc)) from None
    except Image.UnidentifiedImageError:
        raise MediaError("bad_image", "not a recognised image format") from None
    except Exception as exc:  # PIL raises many types for corrupt or truncated files
        raise MediaError("bad_image", f"{type(exc).__name__}: {exc}") from None

    if orientation in EXIF_TRANSPOSE:
        img = img.transpose(EXIF_TRANSPOSE[orientation])
        applied = f"exif:{orientation}"
    elif rotation in CSV_ROTATION:
        img = img.transpose(CSV_ROTATION[rotation])
        applied = f"csv:{rotation}"
    else:
        applied = "none"
    img = to_rgb(img)
    w, h = img.size
    scale = short_side / min(w, h)
    if scale < 1.0:
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=quality)
    return ImageResult(out.getvalue(), (width, height), img.size, source_format, orientation, applied, digest)


def exif_orientation(img: Image.Image) -> int:
    """The EXIF Orientation (1-8) of an opened image; 1 when absent or unreadable."""
    try:
        value = img.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # a broken EXIF block must not cost us the image
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB without surprises: transparency over white, 16-bit scaled, not clipped."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        pixels = np.asarray(img, dtype=np.float32)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(pixels.max()), 1.0)
        return Image.fromarray(np.clip(pixels * (255.0 / top), 0, 255).astype(np.uint8)).convert("RGB")
    return img.convert("RGB")


def parse_rotation(value: str | float | int | None) -> int | None:
    """Open Images' Rotation cell ("0.0", "90", "", "nan") -> 0/90/180/270 or None."""
    try:
        degrees = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if math.isnan(degrees):
        return None
    degrees_int = int(round(degrees)) % 360
    return degrees_int if degrees_int in (0, 90, 180, 270) else None


def process_audio(raw: bytes, *, max_seconds: float, audio_format: str = "flac") -> AudioResult:
    """Decode any rate/channel count, downmix, resample to 16 kHz, cap, encode."""
    if audio_format not in AUDIO_FORMATS:
        raise ValueError(f"unsupported audio format {audio_format!r} ({' or '.join(AUDIO_FORMATS)})")
    digest = hashlib.sha256(raw).hexdigest()
    if not raw:
        raise MediaError("bad_audio", "file is empty")
    try:
        with sf.SoundFile(io.BytesIO(raw)) as f:
            rate, channels, frames = int(f.samplerate), int(f.channels), int(f.frames)
            # Never decode past the cap (plus a little for the resampler's
            # filter to settle): a stray hour-long file costs no more than a
            # capped one.
            limit_in = frames if max_seconds <= 0 else min(frames, math.ceil(max_seconds * rate) + rate // 10)
            wave = f.read(limit_in, dtype="float32", always_2d=True)
    except Exception as exc:
        raise MediaError("bad_audio", f"{type(exc).__name__}: {exc}") from None
    if wave.shape[0] == 0:
        raise MediaError("bad_audio", "no audio frames")
    non_finite = wave.size - int(np.isfinite(wave).sum())
    if non_finite:  # the int16 conversion would turn them into silence (or noise), quietly
        raise MediaError("bad_audio", f"{non_finite} non-finite (NaN or infinite) samples")
    if wave.shape[0] < limit_in:  # truncated stream: the header promised more than there is
        frames = wave.shape[0]
    original_seconds = frames / rate
    mono = wave[:, 0] if channels == 1 else wave.mean(axis=1, dtype=np.float32)
    mono = resample_to_16k(mono, rate)
    cropped = max_seconds > 0 and original_seconds > max_seconds + 0.5 / SAMPLE_RATE
    if max_seconds > 0:
        mono = mono[:round(max_seconds * SAMPLE_RATE)]
    if len(mono) == 0:  # e.g. one frame at 48 kHz: a 0-byte .flac that `verify` rejects
        raise MediaError("bad_audio", f"{frames} frame(s) at {rate} Hz leave no sample at 16 kHz")
    out = io.BytesIO()
    sf.write(out, to_pcm16(mono), SAMPLE_RATE, format=audio_format.upper(), subtype="PCM_16")
    return AudioResult(out.getvalue(), audio_format, rate, channels, original_seconds,
                       len(mono) / SAMPLE_RATE, cropped, digest)


def to_pcm16(wave: np.ndarray) -> np.ndarray:
    """Clip and round to int16 ourselves: the FLAC encoder then takes the samples as they are
    (about 1 ms per 30 s cheaper than libsndfile's own float conversion)."""
    scaled = np.clip(wave, -1.0, 1.0) * np.float32(32767.0)
    return np.rint(scaled, out=scaled).astype(np.int16)


def resample_to_16k(mono: np.ndarray, rate: int) -> np.ndarray:
    """Anti-aliased resampling to 16 kHz with soxr's HQ filter, in float32.

    soxr HQ is about 3x faster than scipy's ``resample_poly`` here and far
    cleaner (see ``opt-bench shards --stages``: tones just above the new
    Nyquist frequency are removed rather than folded back at -14 dB).
    """
    mono = np.ascontiguousarray(mono, dtype=np.float32)
    if rate == SAMPLE_RATE:
        return mono
    return soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ")
