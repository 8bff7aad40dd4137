"""What ``opt-bench loader`` times: realistic inputs, their shards, a tokenizer, both loaders.

Inputs come from ``opt-bench shards``' generator (cached); shards are built
by the production builder with its default media settings; the tokenizer is
trained on the shards' captions. Each is reused when already complete.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from opt_scale.config import RunConfig


@dataclass
class LoaderSetup:
    inputs: Path
    shards_index: Path
    tokenizer_path: Path
    cfg: RunConfig
    batch_size: int
    audio_seconds: float
    image_size: str
    audio_format: str
    mel_on_device: bool = False  # data.mel_on_device: the sharded loader ships waveforms

    def describe(self) -> str:
        return (f"{self.image_size} JPEG + {self.audio_seconds:g} s 48 kHz Vorbis originals; shards: short side "
                f"384 + 16 kHz {self.audio_format.upper()}")

    def tokenizer(self):
        from opt_scale.data.tokenizer import Tokenizer
        return Tokenizer(str(self.tokenizer_path))

    def decoder(self):
        from opt_scale.data.decode import SampleDecoder
        return SampleDecoder(self.cfg.model, self.tokenizer())

    def collator(self):
        from opt_scale.data.collate import Collator
        return Collator(self.cfg.model, self.cfg.tasks, self.tokenizer(), self.cfg.data.seed)

    def open_loader(self, name: str, workers: int) -> Iterator[dict]:
        """An endless iterator of batches from loader ``name`` with ``workers`` processes."""
        if name == "sharded":
            from opt_scale.data.config import DataConfig
            from opt_scale.data.loader import TrainLoader
            from opt_scale.data.sources import resolve_shards
            data = DataConfig(num_workers=workers, prefetch_factor=4, shuffle_block=self.cfg.data.shuffle_block,
                              mel_on_device=self.mel_on_device)
            return TrainLoader(resolve_shards(str(self.shards_index)), data, self.cfg.model, self.cfg.tasks,
                               self.tokenizer(), rank=0, world_size=1, batch_size=self.batch_size)
        from torch.utils.data import DataLoader

        from .naive_loader import NaiveBatches, read_records
        dataset = NaiveBatches(self.inputs, read_records(self.inputs), self.decoder(), self.collator(),
                               self.batch_size)
        return iter(DataLoader(dataset, batch_size=None, num_workers=workers,
                               prefetch_factor=4 if workers else None))


def prepare_loader_inputs(args: argparse.Namespace) -> LoaderSetup:
    from opt_scale.config import load_config
    from opt_scale.data_prep.build import BuildOptions, build
    from opt_scale.data_prep.tokenizer_training import train_tokenizer

    from .shards import ensure_inputs
    work = Path(args.work_dir).resolve()
    width, height = (int(v) for v in args.image_size.lower().split("x"))
    tag = f"{args.samples}-{args.image_size}-{args.audio_seconds:g}s"
    inputs = ensure_inputs(work / f"inputs-{tag}", args.samples, args.audio_seconds, (width, height))
    out = work / f"shards-{tag}-{args.audio_format}"
    # Default media settings of `opt-shards build`; a complete earlier build is skipped shard by shard.
    build(BuildOptions(annotations=[str(inputs / "annotations" / "*.jsonl")], image_root=str(inputs / "images"),
                       audio_root=str(inputs / "recordings"), out_dir=str(out), prefix="bench",
                       samples_per_shard=64, audio_format=args.audio_format, workers=os.cpu_count() or 1,
                       progress=False))
    tokenizer = out / "tokenizer.model"
    if not tokenizer.is_file():
        train_tokenizer(str(out / "bench-index.json"), 8000, str(tokenizer))
    cfg = load_config(args.preset)
    from opt_scale.data.tokenizer import Tokenizer
    cfg.model.text.vocab_size = Tokenizer(str(tokenizer)).vocab_size
    return LoaderSetup(inputs, out / "bench-index.json", tokenizer, cfg, args.batch_size, args.audio_seconds,
                       args.image_size, args.audio_format, args.mel_on_device)
