"""The arithmetic behind ``opt-bench plan``: model-state and activation bytes per GPU.

Pure functions of the model config, no torch: see :mod:`.plan` for what is
estimated, from what, and what is left out.
"""

from __future__ import annotations

from dataclasses import dataclass

from opt_scale.model.config import ModelConfig, TransformerShape
from opt_scale.model.flops import SequenceLengths, conv_out_freq, stem_widths, vocab

# Bytes per parameter under bf16 mixed precision with Adam. The optimizer
# states are DeepSpeed's 12 (fp32 master copy + Adam m + v). Gradients are
# charged at 4 bytes, as DeepSpeed's own ZeRO-3 estimator charges them: its
# optimizer step reads an fp32 gradient (stage 3 upcasts the bf16 gradient
# partition per sub-group, `_prepare_fp32_grad_for_sub_group`; ZeRO-Offload's
# CPU Adam keeps fp32 gradients on the host). The ZeRO paper's 2 + 2 + 12 =
# 16 counts the bf16 gradient alone and falls 11% short of DeepSpeed's 18.
PARAM_BYTES = 2
GRAD_BYTES = 4
OPTIMIZER_BYTES = 12
# A ZeRO-3 layer is gathered whole for its forward and backward: its bf16
# parameters plus its bf16 gradients before the reduce-scatter (DeepSpeed's
# `largest_layer_memory` = 4 x the largest layer's parameters).
GATHERED_BYTES = 4
# DeepSpeed's `additional_buffer_factor` for offloaded states: pinned staging
# buffers and the CPU optimizer's work space on top of the states themselves.
HOST_BUFFER_FACTOR = 1.5
ACTIVATION_BYTES = 2  # bf16 activations


@dataclass(frozen=True)
class ModelStates:
    """Model-state bytes per GPU (and offloaded to its host), one ZeRO setting."""

    params: float
    grads: float
    optimizer: float
    gathered: float        # ZeRO-3: the largest layer gathered whole (params + grads)
    host: float            # offloaded states per GPU, before HOST_BUFFER_FACTOR

    @property
    def gpu(self) -> float:
        return self.params + self.grads + self.optimizer + self.gathered


def model_states(total_params: int, largest_layer: int, world: int, zero_stage: int, offload: str) -> ModelStates:
    """Stage 1 partitions the optimizer states over the world, 2 also the
    gradients, 3 also the parameters. ``offload="optimizer"`` moves the
    optimizer states and gradients (the CPU optimizer's inputs) to the host,
    ``"all"`` the parameters too (stage 3 only)."""
    share = {kind: (total_params / world if zero_stage >= stage else total_params)
             for kind, stage in (("optimizer", 1), ("grads", 2), ("params", 3))}
    params, grads, optimizer = (PARAM_BYTES * share["params"], GRAD_BYTES * share["grads"],
                                OPTIMIZER_BYTES * share["optimizer"])
    host = 0.0
    if offload in ("optimizer", "all"):
        host += grads + optimizer
        grads = optimizer = 0.0
    if offload == "all":
        host += params
        params = 0.0
    gathered = GATHERED_BYTES * largest_layer if zero_stage == 3 else 0.0
    return ModelStates(params, grads, optimizer, gathered, host)


def largest_layer_parameters(cfg: ModelConfig) -> int:
    """Parameters of the largest single module (its own, not its children's), as
    DeepSpeed's ``model_to_params`` finds them: the unit ZeRO-3 gathers whole.
    The candidates mirror flops.part_parameters' terms; a test checks the result
    on real modules."""
    t, v, a, c = cfg.text, cfg.vision, cfg.audio, cfg.cross
    d, V, K = c.hidden, vocab(cfg), cfg.vq.codebook_size
    candidates = [
        V * t.hidden,                                       # text token embedding (the MLM head's projection:
                                                            # an external parameter there, not its own)
        K * d + K,                                          # MVM codebook projection + bias
        a.conv_channels * conv_out_freq(a) * a.hidden + a.hidden,   # audio subsampler's output linear
        t.max_len * t.hidden, v.num_patches * v.hidden,     # position embeddings
    ]
    if v.stem == "conv":
        widths = stem_widths(v)
        candidates.append(9 * (widths[-2] if len(widths) > 1 else 3) * widths[-1] + widths[-1])
    for shape in (t, v, a, c, cfg.text_decoder, cfg.image_decoder):
        candidates += [shape.hidden * 3 * shape.hidden + 3 * shape.hidden,   # fused QKV
                       shape.hidden * shape.ffn + shape.ffn]                 # FFN up (down: same weights, less bias)
    for dec, dec_vocab in ((cfg.text_decoder, V), (cfg.image_decoder, K + 1)):
        candidates += [dec_vocab * dec.hidden,                               # decoder token embedding (tied output)
                       d * 2 * dec.hidden + 2 * dec.hidden]                  # cross-attention K/V over the memory
    return max(candidates)


# --- activations --------------------------------------------------------------------------------------------------
# Per transformer layer, bf16, no tensor/sequence parallelism: Korthikanti et
# al. 2022 ("Reducing Activation Recomputation in Large Transformer Models",
# eq. 1): s*b*h*34 + 5*a*s^2*b bytes. The 34 s*b*h are the inputs kept for
# backward (QKV input 2, Q and K 4, V 2, output-projection input 2, attention
# dropout mask 1; MLP input 2, GELU input 8, GELU output 8, dropout mask 1;
# two LayerNorm inputs 4); 5*a*s^2*b are the softmax output (2), its dropout
# mask (1) and output (2). A fused (flash) attention kernel, this code's CUDA
# path (kernels/attention.py "triton"), keeps none of the s^2 terms, only the
# fp32 log-sum-exp per row and head: 4*a*s*b.
LINEAR_TERMS = 34
SCORE_TERMS = 5
# Cross-attention in a decoder layer, by the same accounting: its LayerNorm
# input and query-side tensors (13 s*b*h: LN 2, Q input 2, Q 2, output, context
# and dropout as in self-attention) plus K and V over m memory tokens (4 m*b*h),
# and the scores over (s, m).
CROSS_QUERY_TERMS = 13
CROSS_MEMORY_TERMS = 4


def attention_scores(a: int, s: float, keys: float, b: float, fused: bool) -> float:
    return 4 * a * s * b if fused else SCORE_TERMS * a * s * keys * b


def encoder_layer(shape: TransformerShape, s: float, b: float, fused: bool) -> float:
    return LINEAR_TERMS * s * b * shape.hidden + attention_scores(shape.heads, s, s, b, fused)


def decoder_layer(shape: TransformerShape, s: float, memory: float, b: float, fused: bool) -> float:
    return (encoder_layer(shape, s, b, fused)
            + CROSS_QUERY_TERMS * s * b * shape.hidden + CROSS_MEMORY_TERMS * memory * b * shape.hidden
            + attention_scores(shape.heads, s, memory, b, fused))


@dataclass(frozen=True)
class Stack:
    """One transformer stack as the pretrainer runs it: ``rows`` samples' worth of copies/views."""

    name: str
    shape: TransformerShape
    length: float
    rows: int                 # batch copies per sample: towers 2, cross encoder 4 views, decoders 1
    memory: float = 0.0       # decoders: the cross encoder's sequence they attend to
    decoder: bool = False

    def layer_bytes(self, b: float, fused: bool) -> float:
        rows = self.rows * b
        if self.decoder:
            return decoder_layer(self.shape, self.length, self.memory, rows, fused)
        return encoder_layer(self.shape, self.length, rows, fused)

    def input_bytes(self, b: float) -> float:
        """What activation checkpointing keeps per layer: the layer's input."""
        return ACTIVATION_BYTES * self.length * self.rows * b * self.shape.hidden


def stacks(cfg: ModelConfig, n: SequenceLengths) -> list[Stack]:
    """The towers on 2 copies (masked, clean), the cross encoder on 4 views
    (masked, DTR, DIR, matching), each decoder once (tasks/pretrainer.py)."""
    return [Stack("text_encoder", cfg.text, n.text, 2), Stack("vision_encoder", cfg.vision, n.image, 2),
            Stack("audio_encoder", cfg.audio, n.audio, 2), Stack("cross_encoder", cfg.cross, n.cross, 4),
            Stack("text_decoder", cfg.text_decoder, n.text, 1, memory=n.cross, decoder=True),
            Stack("image_decoder", cfg.image_decoder, n.image, 1, memory=n.cross, decoder=True)]


def front_end_bytes(cfg: ModelConfig, audio_tokens: float, b: float) -> float:
    """Conv front ends, outside the checkpointed transformer layers: the vision
    stem (conv, GroupNorm and activation outputs, on 2 copies) and the audio
    subsampler (conv and GELU outputs, once per sample)."""
    v, a = cfg.vision, cfg.audio
    total = 0.0
    if v.stem == "conv":
        side = v.image_size
        for w in stem_widths(v):
            side = (side + 1) // 2
            total += 2 * b * 3 * ACTIVATION_BYTES * side * side * w
    frames, freq = audio_tokens * 2 ** a.conv_layers, a.n_mels
    for _ in range(a.conv_layers):
        frames, freq = frames / 2, (freq - 1) // 2 + 1
        total += b * 2 * ACTIVATION_BYTES * frames * freq * a.conv_channels
    return total


def activation_bytes(cfg: ModelConfig, n: SequenceLengths, b: float, checkpointing: bool, fused: bool) -> float:
    """Activations kept for backward on one GPU, micro batch ``b``. With
    per-layer checkpointing each layer keeps its input, and backward rebuilds
    one layer's full activations at a time (the largest layer's, counted once)."""
    parts = stacks(cfg, n)
    if not checkpointing:
        layers = sum(p.shape.layers * p.layer_bytes(b, fused) for p in parts)
    else:
        layers = (sum(p.shape.layers * p.input_bytes(b) for p in parts)
                  + max(p.layer_bytes(b, fused) for p in parts if p.shape.layers))
    return layers + front_end_bytes(cfg, n.audio, b)


def scaled_lengths(n: SequenceLengths, fill: tuple[float, float, float]) -> SequenceLengths:
    """Mean lengths of packed sequences: each modality's maximum times its fill."""
    return SequenceLengths(round(n.text * fill[0]), round(n.image * fill[1]), round(n.audio * fill[2]), n.summary)
