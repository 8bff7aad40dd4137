"""The masked-token loss under a real 2-rank DeepSpeed ZeRO-3 engine (CPU, gloo).

The loss is called from inside MaskedTokenHead.forward, whose projection
weight is tied to an embedding, both partitioned by ZeRO-3 (persistence
threshold 0: nothing stays whole). Two SGD steps; in the first, rank 1 has
no masked token at all (the exact-zero path must still take part in the
gradient reduce-scatter). Losses and the updated weights must equal a
single-process run over the same data, where the data-parallel gradient is
the mean of the two ranks' gradients.

This file is also the worker: pytest launches it with torchrun, bounded by
a timeout that kills the whole process group.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

VOCAB, HIDDEN, SEQ, PER_RANK, STEPS, LR = 96, 32, 12, 2, 2, 0.5
TIMEOUT_S = 300


class TinyMaskedLM(nn.Module):
    """Embedding whose weight the masked-token head ties (as the text encoder does)."""

    def __init__(self) -> None:
        super().__init__()
        from opt_scale.model.layers import Embedding
        from opt_scale.tasks.heads import MaskedTokenHead
        self.embed = Embedding(VOCAB, HIDDEN)
        self.head = MaskedTokenHead(HIDDEN, VOCAB, tied_weight=self.embed.weight, label_smoothing=0.1)

    def forward(self, ids: torch.Tensor, labels: torch.Tensor):
        return self.head(self.embed(ids), labels)


def make_model() -> TinyMaskedLM:
    torch.manual_seed(1234)
    return TinyMaskedLM()


def batch_for(step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 * step + rank)
    ids = torch.randint(0, VOCAB, (PER_RANK, SEQ), generator=g)
    labels = torch.full_like(ids, -100)
    if not (step == 0 and rank == 1):  # step 0: rank 1 has no masked token
        picked = torch.rand(ids.shape, generator=g) < 0.3
        picked[:, 0] = True
        labels[picked] = ids[picked]
    return ids, labels


def single_process_run() -> tuple[list[list[float]], dict[str, torch.Tensor]]:
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    losses = []
    for step in range(STEPS):
        opt.zero_grad()
        per_rank = [model(*batch_for(step, r))[0] for r in range(2)]
        (sum(per_rank) / 2).backward()  # data parallel averages the ranks' gradients
        opt.step()
        losses.append([loss.item() for loss in per_rank])
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}


def worker(out_dir: str) -> None:
    import deepspeed
    import torch.distributed as dist
    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    rank = dist.get_rank()
    model = make_model()
    config = {
        "train_micro_batch_size_per_gpu": PER_RANK, "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0, "overlap_comm": False},
        # DeepSpeed clips gradients to norm 1.0 unless told otherwise; the reference does not clip
        "gradient_clipping": 0.0,
        "zero_allow_untested_optimizer": True, "steps_per_print": 10**9,
    }
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=LR),
                                      config=config)
    assert engine.zero_optimization_stage() == 3
    losses = []
    for step in range(STEPS):
        loss, count = engine(*batch_for(step, rank))
        engine.backward(loss)
        engine.step()
        both: list = [None, None]
        dist.all_gather_object(both, (loss.item(), int(count)))
        losses.append(both)
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
        state = {k: v.detach().clone() for k, v in engine.module.state_dict().items()}
    if rank == 0:
        torch.save(state, Path(out_dir) / "state.pt")
        (Path(out_dir) / "losses.json").write_text(json.dumps(losses))
    dist.barrier()


@pytest.mark.distributed
def test_masked_loss_under_two_rank_zero3_matches_single_process(tmp_path):
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           __file__, str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)  # own process group: a timeout kills the workers too
    try:
        output, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"ZeRO-3 run exceeded {TIMEOUT_S}s:\n{output[-3000:]}")
    assert proc.returncode == 0, output[-4000:]

    dist_losses = json.loads((tmp_path / "losses.json").read_text())
    dist_state = torch.load(tmp_path / "state.pt")
    ref_losses, ref_state = single_process_run()

    assert dist_losses[0][1] == [0.0, 0]  # rank 1, step 0: exact zero, nothing counted
    for step in range(STEPS):
        for rank in range(2):
            got, ref = dist_losses[step][rank][0], ref_losses[step][rank]
            assert abs(got - ref) <= 1e-5 * max(abs(ref), 1.0), (step, rank, got, ref)
    initial = make_model().state_dict()
    for name, ref in ref_state.items():
        moved = (ref - initial[name]).abs().max()
        assert moved > 0, f"{name} was not trained: the test would not see a wrong gradient"
        err = (dist_state[name] - ref).abs().max() / moved
        assert err <= 1e-4, f"{name}: update differs by {err:.2e} of its size"


if __name__ == "__main__":
    worker(sys.argv[1])
