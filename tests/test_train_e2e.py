"""End to end: 2-process DeepSpeed ZeRO-3 training on demo shards (gloo)."""

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from .conftest import run_cli, torchrun_args


@pytest.mark.distributed
def test_two_rank_zero3_training_writes_checkpoint_and_tensorboard(tiny_overrides, tmp_path):
    args = torchrun_args(2) + ["--config", "tiny", "--set", *tiny_overrides, "train.steps=4"]
    proc = run_cli(args, timeout=600)
    assert "opt-train summary" in proc.stdout

    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "step_00000004"
    marker = json.loads((ckpt / "COMPLETE.json").read_text())
    assert marker["step"] == 4 and marker["world_size"] == 2
    # ZeRO-3: each rank wrote its own partition of parameters and optimizer state.
    for rank in range(2):
        assert (ckpt / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt").stat().st_size > 0
        assert (ckpt / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").stat().st_size > 0

    (event_file,) = (run / "tensorboard").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(event_file))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss/total", "loss/mlm", "loss/matching", "acc/matching", "train/lr",
            "throughput/samples_per_s"} <= tags
    losses = acc.Scalars("loss/total")
    assert [e.step for e in losses] == [1, 2, 3, 4]
    assert all(0 < e.value < 20 for e in losses)
    assert (run / "config.json").is_file() and (run / "tokenizer.model").is_file()
