"""Two optimizer steps of a small OPT under DeepSpeed ZeRO-3, one process or
two; writes every micro-batch's losses as JSON.

Batch A has all three modalities but for its last row, an audio-text pair
(no image); batch B has no audio at all (image-text pairs: zero valid frames,
audio absent). Two ranks: rank 0 trains on A, rank 1 on B. One
process: the same two batches as two accumulated micro-batches, which gives
the same averaged gradient, so the losses and the weights must agree step
for step. Plain SGD without clipping: its update is proportional to the
gradient, so a gradient off by any factor shows in the weights (Adam's
first step, lr x sign(g), and clipping hide such a factor).

``--recompute``: with model.activation_checkpointing (every block recomputed
in backward, its ZeRO-3 partitions gathered a second time), which must not
change a loss or a weight. ``--compile``: with train.compile's blocks
(``compile_blocks``, backend eager: torch.compile's graph capture, each
autograd without generating code), each block a ZeRO-3 leaf; the same holds.
"""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from opt_scale.engine import distributed  # noqa: E402
from tests.model_fixtures import random_vq, small_config  # noqa: E402

VOCAB = 60


def synthetic_batch(cfg, seed: int, with_audio: bool, B: int = 4) -> dict:
    g = torch.Generator().manual_seed(seed)
    L, T, S = 12, 80, cfg.model.vision.image_size
    text = torch.randint(5, VOCAB, (B, L), generator=g)
    text[:, 0], text[:, -1] = 2, 3
    text_len = torch.full((B,), L)
    mlm_labels = torch.full((B, L), -100)
    mlm_labels[:, 3] = text[:, 3]
    mlm_input = text.clone()
    mlm_input[:, 3] = 4
    n_patch = cfg.model.vision.num_patches
    mvm = torch.zeros(B, n_patch, dtype=torch.bool)
    mvm[:, ::7] = True
    keep = torch.ones(B, 3, dtype=torch.bool)
    if with_audio:
        mel, mel_len = torch.randn(B, T, 80, generator=g), torch.full((B,), T)
        mam = torch.zeros(B, cfg.model.audio.tokens_for_frames(T), dtype=torch.bool)
        mam[:, ::5] = True
    else:  # no audio in this batch at all: a masked dummy, never a skipped tower
        mel, mel_len = torch.zeros(B, 4, 80), torch.zeros(B, dtype=torch.long)
        mam = torch.zeros(B, cfg.model.audio.tokens_for_frames(4), dtype=torch.bool)
        keep[:, 2] = False
    present = torch.ones(B, 3, dtype=torch.bool)
    match_label, match_keep = torch.tensor([4, 1, 2, 0][:B]), torch.ones(B, 3, dtype=torch.bool)
    pixels = torch.randint(0, 256, (B, 3, S, S), dtype=torch.uint8, generator=g)
    if with_audio:  # the last row: an audio-text pair, its image a zero stand-in
        present[-1, 1] = keep[-1, 1] = match_keep[-1, 1] = False
        pixels[-1] = 0
        match_label[-1] = 2  # class 0 with the image left out: the text-audio pair disagrees
    else:
        present[:, 2] = match_keep[:, 2] = False
        match_label = torch.tensor([4, 1, 4, 1][:B])  # classes 4 1 2 0 with the audio left out
    dtr_keep = torch.tensor([[False, True, True]] * B) & present
    dir_keep = torch.tensor([[True, False, True]] * B) & present
    return {"text_ids": text, "text_len": text_len, "mlm_input_ids": mlm_input, "mlm_labels": mlm_labels,
            "pixels": pixels, "mel": mel, "mel_len": mel_len, "present": present, "modality_keep": keep,
            "mvm_mask": mvm, "mam_mask": mam, "image_uid": torch.arange(B) + 100 * seed, "dtr_keep": dtr_keep,
            "dir_keep": dir_keep, "match_class": torch.tensor([4, 1, 2, 0][:B]), "match_label": match_label,
            "match_keep": match_keep, "match_u": torch.rand(B, 2, generator=g)}


def main(out_path: str, recompute: bool = False, compile_blocks: bool = False) -> None:
    env = distributed.detect()
    distributed.prepare_environment(env)
    import deepspeed
    distributed.init(env)
    from opt_scale.engine.config import TrainConfig
    from opt_scale.engine.ds_config import build_ds_config
    from opt_scale.tasks.pretrainer import OPTPretrainer

    cfg = small_config(VOCAB)
    cfg.model.activation_checkpointing = recompute
    # Each rank's own rows as contrastive and matching candidates: the global
    # batch of two ranks is then the same as two accumulated micro-batches
    # (gathering across ranks is tested in test_contrastive_gather.py).
    cfg.tasks.contrastive.gather = False
    accum = 2 if env.world_size == 1 else 1
    train = TrainConfig(micro_batch_size=4, grad_accum=accum, ds_config="zero3_cpu", precision="fp32",
                        lr=0.1, warmup_steps=0, grad_clip=0.0)
    ds = {**build_ds_config(train, env.world_size), "zero_allow_untested_optimizer": True}  # SGD
    vq = random_vq(cfg, seed=1)
    torch.manual_seed(0)
    with deepspeed.zero.Init(config_dict_or_path=ds):
        net = OPTPretrainer(cfg.model, cfg.tasks, vq=vq)
    opt = torch.optim.SGD(net.parameters(), lr=train.lr)
    if compile_blocks:
        from opt_scale.model.layers import compile_blocks as compile_all
        compile_all(net, "eager")
    engine, *_ = deepspeed.initialize(model=net, optimizer=opt, config=ds)
    initial = whole_state(engine)
    batches = [synthetic_batch(cfg, 10, True), synthetic_batch(cfg, 11, False)]
    mine = batches if env.world_size == 1 else [batches[env.rank]]
    record = []
    for step in range(2):
        for micro, batch in enumerate(mine):
            out = engine(batch)
            engine.backward(out["loss"])
            engine.step()
            record.append({"step": step, "batch": micro if env.world_size == 1 else env.rank,
                           **{k: float(v) for k, v in out.items() if k.startswith("loss")}})
    path = out_path if env.world_size == 1 else f"{out_path}.rank{env.rank}"
    with open(path, "w") as f:
        json.dump(record, f)
    trained = whole_state(engine)
    if env.rank == 0:
        torch.save({"initial": initial, "trained": trained}, f"{out_path}.weights.pt")


def whole_state(engine) -> dict:
    """The module's weights, whole (ZeRO-3 holds each rank's partition only); a collective."""
    import deepspeed
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
        return {k: v.detach().clone() for k, v in engine.module.state_dict().items()}


if __name__ == "__main__":
    main(sys.argv[1], recompute="--recompute" in sys.argv[2:], compile_blocks="--compile" in sys.argv[2:])
