"""Linear + cross-entropy over selected rows, a chunk of rows at a time.

The [rows x vocab] logits of one chunk are the only logits that ever exist:
each chunk is projected, its loss and its logit gradient are computed in
place (by PyTorch or by the Triton kernel of :mod:`.masked_loss_triton`),
and that gradient is immediately pushed through the projection into
dHidden, dWeight and dBias. So the forward pass also does the backward's
work, and the backward only scales the stored gradients by the incoming
gradient of the loss. This is the right trade when the loss is always
differentiated (training): the alternative, recomputing every chunk's
logits in the backward, costs a third more matmul FLOPs.

The count of counted positions is known before the loop (it only needs the
targets), so each chunk's gradient is already divided by it: no second pass.
"""

from __future__ import annotations

from typing import Callable

import torch

# (logits fp32 [c, V] — overwritten with scale * d(loss sum)/d(logits) —, targets [c], label_smoothing,
#  ignore_index, scale 0-d fp32) -> per-row loss [c] (0 at ignored rows). The caller passes scale 1 and
#  applies 1/count in backward.
ChunkCrossEntropy = Callable[[torch.Tensor, torch.Tensor, float, int, torch.Tensor], torch.Tensor]

DEFAULT_CHUNK_BYTES = 64 * 2**20  # fp32 logits of one chunk: 64 MiB = 524 rows at vocab 32k


def cross_entropy_chunk_torch(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float,
                              ignore_index: int, inv_count: torch.Tensor) -> torch.Tensor:
    """Per-row smoothed CE of a chunk; leaves d(mean loss)/d(logits) in ``logits``.

    loss = lse - (1 - eps) * x[target] - eps/V * sum(x)   (= F.cross_entropy's smoothing)
    grad = (softmax - (1 - eps) * onehot - eps/V) * inv_count   (1 from ChunkedLinearCrossEntropy)

    Everything after the reads of x[target] and sum(x) is in place: five
    passes over the chunk (max, subtract, exp, sum, scale) and no temporary
    of its size (``torch.logsumexp`` would allocate two).
    """
    V = logits.shape[1]
    counted = targets != ignore_index
    safe_targets = torch.where(counted, targets, torch.zeros_like(targets)).long()[:, None]
    target_logit = logits.gather(1, safe_targets).squeeze(1)
    row_sum = logits.sum(1) if label_smoothing else None
    row_max = logits.amax(1)
    exp_sum = logits.sub_(row_max[:, None]).exp_().sum(1)
    lse = row_max + exp_sum.log()
    loss = lse - (1.0 - label_smoothing) * target_logit
    if label_smoothing:
        loss = loss - (label_smoothing / V) * row_sum
    loss = torch.where(counted, loss, torch.zeros_like(loss))
    row_scale = counted.to(logits.dtype) * inv_count  # 0 for ignored rows: their gradient vanishes
    grads = logits.mul_((row_scale / exp_sum)[:, None])  # softmax / count
    if label_smoothing:
        grads.sub_((row_scale * (label_smoothing / V))[:, None])
    grads.scatter_add_(1, safe_targets, (-(1.0 - label_smoothing) * row_scale)[:, None])
    return loss


def rows_per_chunk(vocab: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    return max(1, chunk_bytes // (4 * vocab))


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """``(selected [M, D], weight [V, D], bias [V] | None, targets [M]) -> (mean loss, count)``.

    Without ``grad_enabled`` (evaluation) the loop only computes the loss:
    the per-chunk gradient written into the logits is then simply dropped.
    """

    @staticmethod
    def forward(ctx, selected: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor, label_smoothing: float, ignore_index: int, chunk_rows: int,
                chunk_ce: ChunkCrossEntropy, grad_enabled: bool):
        M, D = selected.shape
        V = weight.shape[0]
        # forward() always runs with grad mode off, and needs_input_grad ignores it:
        # the caller says whether gradients are wanted at all (not under no_grad).
        need_hidden, need_weight, need_bias = (grad_enabled and n for n in ctx.needs_input_grad[:3])
        need_bias = need_bias and bias is not None
        count = (targets != ignore_index).sum()
        # A tensor, not a Python number: no device sync on GPU.
        inv_count = 1.0 / count.clamp(min=1).to(torch.float32)
        # The stored gradients are of the loss *sum*; 1/count is applied in
        # backward, in fp32, together with the loss scale. Folded in here,
        # softmax/count (~1e-8 at 32k x 2k rows) would round to zero in fp16
        # before fp16 training's loss scale could lift it.
        unit = torch.ones((), dtype=torch.float32, device=selected.device)
        grad_hidden = torch.zeros_like(selected) if need_hidden else None
        # fp32 accumulators: summing per-chunk bf16 products would round every chunk.
        grad_weight = torch.zeros(V, D, dtype=torch.float32, device=weight.device) if need_weight else None
        grad_bias = torch.zeros(V, dtype=torch.float32, device=weight.device) if need_bias else None
        loss_sum = torch.zeros((), dtype=torch.float32, device=selected.device)
        for start in range(0, M, chunk_rows):
            rows = selected[start:start + chunk_rows]
            logits = rows @ weight.t() if bias is None else torch.addmm(bias, rows, weight.t())
            logits = logits.float() if logits.dtype != torch.float32 else logits
            loss_sum += chunk_ce(logits, targets[start:start + chunk_rows], label_smoothing, ignore_index,
                                 unit).sum()
            grad_logits = logits.to(selected.dtype)
            if need_hidden:
                grad_hidden[start:start + chunk_rows] = grad_logits @ weight
            if need_weight:
                if grad_logits.dtype == torch.float32:
                    grad_weight.addmm_(grad_logits.t(), rows)
                else:
                    grad_weight += (grad_logits.t() @ rows).float()
            if need_bias:
                grad_bias += logits.sum(0)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias, inv_count)
        ctx.weight_dtype = weight.dtype
        ctx.bias_dtype = bias.dtype if bias is not None else None
        ctx.mark_non_differentiable(count)
        return loss_sum * inv_count, count

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor, grad_count):
        grad_hidden, grad_weight, grad_bias, inv_count = ctx.saved_tensors
        scale = grad_loss.float() * inv_count
        dh = (grad_hidden * scale).to(grad_hidden.dtype) if grad_hidden is not None else None
        dw = (grad_weight * scale).to(ctx.weight_dtype) if grad_weight is not None else None
        db = (grad_bias * scale).to(ctx.bias_dtype) if grad_bias is not None else None
        return dh, dw, db, None, None, None, None, None, None
