"""Cross-rank gathers for the sample-level tasks, with gradients.

Contrastive alignment and hard-negative matching want the whole global batch
(every rank's samples) as candidates, as open_clip and ALBEF/BLIP do: in a
micro-batch of 8, colour alone tells most samples apart, so local negatives
teach little. :func:`gather_rows` concatenates every rank's rows in rank
order; its backward all-reduces the gradient of the gathered tensor and
returns this rank's slice, so a loss computed from gathered rows trains every
rank's encoders as if the global batch had been one batch on one process.

Every rank must call these in the same order (they are collectives), which
the pretrainer guarantees by running the same code path on every rank.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class _GatherEqual(torch.autograd.Function):
    """all_gather of equally shaped tensors along dim 0; backward: the sum of
    every rank's gradient for this rank's rows."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rows, ctx.rank = x.shape[0], dist.get_rank()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_rows(x: torch.Tensor, with_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's ``x`` [n_r, *dims], concatenated along dim 0 in rank order.

    Ranks may differ in ``n_r`` and in the other dims: each is zero-padded to
    the largest over ranks (so a padded dim's padding reads as zeros/False).
    Returns (gathered [sum n_r, *max_dims], rows per rank [world] int64).
    Without a process group (or at world size 1) returns ``x`` itself."""
    if world_size() == 1:
        return x, torch.tensor([x.shape[0]])
    shape = torch.tensor(x.shape, dtype=torch.int64, device=x.device)
    shapes = [torch.empty_like(shape) for _ in range(world_size())]
    dist.all_gather(shapes, shape)
    shapes = torch.stack(shapes).cpu()
    target = shapes.max(0).values.tolist()
    pad = []
    for have, want in zip(reversed(x.shape), reversed(target)):
        pad += [0, want - have]
    padded = F.pad(x, pad) if any(pad) else x
    if padded.dtype == torch.bool:  # gloo/NCCL gather bytes, not bools
        gathered = _GatherEqual.apply(padded.to(torch.uint8)).bool()
    elif with_grad and padded.requires_grad:
        gathered = _GatherEqual.apply(padded)
    else:
        with torch.no_grad():
            gathered = _GatherEqual.apply(padded.detach())
    rows = shapes[:, 0]
    if (rows == target[0]).all():
        return gathered, rows
    keep = torch.cat([torch.arange(r * target[0], r * target[0] + int(n)) for r, n in enumerate(rows)])
    return gathered[keep.to(gathered.device)], rows


def row_offset(rows_per_rank: torch.Tensor) -> int:
    """Index of this rank's first row in a :func:`gather_rows` result."""
    return int(rows_per_rank[:rank()].sum())
