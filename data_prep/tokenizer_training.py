"""``opt-shards train-tokenizer``: SentencePiece on the captions in shards."""

from __future__ import annotations

import io
import logging
import os

import sentencepiece as spm

from opt_scale.data.shard_reader import iter_samples
from opt_scale.data.sources import resolve_shards
from opt_scale.data.tokenizer import MASK_PIECE

from .shard_writer import atomic_write_bytes

log = logging.getLogger(__name__)


MODEL_TYPES = ("unigram", "bpe")


def train_tokenizer(shards: str, vocab_size: int, out: str, seed: int = 0, model_type: str = "unigram") -> str:
    """Train a SentencePiece model on every caption; byte-identical output for identical input.

    ``unigram`` suits real caption corpora; on a tiny, repetitive corpus (the
    demo's) its pruning stops near character level, far below the requested
    size, where ``bpe`` still merges whole words. A vocabulary much smaller
    than asked for is reported.

    Returns the path of the ``.model`` file. Single-threaded training, a fixed
    seed and captions in shard order make training deterministic; training
    from an iterator into memory keeps file names (a temporary input file,
    the output prefix) out of the model's recorded trainer spec, which would
    otherwise make two runs differ.
    """
    captions = []
    for shard in resolve_shards(shards):
        for sample in iter_samples(shard.url, extensions={"txt"}):
            if "txt" in sample:
                captions.append(sample["txt"].decode("utf-8").strip().lower())
    if not captions:
        raise ValueError(f"no captions found in {shards!r}")
    path = out if out.endswith(".model") else out + ".model"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(captions), model_writer=model, vocab_size=vocab_size, model_type=model_type,
        character_coverage=1.0, pad_id=0, unk_id=1, bos_id=2, eos_id=3,
        control_symbols=[MASK_PIECE], hard_vocab_limit=False, num_threads=1,
        shuffle_input_sentence=False, minloglevel=2)
    atomic_write_bytes(path, model.getvalue())
    size = spm.SentencePieceProcessor(model_proto=model.getvalue()).get_piece_size()
    if size < vocab_size // 2:
        if model_type == "unigram":
            log.warning("%s: only %d pieces of the %d asked for (a small or repetitive corpus); captions will "
                        "tokenize into many short pieces; --model-type bpe merges whole words", path, size, vocab_size)
        else:
            log.info("%s: %d pieces of the %d asked for: the corpus supports no more merges (its words are "
                     "whole pieces)", path, size, vocab_size)
    return path
