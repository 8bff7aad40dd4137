"""Small models and batches for model/task tests (no DeepSpeed)."""

from __future__ import annotations

import torch

from opt_scale.config import RunConfig
from opt_scale.data.config import DataConfig
from opt_scale.data.loader import TrainLoader
from opt_scale.data.sources import resolve_shards
from opt_scale.data.tokenizer import Tokenizer
from opt_scale.model.vq import VQTokenizer, build_vq
from opt_scale.presets import tiny
from opt_scale.tasks.pretrainer import OPTPretrainer


def small_config(vocab: int) -> RunConfig:
    cfg = tiny()
    for part in (cfg.model.text, cfg.model.vision, cfg.model.audio, cfg.model.cross, cfg.model.text_decoder,
                 cfg.model.image_decoder):
        part.layers, part.hidden, part.heads, part.ffn = 1, 32, 4, 64
        # No dropout: runs that draw random numbers in another order (one rank vs
        # two, hooks, a second forward) must compute the same losses.
        part.dropout = 0.0
    cfg.model.text.vocab_size = vocab
    cfg.model.vq.fsq_levels, cfg.model.vq.codebook_size = (4, 4, 4), 64
    cfg.model.vq.channels = 16
    cfg.model.audio.conv_channels = 8
    return cfg


def random_vq(cfg: RunConfig, seed: int = 0) -> VQTokenizer:
    torch.manual_seed(seed)
    return build_vq(cfg.model).eval().requires_grad_(False)


def small_pretrainer(cfg: RunConfig, seed: int = 0) -> OPTPretrainer:
    vq = random_vq(cfg, seed + 1)
    torch.manual_seed(seed)
    return OPTPretrainer(cfg.model, cfg.tasks, vq=vq)


def demo_batch(demo_shards, demo_tokenizer, cfg: RunConfig, batch_size: int = 4, index: int = 0) -> dict:
    shards = resolve_shards(str(demo_shards / "demo-index.json"))
    loader = TrainLoader(shards, DataConfig(num_workers=0, shuffle_block=16), cfg.model, cfg.tasks,
                         Tokenizer(str(demo_tokenizer)), 0, 1, batch_size)
    for _ in range(index):
        next(loader)
    return next(loader)
