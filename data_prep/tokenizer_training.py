"""``opt-shards train-tokenizer``: SentencePiece on the captions in shards."""

from __future__ import annotations

import os
import tempfile

import sentencepiece as spm

from opt_scale.data.shard_reader import iter_samples
from opt_scale.data.sources import resolve_shards
from opt_scale.data.tokenizer import MASK_PIECE


def train_tokenizer(shards: str, vocab_size: int, out: str, seed: int = 0) -> str:
    """Train a unigram model on every caption; deterministic for given input.

    Returns the path of the ``.model`` file. Single-threaded training and a
    fixed seed make the output identical for identical input.
    """
    captions = []
    for shard in resolve_shards(shards):
        for sample in iter_samples(shard.url, extensions={"txt"}):
            if "txt" in sample:
                captions.append(sample["txt"].decode("utf-8").strip().lower())
    if not captions:
        raise ValueError(f"no captions found in {shards!r}")
    prefix = out[:-len(".model")] if out.endswith(".model") else out
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    spm.set_random_generator_seed(seed)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as tmp:
        tmp.write("\n".join(captions) + "\n")
    try:
        spm.SentencePieceTrainer.train(
            input=tmp.name, model_prefix=prefix, vocab_size=vocab_size, model_type="unigram",
            character_coverage=1.0, pad_id=0, unk_id=1, bos_id=2, eos_id=3,
            control_symbols=[MASK_PIECE], hard_vocab_limit=False, num_threads=1,
            shuffle_input_sentence=False, minloglevel=2)
    finally:
        os.unlink(tmp.name)
    return prefix + ".model"
