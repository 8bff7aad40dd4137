"""Masked-token linear + cross-entropy against a float64 reference written here.

Loss value and gradients of hidden (a [B, L, D] input, so the gather of the
selected rows is part of what is checked), weight and bias, with ignored
positions among the selected ones, label smoothing, several chunks with a
ragged last one, and vocabularies that are not a multiple of the Triton
kernel's block. Tolerances are relative (max|got - ref| / max|ref|); fp16
cases use the fp16-rounded inputs for the reference too.
"""

from __future__ import annotations

import pytest
import torch

from opt_scale.kernels import masked_linear_cross_entropy
from opt_scale.kernels.masked_loss import choose_backend

REL_TOL = {torch.float32: 1e-5, torch.float16: 3e-3}  # 2.5-10x the worst seen (fp16: gradients stored in fp16)


def make_inputs(dtype: torch.dtype, vocab: int, hidden_dim: int = 48, batch: int = 3, length: int = 41,
                selected: int = 29, ignored: int = 5, bias: bool = True, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, length, hidden_dim, generator=g).to(dtype)
    weight = (torch.randn(vocab, hidden_dim, generator=g) * 0.4).to(dtype)
    b = (torch.randn(vocab, generator=g) * 0.5).to(dtype) if bias else None
    positions = torch.randperm(batch * length, generator=g)[:selected]
    targets = torch.randint(0, vocab, (selected,), generator=g)
    targets[torch.randperm(selected, generator=g)[:ignored]] = -100
    return dict(hidden=hidden, weight=weight, bias=b, positions=positions, targets=targets)


def reference_loss(hidden, weight, bias, positions, targets, label_smoothing):
    """float64: mean over counted rows of -(1-eps) log p[target] - eps/V sum_j log p_j."""
    rows = hidden.reshape(-1, hidden.shape[-1])[positions]
    logits = rows @ weight.t() + (bias if bias is not None else 0)
    logp = torch.log_softmax(logits, dim=-1)
    counted = targets != -100
    nll = -logp[counted].gather(1, targets[counted][:, None]).squeeze(1)
    smooth = -logp[counted].mean(-1)
    per_row = (1 - label_smoothing) * nll + label_smoothing * smooth
    return per_row.sum() / max(int(counted.sum()), 1)


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.detach().double() - ref.detach()).abs().max() / ref.detach().abs().max().clamp(min=1e-30))


def check(backend: str, dtype: torch.dtype, vocab: int, label_smoothing: float, chunk_rows: int | None,
          bias: bool = True) -> None:
    inp = make_inputs(dtype, vocab, bias=bias)
    params = ["hidden", "weight", "bias"] if bias else ["hidden", "weight"]
    ref = {n: inp[n].detach().double().requires_grad_() for n in params}
    ref_loss = reference_loss(ref["hidden"], ref["weight"], ref.get("bias"), inp["positions"], inp["targets"],
                              label_smoothing)
    (ref_loss * 1.7).backward()  # a non-unit upstream gradient: the stored gradients must be scaled by it

    got = {n: inp[n].detach().clone().requires_grad_() for n in params}
    loss, count = masked_linear_cross_entropy(got["hidden"], got["weight"], got.get("bias"), inp["positions"],
                                              inp["targets"], label_smoothing=label_smoothing, backend=backend,
                                              chunk_rows=chunk_rows)
    (loss * 1.7).backward()
    assert int(count) == int((inp["targets"] != -100).sum())
    assert loss.dtype == torch.float32
    tol = REL_TOL[dtype]
    errors = {"loss": rel_err(loss, ref_loss), **{n: rel_err(got[n].grad, ref[n].grad) for n in params}}
    assert all(e <= tol for e in errors.values()), f"{backend} {dtype} V={vocab}: {errors} (tol {tol:.0e})"
    for n in params:
        assert got[n].grad.dtype == dtype


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("backend", ["chunked", "triton"])
def test_chunked_paths_match_float64_reference(backend: str, label_smoothing: float, dtype: torch.dtype):
    # 29 selected rows in chunks of 8 (last one 5); V = 2500 spans three 1024-wide kernel blocks
    check(backend, dtype, vocab=2500, label_smoothing=label_smoothing, chunk_rows=8)


@pytest.mark.parametrize("backend", ["chunked", "triton", "reference"])
def test_single_chunk_no_bias_small_vocab(backend: str):
    check(backend, torch.float32, vocab=37, label_smoothing=0.1, chunk_rows=None, bias=False)


def test_cpu_default_is_the_chunked_path():
    assert choose_backend(torch.empty(1)) == "chunked"
    check("auto", torch.float32, vocab=700, label_smoothing=0.0, chunk_rows=None)


@pytest.mark.parametrize("backend", ["chunked", "triton", "reference"])
@pytest.mark.parametrize("what", ["no_positions", "all_ignored"])
def test_no_counted_position_gives_exact_zero_with_gradient_path(backend: str, what: str):
    inp = make_inputs(torch.float32, vocab=100)
    if what == "no_positions":
        inp["positions"], inp["targets"] = inp["positions"][:0], inp["targets"][:0]
    else:
        inp["targets"][:] = -100
    hidden, weight, bias = (inp[n].requires_grad_() for n in ("hidden", "weight", "bias"))
    loss, count = masked_linear_cross_entropy(hidden, weight, bias, inp["positions"], inp["targets"],
                                              label_smoothing=0.1, backend=backend)
    assert loss.item() == 0.0 and int(count) == 0
    assert loss.requires_grad  # every rank must be able to call backward on it
    loss.backward()
    for p in (hidden, weight, bias):
        assert p.grad is not None and p.grad.abs().max().item() == 0.0


def test_frozen_weight_gets_no_gradient_but_hidden_does():
    inp = make_inputs(torch.float32, vocab=300)
    hidden = inp["hidden"].requires_grad_()
    loss, _ = masked_linear_cross_entropy(hidden, inp["weight"], inp["bias"], inp["positions"], inp["targets"])
    loss.backward()
    assert hidden.grad is not None and hidden.grad.abs().sum() > 0
    assert inp["weight"].grad is None


def test_rows_outside_positions_get_zero_hidden_gradient():
    inp = make_inputs(torch.float32, vocab=300)
    hidden = inp["hidden"].requires_grad_()
    loss, _ = masked_linear_cross_entropy(hidden, inp["weight"], inp["bias"], inp["positions"], inp["targets"])
    loss.backward()
    flat = hidden.grad.reshape(-1, hidden.shape[-1])
    counted = inp["positions"][inp["targets"] != -100]
    untouched = torch.ones(flat.shape[0], dtype=torch.bool)
    untouched[counted] = False
    assert (flat[untouched] == 0).all() and (flat[counted].abs().sum(-1) > 0).all()


def test_masked_token_head_uses_it_and_matches_reference():
    """The model's head (opt_scale/tasks/heads.py) through the default path."""
    from opt_scale.tasks.heads import MaskedTokenHead
    torch.manual_seed(0)
    head = MaskedTokenHead(hidden=32, vocab=500, label_smoothing=0.1)
    hidden = torch.randn(2, 30, 32)
    labels = torch.full((2, 30), -100)
    labels[0, [1, 5, 7]] = torch.tensor([3, 499, 0])
    labels[1, [0, 29]] = torch.tensor([10, 11])
    loss, count = head(hidden, labels)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPT_SCALE_MASKED_LOSS_BACKEND", "reference")
        ref_loss, ref_count = head(hidden, labels)
    assert int(count) == int(ref_count) == 5
    assert abs(loss.item() - ref_loss.item()) <= 1e-6 * abs(ref_loss.item())


def test_no_grad_evaluation_skips_gradient_work_and_gives_same_loss(monkeypatch):
    import opt_scale.kernels.masked_loss_chunked as chunked
    inp = make_inputs(torch.float32, vocab=300)
    args = [inp[n].requires_grad_() for n in ("hidden", "weight", "bias")] + [inp["positions"], inp["targets"]]
    train_loss, _ = masked_linear_cross_entropy(*args)
    allocated = []
    real_zeros = torch.zeros
    monkeypatch.setattr(chunked.torch, "zeros", lambda *a, **k: allocated.append(a) or real_zeros(*a, **k))
    with torch.no_grad():
        eval_loss, _ = masked_linear_cross_entropy(*args)
    assert eval_loss.item() == train_loss.item() and eval_loss.grad_fn is None
    assert not [a for a in allocated if a[:1] == (300,)], "gradient accumulators allocated under no_grad"


def test_fp16_gradients_of_many_rows_keep_their_precision():
    # softmax / count is ~1e-7 here: folded into fp16 gradients before fp16 training's loss scale arrives in
    # backward, it would round to (sub)normal zero (2.5% error in dH at 2048 x 32k before the fix).
    torch.manual_seed(0)
    m, v, d = 1024, 8192, 32
    hidden, weight, targets = torch.randn(m, d) * 0.5, torch.randn(v, d) * 0.05, torch.randint(v, (m,))

    def grads(dtype, loss_fn):
        h, w = hidden.to(dtype).requires_grad_(), weight.to(dtype).requires_grad_()
        (loss_fn(h, w) * 1024).backward()  # a loss scale, as DeepSpeed's fp16 applies it
        return h.grad.double(), w.grad.double()

    want = grads(torch.float64, lambda h, w: torch.nn.functional.cross_entropy(h @ w.t(), targets))
    got = grads(torch.float16, lambda h, w: masked_linear_cross_entropy(h, w, None, torch.arange(m), targets,
                                                                         backend="chunked")[0])
    for g, r in zip(got, want):
        assert float((g - r).norm() / r.norm()) < 2e-3  # fp16's own rounding: ~3e-4


@pytest.mark.parametrize("bad", ["vocab", "negative"])
def test_targets_outside_the_vocabulary_are_refused_alike_by_every_backend(bad: str):
    """The Triton kernel would read past the row (a different garbage loss each run); PyTorch raises its own
    IndexError/RuntimeError. Every backend must refuse with one ValueError; ignore_index stays valid."""
    inp = make_inputs(torch.float32, vocab=37, batch=1, length=9, selected=6, ignored=2, hidden_dim=8)
    counted = (inp["targets"] != -100).nonzero()[0, 0]
    inp["targets"][counted] = 37 if bad == "vocab" else -3
    errors = {}
    for backend in ("chunked", "triton", "reference"):
        with pytest.raises(Exception) as info:
            masked_linear_cross_entropy(inp["hidden"], inp["weight"], inp["bias"], inp["positions"],
                                        inp["targets"], backend=backend)
        errors[backend] = (type(info.value), str(info.value))
    assert len(set(errors.values())) == 1, errors
    kind, message = errors["chunked"]
    assert kind is ValueError and "targets" in message and ("37" if bad == "vocab" else "-3") in message


@pytest.mark.parametrize("backend", ["chunked", "triton", "reference"])
def test_a_custom_ignore_index_is_not_an_out_of_range_target(backend: str):
    inp = make_inputs(torch.float32, vocab=37, batch=1, length=9, selected=6, ignored=2, hidden_dim=8)
    inp["targets"][inp["targets"] == -100] = 99
    loss, count = masked_linear_cross_entropy(inp["hidden"], inp["weight"], inp["bias"], inp["positions"],
                                              inp["targets"], ignore_index=99, backend=backend)
    assert int(count) == 4 and torch.isfinite(loss)
