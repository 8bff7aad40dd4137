"""Decode one shard sample (bytes) into model inputs, in a loader worker."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import torch
from PIL import Image

from opt_scale.model.config import ModelConfig

from .features import SAMPLE_RATE, log_mel
from .tokenizer import Tokenizer

AUDIO_EXTENSIONS = ("flac", "wav", "ogg")


class SampleError(ValueError):
    pass


@dataclass
class DecodedSample:
    key: str
    caption: str
    text_ids: np.ndarray      # [len] int64, [bos] ... [eos]
    pixels: torch.Tensor      # [3, H, W] uint8
    mel: torch.Tensor         # [frames, n_mels] float32
    meta: dict


class SampleDecoder:
    def __init__(self, model_cfg: ModelConfig, tokenizer: Tokenizer):
        self.image_size = model_cfg.vision.image_size
        self.max_text_len = model_cfg.text.max_len
        self.max_samples = int(model_cfg.audio.max_seconds * SAMPLE_RATE)
        self.n_mels = model_cfg.audio.n_mels
        self.tokenizer = tokenizer

    def __call__(self, raw: dict) -> DecodedSample:
        key = raw.get("__key__", "?")
        try:
            caption = raw["txt"].decode("utf-8").strip()
            audio_ext = next(e for e in AUDIO_EXTENSIONS if e in raw)
            return DecodedSample(
                key=key,
                caption=caption,
                text_ids=np.asarray(self.tokenizer.encode(caption, self.max_text_len), dtype=np.int64),
                pixels=self.decode_image(raw["jpg"]),
                mel=self.decode_audio(raw[audio_ext]),
                meta=json.loads(raw["json"]) if "json" in raw else {},
            )
        except StopIteration:
            raise SampleError(f"sample {key!r} has no audio member ({', '.join(AUDIO_EXTENSIONS)})") from None
        except KeyError as exc:
            raise SampleError(f"sample {key!r} lacks member {exc}") from None
        except Exception as exc:
            raise SampleError(f"sample {key!r}: {type(exc).__name__}: {exc}") from None

    def decode_image(self, data: bytes) -> torch.Tensor:
        """Resize the short side to ``image_size`` and centre-crop a square."""
        img = Image.open(io.BytesIO(data))
        img.draft("RGB", (self.image_size, self.image_size))  # JPEG DCT-domain downscale: much cheaper
        img = img.convert("RGB")
        w, h = img.size
        scale = self.image_size / min(w, h)
        nw, nh = max(self.image_size, round(w * scale)), max(self.image_size, round(h * scale))
        img = img.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=2.0)
        left, top = (nw - self.image_size) // 2, (nh - self.image_size) // 2
        img = img.crop((left, top, left + self.image_size, top + self.image_size))
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()

    def decode_audio(self, data: bytes) -> torch.Tensor:
        wave, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True, frames=-1)
        if rate != SAMPLE_RATE:
            raise SampleError(f"audio is {rate} Hz; shards must hold 16 kHz audio (rebuild with opt-shards build)")
        wave = wave.mean(axis=1)[: self.max_samples]
        return log_mel(wave, self.n_mels)
