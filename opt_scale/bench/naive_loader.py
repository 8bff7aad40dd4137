"""The loader one writes without a shard builder: originals decoded in the worker.

It reads the Localized Narratives layout directly (JSONL records, the
original JPEG, the original Ogg Vorbis recording) and, per sample, decodes
the full-size JPEG and the whole recording, downmixes and resamples it to
16 kHz. Everything after decoding is the production code (centre crop and
resize, log-mel, tokenizer, masks, collation), and resampling uses the
shard builder's own resampler (soxr HQ), so that comparing the two loaders
measures one thing: decoding once at build time instead of in every epoch.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from opt_scale.data.collate import Collator
from opt_scale.data.decode import DecodedSample, SampleDecoder, centre_square
from opt_scale.data.features import log_mel
from opt_scale.data_prep.media import resample_to_16k


def read_records(inputs: Path) -> list[dict]:
    """The narratives of a raw input tree (``annotations/*.jsonl``), in file order."""
    return [json.loads(line) for path in sorted((inputs / "annotations").glob("*.jsonl"))
            for line in path.read_text().splitlines() if line.strip()]


def read_original(inputs: Path, record: dict) -> dict:
    """The sample's original files as bytes, keyed like a shard sample."""
    return {"__key__": f"{record['image_id']}_{record['annotator_id']}", "caption": record["caption"],
            "jpg": (inputs / "images" / f"{record['image_id']}.jpg").read_bytes(),
            "ogg": (inputs / "recordings" / record["voice_recording"]).read_bytes()}


def decode_original_image(data: bytes, size: int) -> torch.Tensor:
    """Full-size decode (no DCT-domain downscale), then the production crop and resize."""
    return centre_square(Image.open(io.BytesIO(data)).convert("RGB"), size)


def decode_original_wave(data: bytes, max_samples: int) -> np.ndarray:
    """The whole recording decoded (as ``sf.read(path)`` does), downmixed, resampled, cropped."""
    wave, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return resample_to_16k(wave.mean(axis=1), rate)[:max_samples]


def decode_original(original: dict, decoder: SampleDecoder) -> DecodedSample:
    caption = original["caption"].strip()
    return DecodedSample(
        key=original["__key__"], caption=caption,
        text_ids=np.asarray(decoder.tokenizer.encode(caption, decoder.max_text_len), dtype=np.int64),
        pixels=decode_original_image(original["jpg"], decoder.image_size),
        mel=log_mel(decode_original_wave(original["ogg"], decoder.max_samples), decoder.n_mels))


class NaiveBatches(IterableDataset):
    """Endless batches of the records, each worker taking every n-th record."""

    def __init__(self, inputs: Path, records: list[dict], decoder: SampleDecoder, collator: Collator,
                 batch_size: int):
        self.inputs = inputs
        self.records = records
        self.decoder = decoder
        self.collator = collator
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if info is not None:  # the same worker set-up as the sharded loader's
            torch.set_num_threads(1)
        mine = self.records[worker::workers]
        epoch = 0
        while True:
            for start in range(0, len(mine) - self.batch_size + 1, self.batch_size):
                samples = [decode_original(read_original(self.inputs, r), self.decoder)
                           for r in mine[start:start + self.batch_size]]
                yield self.collator(samples, epoch)
            epoch += 1
