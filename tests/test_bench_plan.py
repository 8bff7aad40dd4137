"""opt-bench plan: its parameter counts are the real model's, its ZeRO arithmetic partitions
as the stages do, and its xl cluster table agrees with DeepSpeed's own estimator."""

from __future__ import annotations

import json

import pytest
import torch
from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs, model_to_params

from opt_scale.bench.cli import main
from opt_scale.bench.plan_estimates import largest_layer_parameters, model_states
from opt_scale.config import load_config
from opt_scale.model.flops import DEFAULT_VOCAB, part_parameters
from opt_scale.presets import PRESETS
from opt_scale.tasks.pretrainer import OPTPretrainer
from opt_scale.tasks.registry import build_task_module


def planned_parameters(cfg) -> int:
    return sum(part_parameters(cfg.model, mvm_regress=cfg.tasks.mvm.regress_weight > 0,
                               contrastive_dim=cfg.tasks.contrastive.dim,
                               matching_similarity=cfg.tasks.matching.similarity_features).values())


def test_parameters_and_their_bytes_equal_the_real_tiny_model():
    cfg = load_config("tiny", [f"model.text.vocab_size={DEFAULT_VOCAB}"])
    torch.manual_seed(0)
    net = build_task_module(cfg).to(torch.bfloat16)
    total, largest = model_to_params(net)     # DeepSpeed's own count: tied weights once, largest module
    assert planned_parameters(cfg) == total == sum(p.numel() for p in net.parameters())
    assert largest_layer_parameters(cfg.model) == largest
    states = model_states(total, largest, world=1, zero_stage=0, offload="none")
    assert states.params == sum(p.numel() * p.element_size() for p in net.parameters())


@pytest.mark.parametrize("preset", ["small", "xl"])
def test_largest_layer_is_the_largest_real_module(preset):
    cfg = PRESETS[preset]()
    cfg.model.text.vocab_size = DEFAULT_VOCAB
    with torch.device("meta"):   # nothing allocated, even for xl
        net = OPTPretrainer(cfg.model, cfg.tasks, vq=None)
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in net.modules())
    assert largest_layer_parameters(cfg.model) == largest


def test_zero_stages_partition_and_offload_moves_states_to_the_host():
    P, L, W = 1_000_000, 10_000, 8
    per_param = 2 + 4 + 12
    assert model_states(P, L, W, 0, "none").gpu == per_param * P                         # all replicated
    assert model_states(P, L, W, 1, "none").gpu == (2 + 4) * P + 12 * P / W               # optimizer split
    assert model_states(P, L, W, 2, "none").gpu == 2 * P + (4 + 12) * P / W               # + gradients
    stage3 = model_states(P, L, W, 3, "none")
    assert stage3.gpu - stage3.gathered == pytest.approx(per_param * P / W)              # everything / world
    assert stage3.gathered == 4 * L and stage3.host == 0
    optimizer = model_states(P, L, W, 3, "optimizer")
    assert optimizer.optimizer == optimizer.grads == 0 and optimizer.params == 2 * P / W
    assert optimizer.host == pytest.approx((4 + 12) * P / W)
    everything = model_states(P, L, W, 3, "all")
    assert everything.gpu == 4 * L and everything.host == pytest.approx(per_param * P / W)


def test_xl_on_16x8_h100_agrees_with_deepspeeds_estimator(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["plan", "--config", "xl", "--nodes", "16", "--gpus-per-node", "8", "--gpu", "h100",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "estimate_zero3_model_states_mem_needs" in printed and "ratio" in printed
    result = json.loads(out.read_text())
    assert result["ok"] and result["deepspeed_check"]["checked"]
    cfg = load_config("xl")
    assert result["total_params"] == planned_parameters(cfg) > 1e10
    # DeepSpeed's figure computed here, apart from the command
    _, ds_gpu, _ = estimate_zero3_model_states_mem_needs(result["total_params"], result["largest_layer_params"],
                                                         num_gpus_per_node=8, num_nodes=16, cpu_offload=False,
                                                         cpu_offload_params=False, zero_init=True)
    assert result["gpu_model_states_bytes"] == pytest.approx(ds_gpu, rel=0.05)
    assert result["deepspeed_check"]["all_cold_ratio"] == pytest.approx(1, abs=0.05)
    rows = {(r["layout"], r["checkpointing"]): r for r in result["activations"]}
    assert rows["padded", "on"]["act_GiB"] < rows["padded", "off"]["act_GiB"] / 5    # checkpointing keeps inputs
    assert rows["packed", "off"]["act_GiB"] < rows["padded", "off"]["act_GiB"]
    for row in rows.values():   # the largest micro batch fits and one more does not
        n = row["max_micro_batch"]
        states = result["gpu_model_states_bytes"] / 2 ** 30
        assert states + n * row["act_GiB_per_sample"] <= row["usable_GiB"]
        assert states + (n + 1) * row["act_GiB_per_sample"] > row["usable_GiB"]
    step = result["step"][0]
    assert step["samples_per_s"] == pytest.approx(128 * result["micro_batch"] / step["step_s"])


@pytest.mark.parametrize("argv, names", [(["--gpu", "v100"], "--gpu"), (["--set", "model.nope=1"], "model.nope"),
                                         (["--offload", "all", "--zero-stage", "2"], "--offload")])
def test_bad_input_is_one_line_and_exit_2(argv, names, tmp_path, capsys):
    assert main(["plan", "--config", "tiny", *argv, "--json", str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("opt-bench: error:") and names in err[0]
    assert not (tmp_path / "p.json").exists()
