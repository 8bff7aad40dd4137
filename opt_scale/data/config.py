"""Typed configuration of the streaming loader."""

from __future__ import annotations

from dataclasses import dataclass

from opt_scale.utils.config_tools import require


@dataclass
class DataConfig:
    train_shards: str = ""       # index .json, paths, globs, brace patterns (pipe:/http(s) shards via an index)
    # One weight per comma-separated part of train_shards: the parts become a
    # weighted mixture (each epoch takes whole shards of each in proportion).
    # Empty: every shard once per epoch.
    train_weights: tuple[float, ...] = ()
    eval_shards: str = ""        # held-out shards for periodic evaluation (train.eval_every)
    tokenizer: str = ""          # SentencePiece .model (opt-shards train-tokenizer)
    # The label vocabulary of a vqa or classify run: the .labels.json that
    # `opt-shards pairs --format vqa|classes|imagefolder` writes beside its records.
    labels: str = ""
    num_workers: int = 2         # loader processes per rank
    prefetch_factor: int = 4     # batches each worker keeps ready
    shuffle_block: int = 256     # samples read in order, then permuted together
    seed: int = 0                # data order, masks and negatives derive from (seed, epoch, key)
    max_substituted_fraction: float = 0.01  # stop once more of a rank's epoch had to be replaced (damaged shards)
    # Log-mel on the training device: workers only decode audio and ship the
    # waveform (float32: twice the bytes of the 80-band log-mel it replaces),
    # the trainer computes the same features on its device (collate.mel_on_device).
    # For GPU nodes whose loader cores are the bottleneck; on a CPU-only run
    # it only moves the work into the training process.
    mel_on_device: bool = False

    def validate(self) -> None:
        require(self.num_workers >= 0, "data.num_workers", "must be >= 0")
        require(self.prefetch_factor >= 1, "data.prefetch_factor", "must be >= 1")
        require(self.shuffle_block >= 1, "data.shuffle_block", "must be >= 1")
        require(0.0 <= self.max_substituted_fraction <= 1.0, "data.max_substituted_fraction",
                "must be between 0 and 1 (the fraction of an epoch's samples that may be stand-ins)")
