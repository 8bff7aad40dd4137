"""SentencePiece tokenizer with the special ids the model relies on."""

from __future__ import annotations

import sentencepiece as spm

from opt_scale.utils.cli_errors import UsageError
from opt_scale.utils.input_paths import describe, existing_file

# Reserved at training time (data_prep.tokenizer_training) as control symbols:
# they have ids but no text ever encodes to them.
MASK_PIECE = "<mask>"


class Tokenizer:
    def __init__(self, model_path: str, key: str = "data.tokenizer"):
        """``key``: the config key or flag that gave ``model_path``, named by errors."""
        self.path = model_path
        hint = "train one with `opt-shards train-tokenizer`"
        existing_file(model_path, key, hint)
        try:
            self.sp = spm.SentencePieceProcessor(model_file=model_path)
        except (RuntimeError, OSError) as err:  # what SentencePiece raises for a file that is no model
            raise UsageError(f"{describe(key)}: {model_path!r} is not a SentencePiece model ({err}); {hint}") from err
        self.vocab_size = self.sp.get_piece_size()
        self.pad_id = self.sp.pad_id()
        self.bos_id = self.sp.bos_id()
        self.eos_id = self.sp.eos_id()
        self.unk_id = self.sp.unk_id()
        self.mask_id = self.sp.piece_to_id(MASK_PIECE)
        if min(self.pad_id, self.bos_id, self.eos_id) < 0 or self.mask_id == self.unk_id:
            raise UsageError(f"{describe(key)}: the tokenizer {model_path!r} lacks the pad/bos/eos/{MASK_PIECE} "
                             f"pieces the model needs; {hint}")
        self.special_ids = frozenset({self.pad_id, self.bos_id, self.eos_id, self.unk_id, self.mask_id})

    def encode(self, text: str, max_len: int) -> list[int]:
        """``[bos] pieces [eos]``, truncated to ``max_len`` (eos kept)."""
        ids = self.sp.encode(text.lower())
        ids = ids[: max_len - 2]
        return [self.bos_id, *ids, self.eos_id]

    def decode(self, ids: list[int]) -> str:
        keep = [i for i in ids if i not in self.special_ids]
        return self.sp.decode(keep)

    # Loader workers may be started by pickling (spawn/forkserver): carry the
    # path, reload the model on the other side.
    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])
