"""Text tower: SentencePiece token embeddings (+ position + modality type, see tower.py)."""

from __future__ import annotations

import torch

from .config import TextConfig
from .layers import Embedding
from .tower import TokenTower


class TextEncoder(TokenTower):
    def __init__(self, cfg: TextConfig, out_hidden: int):
        super().__init__(cfg, cfg.max_len, out_hidden, maskable=False)  # MLM masks with the [mask] piece
        if cfg.vocab_size <= 0:
            raise ValueError("model.text.vocab_size must be set (it is filled in from the tokenizer)")
        self.tokens = Embedding(cfg.vocab_size, cfg.hidden)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids [B, L], lengths [B] -> tokens [B, L, out_hidden], valid [B, L]."""
        return self.encode(self.tokens(ids), lengths)
