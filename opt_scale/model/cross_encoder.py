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
from .layers import INIT_STD, EncoderStack, Packing, masked_max

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
        # Optional (cross.summary_tokens, off by default): one token per shown
        # modality, the feature-wise max of its tokens (+ a learned marker),
        # so what the whole image or recording holds is one token away for
        # every query. Meant to speed up attribute learning; on the demo it
        # changed no held-out figure measurably.
        self.summary = nn.Parameter(torch.randn(3, cfg.hidden) * INIT_STD) if cfg.summary_tokens else None
        self.prefix = 1 + (3 if cfg.summary_tokens else 0)
        self.encoder = EncoderStack(cfg.layers, cfg.hidden, cfg.heads, cfg.ffn, cfg.dropout, cfg.qk_norm)

    def forward(self, text, text_valid, image, image_valid, audio, audio_valid):
        """Returns plain tensors (ZeRO-3's hooks must see a module's outputs);
        :meth:`split` turns them into a :class:`CrossOutput`."""
        B, Lt, D = text.shape
        cls = self.cls.to(text.dtype).expand(B, 1, D)
        parts, masks = [cls], [torch.ones(B, 1, dtype=torch.bool, device=text.device)]
        if self.summary is not None:
            for m, (tokens, valid) in enumerate(((text, text_valid), (image, image_valid), (audio, audio_valid))):
                parts.append((masked_max(tokens, valid) + self.summary[m].to(tokens.dtype))[:, None])
                masks.append(valid.any(1, keepdim=True))
        x = torch.cat([*parts, text, image, audio], dim=1)
        valid = torch.cat([*masks, text_valid, image_valid, audio_valid], dim=1)
        # Only the valid tokens are computed (flat, row after row), each row's
        # packed to the front of its memory row in order.
        packing = Packing.from_valid(valid)
        flat = self.encoder(x[valid], packing=packing)
        full = torch.zeros_like(x).masked_scatter(valid[..., None], flat)
        return full, packing.pad(flat), packing.lengths

    def split(self, full, packed, lengths, text_len: int, image_len: int) -> CrossOutput:
        p = self.prefix
        t, i = p + text_len, p + text_len + image_len
        return CrossOutput(cls=full[:, 0], text=full[:, p:t], image=full[:, t:i], audio=full[:, i:],
                           memory=packed, memory_lengths=lengths)
