"""Refuse a run's unusable inputs before the slow start-up.

``opt-train`` calls :func:`validate_run_inputs` before it imports the
trainer: a missing tokenizer or shard, an index that is not JSON, an
``out_dir`` that cannot be written or a ``resume`` path that is no
checkpoint is then one line naming the config key and exit 2 in about a
second, instead of a traceback per rank after the process group, DeepSpeed
and the model were set up. What needs more than a ``stat`` or a header
(counting samples, the vocabulary against the tokenizer, the DeepSpeed file)
is still checked by the trainer, also with a ConfigError, before the engine
is built.
"""

from __future__ import annotations

from opt_scale.config import RunConfig
from opt_scale.data.sources import check_shard_spec
from opt_scale.data.tokenizer import Tokenizer
from opt_scale.tasks.registry import trains_opt
from opt_scale.utils.cli_errors import UsageError
from opt_scale.utils.input_paths import existing_dir, existing_file, writable_dir


def validate_run_inputs(cfg: RunConfig) -> None:
    data = cfg.data
    if not data.train_shards and not data.tokenizer:
        raise UsageError("no training data: set config keys data.train_shards (the index .json written by "
                         "`opt-shards build`, or shard paths) and data.tokenizer (`opt-shards train-tokenizer`), "
                         "e.g. --set data.train_shards=runs/demo/shards/demo-index.json "
                         "data.tokenizer=runs/demo/tokenizer.model")
    check_shard_spec(data.train_shards, "data.train_shards")
    Tokenizer(data.tokenizer, key="data.tokenizer")  # loads in milliseconds: a real model with our special pieces
    if data.eval_shards:
        check_shard_spec(data.eval_shards, "data.eval_shards")
    if trains_opt(cfg.train.task) and cfg.tasks.needs_vq:
        existing_file(cfg.model.vq.checkpoint, "model.vq.checkpoint",
                      hint="MVM/DIR need the VQ tokenizer: train it with `opt-train --task vq` and pass its "
                           "vq.safetensors, or set tasks.mvm.weight=0 tasks.dir.weight=0")
    _check_resume(cfg.train.resume)
    if cfg.train.init_from:
        existing_dir(cfg.train.init_from, "train.init_from",
                     "give the pre-trained model: an opt-export directory, a checkpoint or a run directory")
    writable_dir(cfg.train.out_dir, "train.out_dir")


def _check_resume(resume: str) -> None:
    if resume in ("", "auto"):
        return
    hint = "give a checkpoint directory (<out_dir>/checkpoints/step_XXXXXXXX) or auto"
    path = existing_dir(resume, "train.resume", hint)
    from opt_scale.engine.checkpoint import MARKER  # imports torch: only for an explicit checkpoint
    if not (path / MARKER).is_file():
        raise UsageError(f"config key 'train.resume': {resume!r} is not a complete checkpoint (no {MARKER}); "
                         f"{hint}")
