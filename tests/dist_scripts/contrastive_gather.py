"""The contrastive loss on 2 ranks (rows gathered with gradients) against
one process on the concatenated batch; writes the loss and the parameter
gradients averaged over ranks (as DDP and ZeRO reduce them) as JSON.

usage: contrastive_gather.py OUT.json [local_loss: 0|1]
Rank 0 holds 5 samples, rank 1 holds 3 (ranks may differ, as at the end of an
epoch); sample 6 has no audio; samples 1 and 6 show the same image (twins,
never each other's negatives).
"""

import json
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from opt_scale.tasks.config import ContrastiveConfig  # noqa: E402
from opt_scale.tasks.contrastive import MODALITIES, ContrastiveHead  # noqa: E402

N, L, D = 8, 6, 32
ROWS = {0: slice(0, 5), 1: slice(5, 8)}


def inputs():
    g = torch.Generator().manual_seed(0)
    towers = {m: (torch.randn(N, L, D, generator=g, dtype=torch.float64), torch.rand(N, L, generator=g) > 0.3)
              for m in MODALITIES}
    for _, valid in towers.values():
        valid[:, 0] = True
    present = torch.ones(N, 3, dtype=torch.bool)
    present[6, 2] = False
    uid = torch.arange(N)
    uid[6] = uid[1]
    return towers, present, uid


def main() -> None:
    out, local_loss = sys.argv[1], bool(int(sys.argv[2])) if len(sys.argv) > 2 else False
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if world > 1 else 0
    torch.manual_seed(0)
    head = ContrastiveHead(D, ContrastiveConfig(dim=16, local_loss=local_loss)).double()
    towers, present, uid = inputs()
    rows = ROWS[rank] if world > 1 else slice(0, N)
    loss, *_ = head({m: (t[rows], v[rows]) for m, (t, v) in towers.items()}, present[rows], uid[rows])
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in head.named_parameters()}
    if world > 1:  # what DDP / ZeRO do with the ranks' gradients: their mean
        for g in grads.values():
            dist.all_reduce(g)
            g /= world
        losses = [torch.zeros(1, dtype=loss.dtype) for _ in range(world)]
        dist.all_gather(losses, loss.detach().reshape(1))
        loss = torch.cat(losses).mean()   # local_loss: each rank's share; else the same on every rank
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"loss": float(loss), "grads": {k: g.flatten().tolist() for k, g in grads.items()}}, f)
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
