"""model.activation_checkpointing: the same losses and gradients with far
fewer activations held for backward (ZeRO-3 is covered by
test_zero3_consistency.py, whose two ranks recompute)."""

import json
import sys

import pytest
import torch

from opt_scale.bench.memory import SavedTensorMeter

from .model_fixtures import small_config, small_pretrainer

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent / "dist_scripts"))
from zero3_missing_audio import synthetic_batch  # noqa: E402


def forward_backward(recompute: bool, dropout: float = 0.0):
    cfg = small_config(60)
    cfg.model.activation_checkpointing = recompute
    for part in (cfg.model.text, cfg.model.vision, cfg.model.audio, cfg.model.cross, cfg.model.text_decoder,
                 cfg.model.image_decoder):
        part.layers, part.dropout = 2, dropout
    net = small_pretrainer(cfg).train()
    meter = SavedTensorMeter(net)
    torch.manual_seed(5)  # the same dropout masks in both runs
    with meter.hooks():
        out = net(synthetic_batch(cfg, 10, True))
    out["loss"].backward()
    return net, out, meter.bytes


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_recomputed_blocks_give_the_same_loss_and_gradients_with_fewer_activations(dropout):
    plain, plain_out, plain_bytes = forward_backward(False, dropout)
    ckpt, ckpt_out, ckpt_bytes = forward_backward(True, dropout)
    # Every stack with blocks recomputes: the three towers, the cross-modal encoder, both decoders.
    assert sum(getattr(m, "recompute", False) for m in ckpt.modules()) == 6
    assert not any(getattr(m, "recompute", False) for m in plain.modules())
    for name, value in plain_out.items():
        if name.startswith("loss"):
            assert torch.equal(value, ckpt_out[name]), name  # recomputation replays the same dropout masks
    grads = dict(ckpt.named_parameters())
    for name, p in plain.named_parameters():
        assert (p.grad is None) == (grads[name].grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(grads[name].grad, p.grad, rtol=1e-5, atol=1e-7, msg=name)
    # At this toy width the conv stems and heads hold most of it (1.7x here; `small`: 4.8x, BENCHMARKS.md).
    assert ckpt_bytes < 0.7 * plain_bytes


def test_generation_is_unaffected():
    """No gradients, a key/value cache: blocks run as they are."""
    from opt_scale.model.layers import run_block
    block = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4, requires_grad=True)
    with torch.no_grad():
        assert torch.equal(run_block(block, True, x), block(x))


def test_opt_bench_memory_reports_both_variants(demo_shards, demo_tokenizer, tmp_path):
    from opt_scale.bench.cli import main
    out = tmp_path / "memory.json"
    code = main(["memory", "--config", "tiny", "--steps", "1", "--warmup", "0", "--micro-batch", "3",
                 "--shards", str(demo_shards / "demo-index.json"), "--tokenizer", str(demo_tokenizer),
                 "--work-dir", str(tmp_path), "--json", str(out)])
    result = json.loads(out.read_text())
    assert code == 0 and result["losses_equal"]
    plain, ckpt = result["rows"]
    assert not plain["activation_checkpointing"] and ckpt["activation_checkpointing"]
    assert ckpt["activation_mb"] < plain["activation_mb"] and ckpt["memory_ratio"] > 1.3
    assert plain["recomputed_per_block_mb"] == 0 < ckpt["recomputed_per_block_mb"]
