"""Closed-form parameter and FLOP counts per part of OPT.

DeepSpeed's flops profiler miscounts under ZeRO-3 (partitioned weights look
empty), so throughput and MFU use these analytic counts instead. Tests check
the parameter formulas against real modules built on the meta device.

Conventions: a multiply-add is 2 FLOPs; attention counts the full n x n
score and value products (causal halves are not subtracted, as in most MFU
reports); sequence lengths are the configured maxima (text ``max_len``, all
patches, audio tokens at ``max_seconds``); a training step costs 3x the
forward (backward = 2x forward). The towers run twice per sample (masked and
clean inputs), the cross-modal encoder on four views (masked, DTR with the
text dropped, DIR with the image dropped, matching), decoders and heads once;
see tasks/pretrainer.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import AudioConfig, ModelConfig, TransformerShape, VisionConfig

DEFAULT_VOCAB = 32_000  # used when model.text.vocab_size is 0 (filled from the tokenizer at run time)


def linear(i: int, o: int, bias: bool = True) -> int:
    return i * o + (o if bias else 0)


def layer_norm(d: int) -> int:
    return 2 * d


def qk_norm(s: TransformerShape) -> int:
    """One attention's cosine-attention scales (layers.QKNorm): one per head."""
    return s.heads if s.qk_norm else 0


def encoder_block(d: int, f: int) -> int:
    return layer_norm(d) + linear(d, 3 * d) + linear(d, d) + layer_norm(d) + linear(d, f) + linear(f, d)


def encoder_stack(s: TransformerShape) -> int:
    return s.layers * (encoder_block(s.hidden, s.ffn) + qk_norm(s)) + layer_norm(s.hidden)


def projection(d: int, out: int) -> int:
    return 0 if d == out else linear(d, out)


def decoder_block(d: int, f: int, memory: int) -> int:
    self_attn = linear(d, 3 * d) + linear(d, d)
    cross_attn = linear(d, d) + linear(memory, 2 * d) + linear(d, d)
    return 3 * layer_norm(d) + self_attn + cross_attn + linear(d, f) + linear(f, d)


def stem_widths(v: VisionConfig) -> list[int]:
    """Channel widths of the conv stem's stride-2 convs (vision_encoder.ConvStem)."""
    n = v.patch_size.bit_length() - 1
    return [max(16, v.hidden >> (n - 1 - i)) for i in range(n)]


def stem_parameters(v: VisionConfig) -> int:
    if v.stem == "linear":
        return linear(3 * v.patch_size ** 2, v.hidden)
    total, c_in = 0, 3
    for w in stem_widths(v):
        total += 9 * c_in * w + w + 2 * w   # conv + bias, GroupNorm affine
        c_in = w
    return total + linear(c_in, v.hidden)


def stem_flops(v: VisionConfig) -> float:
    if v.stem == "linear":
        return 2 * v.num_patches * 3 * v.patch_size ** 2 * v.hidden
    total, c_in, side = 0.0, 3, v.image_size
    for w in stem_widths(v):
        side = (side + 1) // 2
        total += 2 * side * side * 9 * c_in * w
        c_in = w
    return total + 2 * v.num_patches * c_in * v.hidden


def conv_out_freq(a: AudioConfig) -> int:
    f = a.n_mels
    for _ in range(a.conv_layers):
        f = (f - 1) // 2 + 1
    return f


def audio_tokens(a: AudioConfig) -> int:
    return a.tokens_for_frames(a.max_frames)


def vocab(cfg: ModelConfig) -> int:
    return cfg.text.vocab_size or DEFAULT_VOCAB


def part_parameters(cfg: ModelConfig, mvm_regress: bool = False, contrastive_dim: int = 128,
                    matching_similarity: bool = True) -> dict[str, int]:
    """Trainable parameters of each part of :class:`OPTPretrainer` (tied weights once)."""
    t, v, a, c = cfg.text, cfg.vision, cfg.audio, cfg.cross
    d, V, K = c.hidden, vocab(cfg), cfg.vq.codebook_size
    C = a.conv_channels
    conv = (9 * C + C) + (a.conv_layers - 1) * (9 * C * C + C)
    parts = {
        "text_encoder": V * t.hidden + t.max_len * t.hidden + t.hidden + layer_norm(t.hidden) + encoder_stack(t)
                        + projection(t.hidden, d),
        "vision_encoder": stem_parameters(v) + v.num_patches * v.hidden + 2 * v.hidden
                          + layer_norm(v.hidden) + encoder_stack(v) + projection(v.hidden, d),
        "audio_encoder": conv + linear(C * conv_out_freq(a), a.hidden) + audio_tokens(a) * a.hidden + 2 * a.hidden
                         + layer_norm(a.hidden) + encoder_stack(a) + projection(a.hidden, d),
        "cross_encoder": d + (3 * d if c.summary_tokens else 0) + encoder_stack(c),
    }
    for name, dec, dec_vocab, dec_len in (("text_decoder", cfg.text_decoder, V, t.max_len),
                                          ("image_decoder", cfg.image_decoder, K + 1, v.num_patches)):
        h = dec.hidden
        parts[name] = (dec_vocab * h + dec_len * h + dec.layers * (decoder_block(h, dec.ffn, d) + 2 * qk_norm(dec))
                       + layer_norm(h) + dec_vocab)
    parts["heads"] = ((linear(d, d) + layer_norm(d) + V)                   # MLM (projection tied to the text embedding)
                      + (linear(d, d) + layer_norm(d) + K * d + K)         # MVM
                      + linear(d, a.hidden)                                # MAM
                      + linear(d, d) + linear(d, 5)                        # matching
                      + ((linear(6, d) + linear(d, d)) if matching_similarity else 0)
                      + 3 * linear(d, contrastive_dim) + 1                 # contrastive projections + temperature
                      + (linear(d, 3 * v.patch_size ** 2) if mvm_regress else 0))
    return parts


def encoder_flops(s: TransformerShape, n: int) -> float:
    d, f = s.hidden, s.ffn
    return s.layers * (2 * n * (4 * d * d + 2 * d * f) + 4 * n * n * d)


def decoder_flops(s: TransformerShape, n: int, memory_len: int, memory_hidden: int, out_vocab: int) -> float:
    d, f = s.hidden, s.ffn
    per_layer = (2 * n * 4 * d * d + 4 * n * n * d                    # causal self-attention
                 + 2 * n * 2 * d * d + 2 * memory_len * memory_hidden * 2 * d + 4 * n * memory_len * d  # cross
                 + 2 * n * 2 * d * f)
    return s.layers * per_layer + 2 * n * d * out_vocab


@dataclass(frozen=True)
class SequenceLengths:
    text: int
    image: int
    audio: int

    summary: int = 3   # cross_encoder's summary tokens (0 with cross.summary_tokens off)

    @property
    def cross(self) -> int:
        return 1 + self.summary + self.text + self.image + self.audio


def max_lengths(cfg: ModelConfig) -> SequenceLengths:
    return SequenceLengths(cfg.text.max_len, cfg.vision.num_patches, audio_tokens(cfg.audio),
                           3 if cfg.cross.summary_tokens else 0)


def part_forward_flops(cfg: ModelConfig, lengths: SequenceLengths | None = None, views: int = 2,
                       cross_views: int = 4, mask_prob: float = 0.15, contrastive_dim: int = 128) -> dict[str, float]:
    """Forward FLOPs per training sample, by part."""
    n = lengths or max_lengths(cfg)
    t, v, a, c = cfg.text, cfg.vision, cfg.audio, cfg.cross
    d = c.hidden
    frames = a.max_frames if lengths is None else n.audio * 2 ** a.conv_layers
    conv = 0.0
    T, F, ch_in = frames, a.n_mels, 1
    for _ in range(a.conv_layers):
        T, F = (T - 1) // 2 + 1, (F - 1) // 2 + 1
        conv += 2 * T * F * a.conv_channels * ch_in * 9
        ch_in = a.conv_channels
    flops = {
        "text_encoder": views * (encoder_flops(t, n.text) + 2 * n.text * projection(t.hidden, d)),
        "vision_encoder": views * (stem_flops(v) + encoder_flops(v, n.image)
                                   + 2 * n.image * projection(v.hidden, d)),
        "audio_encoder": conv + 2 * n.audio * a.conv_channels * conv_out_freq(a) * a.hidden
                         + views * (encoder_flops(a, n.audio) + 2 * n.audio * projection(a.hidden, d)),
        "cross_encoder": cross_views * encoder_flops(c, n.cross),
        "text_decoder": decoder_flops(cfg.text_decoder, n.text, n.cross, d, vocab(cfg)),
        "image_decoder": decoder_flops(cfg.image_decoder, n.image, n.cross, d, cfg.vq.codebook_size + 1),
    }
    masked = lambda length: mask_prob * length  # noqa: E731
    flops["heads"] = (2 * masked(n.text) * (d * d + d * vocab(cfg))
                      + 2 * masked(n.image) * (d * d + d * cfg.vq.codebook_size)
                      + 2 * masked(n.audio) * d * a.hidden + 2 * (masked(n.audio) ** 2) * a.hidden
                      + 2 * (d * d + 5 * d) + 3 * 2 * d * contrastive_dim)
    return flops


def train_flops_per_sample(cfg: ModelConfig, lengths: SequenceLengths | None = None) -> float:
    return 3.0 * sum(part_forward_flops(cfg, lengths).values())


def model_table(cfg: ModelConfig) -> list[dict]:
    """Rows for ``opt-train --print-model``: parameters and FLOPs per part."""
    params = part_parameters(cfg)
    fwd = part_forward_flops(cfg)
    rows = [{"part": k, "params": params[k], "params_M": params[k] / 1e6, "fwd_GFLOP_per_sample": fwd[k] / 1e9,
             "train_GFLOP_per_sample": 3 * fwd[k] / 1e9} for k in params]
    rows.append({"part": "total", "params": sum(params.values()), "params_M": sum(params.values()) / 1e6,
                 "fwd_GFLOP_per_sample": sum(fwd.values()) / 1e9,
                 "train_GFLOP_per_sample": 3 * sum(fwd.values()) / 1e9})
    return rows
