"""Stop a run whose weights stopped being numbers.

DeepSpeed skips a step whose gradients are not finite, but an applied step
can still make weights non-finite (a huge learning rate, an optimizer
overflow): every later loss is NaN, every saved tensor too, and a run that
ends before ``train.max_bad_steps`` skipped steps in a row exits 0. A loss or
gradient norm check cannot see it early (the step that broke the weights had
finite ones), so the weights themselves are checked after every step.

Each rank checks only what it owns: under ZeRO-3 its partition of every
parameter (``ds_tensor``), otherwise the parameters it holds. DeepSpeed
keeps the trainable weights of each parameter group in one flat buffer; one
float64 sum per buffer and one all-reduce of a flag cost a read of
the rank's weights: a few ms per step on the tiny model (ZeRO-3, 2 busy CPU
cores; 9-12 ms with isfinite().all(), which the sum beats by 2.5x), where one
reduction per parameter cost 60-160 ms (264 tensors: per-call overhead). So every step is checked, and
parameters are looked at one by one only to name the bad ones.
"""

from __future__ import annotations

import torch

from .distributed import all_gather_objects, all_true


def local_shards(module: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(name, the part of the parameter this rank holds) for every parameter."""
    out = []
    for name, p in module.named_parameters():
        shard = getattr(p, "ds_tensor", None)  # ZeRO-3: this rank's partition; p itself is empty
        out.append((name, shard if shard is not None else p))
    return out


def non_finite_parameters(module: torch.nn.Module) -> list[str]:
    """Names of the parameters with a non-finite value in this rank's part of them."""
    shards = [(n, t) for n, t in local_shards(module) if t.numel()]
    if not shards:
        return []
    finite = torch.stack([torch.isfinite(t.detach()).all() for _, t in shards]).tolist()
    return [n for (n, _), ok in zip(shards, finite) if not ok]


def flat_weight_buffers(engine) -> list[torch.Tensor] | None:
    """This rank's flat buffers of trainable weights (ZeRO-3: its partitions;
    ZeRO-1/2: the whole bit16 copy), or None where DeepSpeed keeps none
    (stage 0, parameters offloaded)."""
    optimizer = getattr(engine, "optimizer", None)
    for attr in ("fp16_partitioned_groups_flat", "bit16_groups_flat"):  # ZeRO-3; ZeRO-1/2
        flats = getattr(optimizer, attr, None)
        if flats and all(torch.is_tensor(f) for f in flats):
            return [f for f in flats if f.numel()]
    return None


def all_finite(engine) -> bool:
    """Whether this rank's weights are all finite (not collective)."""
    flats = flat_weight_buffers(engine)
    if flats is None:
        return not non_finite_parameters(engine.module)
    return all(sums_finite(f) for f in flats)


def sums_finite(t: torch.Tensor) -> bool:
    """Whether every value of ``t`` is finite. A sum is finite exactly when
    every term is (NaN and +-Inf propagate; Inf - Inf is NaN), and accumulated
    in float64 the finite values of any fp32/bf16 model cannot overflow it.
    One read and no temporary: 2.5x faster than isfinite(t).all() (3.3M weights, CPU)."""
    return bool(torch.isfinite(t.sum(dtype=torch.float64)))


def check_finite_weights(engine, step: int) -> None:
    """Collective: raise FloatingPointError on every rank if any rank holds a non-finite weight."""
    if all_true(all_finite(engine)):
        return
    bad = sorted({n for rank_names in all_gather_objects(non_finite_parameters(engine.module)) for n in rank_names})
    shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    raise FloatingPointError(
        f"step {step}: non-finite weights after the optimizer step in {len(bad)} parameters ({shown}); "
        f"stopping before they are checkpointed. Lower train.lr (or check train.grad_clip and the data) "
        f"and resume from the last checkpoint with train.resume=auto")
