"""Cross-modal encoder over [CLS | text | image | audio].

The valid tokens of each sample are packed to the front (text, then image,
then audio, in order) so that padding and whole-modality masking become one
key length per sample, which the attention kernel takes as a small int
vector. Outputs are scattered back to each modality's own layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .config import CrossConfig
from .layers import INIT_STD, EncoderStack

@dataclass
class CrossOutput:
    cls: torch.Tensor          # [B, D]
    text: torch.Tensor         # [B, Lt, D] (zeros where not valid)
    image: torch.Tensor        # [B, Ni, D]
    audio: torch.Tensor        # [B, Ta, D]
    memory: torch.Tensor       # packed [B, Lmax, D]: what decoders attend to
    memory_lengths: torch.Tensor  # [B]


class CrossModalEncoder(nn.Module):
    def __init__(self, cfg: CrossConfig):
        super().__init__()
        self.cls = nn.Parameter(torch.randn(cfg.hidden) * INIT_STD)
        self.encoder = EncoderStack(cfg.layers, cfg.hidden, cfg.heads, cfg.ffn, cfg.dropout)

    def forward(self, text, text_valid, image, image_valid, audio, audio_valid):
        """Returns plain tensors (ZeRO-3's hooks must see a module's outputs);
        :meth:`split` turns them into a :class:`CrossOutput`."""
        B, Lt, D = text.shape
        cls = self.cls.to(text.dtype).expand(B, 1, D)
        x = torch.cat([cls, text, image, audio], dim=1)
        valid = torch.cat([torch.ones(B, 1, dtype=torch.bool, device=x.device), text_valid, image_valid,
                           audio_valid], dim=1)
        # Stable sort on "invalid" moves valid tokens first, keeping their order.
        order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)
        lengths = valid.sum(dim=1)
        lmax = int(lengths.max())
        idx = order[:, :lmax]
        gather_idx = idx[..., None].expand(B, lmax, D)
        packed = self.encoder(x.gather(1, gather_idx), key_lengths=lengths)
        full = torch.zeros_like(x).scatter(1, gather_idx, packed)
        full = full * valid[..., None].to(full.dtype)
        return full, packed, lengths

    @staticmethod
    def split(full, packed, lengths, text_len: int, image_len: int) -> CrossOutput:
        t, i = 1 + text_len, 1 + text_len + image_len
        return CrossOutput(cls=full[:, 0], text=full[:, 1:t], image=full[:, t:i], audio=full[:, i:],
                           memory=packed, memory_lengths=lengths)
