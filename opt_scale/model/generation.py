"""Generation: captions (greedy / beam search) and text-to-image (top-k).

Runs on consolidated weights (an exported or single-process model), never
inside a ZeRO-3 engine: decoding calls decoder methods step by step, with
per-layer KV caches so each new token costs one position of attention.
Any subset of modalities can condition: an absent modality is fed as a
masked dummy, exactly as during training.
"""

from __future__ import annotations

import torch

from opt_scale.data.tokenizer import Tokenizer
from opt_scale.tasks.pretrainer import OPTPretrainer

from .decoders import CausalDecoder, reorder_caches


class OPTGenerator:
    def __init__(self, pretrainer: OPTPretrainer, tokenizer: Tokenizer):
        self.net = pretrainer.eval()
        self.tok = tokenizer
        self.cfg = pretrainer.model_cfg

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    # -- conditioning -----------------------------------------------------

    @torch.no_grad()
    def encode(self, batch_size: int, text_ids=None, text_len=None, pixels=None, mel=None, mel_len=None):
        """Cross-modal memory from whichever modalities are given."""
        dev, B = self.device, batch_size
        keep = torch.tensor([text_ids is not None, pixels is not None, mel is not None], device=dev).expand(B, 3)
        if text_ids is None:
            text_ids = torch.tensor([[self.tok.bos_id, self.tok.eos_id]], device=dev).expand(B, 2)
            text_len = torch.full((B,), 2, device=dev)
        if pixels is None:
            size = self.cfg.vision.image_size
            pixels = torch.zeros(B, 3, size, size, dtype=torch.uint8, device=dev)
        if mel is None:
            mel = torch.zeros(B, 4, self.cfg.audio.n_mels, device=dev)
            mel_len = torch.full((B,), 4, device=dev)
        towers = self.net.model.encode_towers(text_ids.to(dev), text_len.to(dev), pixels.to(dev), mel.to(dev),
                                              mel_len.to(dev))
        out = self.net.model.fuse(towers, keep.contiguous())
        return out.memory, out.memory_lengths

    # -- captions ---------------------------------------------------------

    @torch.no_grad()
    def caption(self, pixels=None, mel=None, mel_len=None, beam: int = 1, max_len: int | None = None,
                length_penalty: float = 1.0) -> list[str]:
        B = (pixels if pixels is not None else mel).shape[0]
        memory, lengths = self.encode(B, pixels=pixels, mel=mel, mel_len=mel_len)
        max_len = max_len or self.cfg.text.max_len
        dec = self.net.text_decoder
        if beam <= 1:
            ids = greedy(dec, memory, lengths, self.tok.bos_id, self.tok.eos_id, max_len)
        else:
            ids = beam_search(dec, memory, lengths, self.tok.bos_id, self.tok.eos_id, max_len, beam, length_penalty)
        return [self.tok.decode(row) for row in ids]

    # -- text to image ----------------------------------------------------

    @torch.no_grad()
    def text_to_image(self, captions: list[str], top_k: int = 50, temperature: float = 1.0,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """Captions -> uint8 images [B, 3, H, W] through the image decoder and the VQ decoder."""
        vq = self.net.vq
        if vq is None:
            raise RuntimeError("text-to-image needs the VQ tokenizer (model.vq.checkpoint)")
        ids = [self.tok.encode(c, self.cfg.text.max_len) for c in captions]
        L = max(map(len, ids))
        text = torch.full((len(ids), L), self.tok.pad_id, dtype=torch.long)
        for i, row in enumerate(ids):
            text[i, :len(row)] = torch.tensor(row)
        memory, lengths = self.encode(len(ids), text_ids=text, text_len=torch.tensor([len(r) for r in ids]))
        dec = self.net.image_decoder
        codes = sample_codes(dec, memory, lengths, dec.bos, self.cfg.vision.num_patches, top_k, temperature,
                             generator)
        images = vq.to(self.device).decode_codes(codes)
        return (images * 255).round().to(torch.uint8)


def greedy(dec: CausalDecoder, memory, lengths, bos: int, eos: int, max_len: int) -> list[list[int]]:
    B = memory.shape[0]
    caches = dec.new_caches()
    tokens = torch.full((B, 1), bos, dtype=torch.long, device=memory.device)
    out = tokens
    done = torch.zeros(B, dtype=torch.bool, device=memory.device)
    for pos in range(max_len - 1):
        logits = dec.step(tokens, memory, lengths, caches, start=pos)
        tokens = logits.argmax(-1, keepdim=True)
        tokens = tokens.masked_fill(done[:, None], eos)
        out = torch.cat([out, tokens], 1)
        done |= tokens[:, 0] == eos
        if done.all():
            break
    return [_until_eos(row, eos) for row in out[:, 1:].tolist()]


def beam_search(dec: CausalDecoder, memory, lengths, bos: int, eos: int, max_len: int, beam: int,
                length_penalty: float = 1.0) -> list[list[int]]:
    """Standard beam search; finished beams only extend with eos at no cost;
    the best hypothesis is chosen by log-probability / length ** penalty."""
    B, dev = memory.shape[0], memory.device
    memory = memory.repeat_interleave(beam, 0)
    lengths = lengths.repeat_interleave(beam, 0)
    caches = dec.new_caches()
    scores = torch.full((B, beam), float("-inf"), device=dev)
    scores[:, 0] = 0.0
    seqs = torch.full((B * beam, 1), bos, dtype=torch.long, device=dev)
    done = torch.zeros(B * beam, dtype=torch.bool, device=dev)
    gen_len = torch.zeros(B * beam, device=dev)
    for pos in range(max_len - 1):
        logp = torch.log_softmax(dec.step(seqs[:, -1:], memory, lengths, caches, start=pos), -1)
        V = logp.shape[-1]
        frozen = torch.full_like(logp, float("-inf"))
        frozen[:, eos] = 0.0
        logp = torch.where(done[:, None], frozen, logp)
        cand = (scores.view(-1, 1) + logp).view(B, beam * V)
        scores, flat = cand.topk(beam, dim=1)
        origin = (flat // V) + torch.arange(B, device=dev)[:, None] * beam
        token = (flat % V).view(-1, 1)
        origin = origin.view(-1)
        reorder_caches(caches, origin)
        seqs = torch.cat([seqs[origin], token], 1)
        gen_len = gen_len[origin] + (~done[origin]).float()
        done = done[origin] | (token[:, 0] == eos)
        if done.all():
            break
    normalised = scores.view(-1) / gen_len.clamp(min=1) ** length_penalty
    best = normalised.view(B, beam).argmax(1) + torch.arange(B, device=dev) * beam
    return [_until_eos(seqs[i, 1:].tolist(), eos) for i in best.tolist()]


def sample_codes(dec: CausalDecoder, memory, lengths, bos: int, n: int, top_k: int, temperature: float,
                 generator: torch.Generator | None) -> torch.Tensor:
    B, dev = memory.shape[0], memory.device
    caches = dec.new_caches()
    tokens = torch.full((B, 1), bos, dtype=torch.long, device=dev)
    codes = []
    for pos in range(n):
        logits = dec.step(tokens, memory, lengths, caches, start=pos)[:, :bos]  # never sample [bos]
        logits = logits / max(temperature, 1e-6)
        if top_k:
            kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        tokens = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)
        codes.append(tokens)
    return torch.cat(codes, 1)


def _until_eos(row: list[int], eos: int) -> list[int]:
    return row[: row.index(eos)] if eos in row else row
