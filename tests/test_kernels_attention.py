"""Fused cross-modal attention against a float64 reference written here.

Every implementation (the Triton kernels under TRITON_INTERPRET=1, the
custom op's blocked PyTorch implementation, and the default CPU path through
SDPA) must give the same output, log-sum-exp and q/k/v gradients on ragged
key lengths (1, 37, 130, 257), segment boundaries off the 32-wide tiles,
rows with every key masked, causal and cross-attention.

Tolerances are relative: max|got - ref| / max|ref| per tensor. The fp16
cases compare against the reference evaluated on the same fp16-rounded
inputs, so what is measured is the kernel's own rounding (fp16 probabilities
before P @ V, fp16 outputs), not the input quantisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
import torch

from opt_scale.kernels import attention
from opt_scale.kernels.attention_op import fused_attention_op

# relative error bounds: (forward out and lse, gradients)
REL_TOL = {torch.float32: (5e-6, 1e-5), torch.float16: (2e-3, 4e-3)}  # ~5x the worst seen


@dataclass
class Case:
    name: str
    batch: int
    lq: int
    lk: int
    head_dim: int = 32
    heads: int = 1
    causal: bool = False
    key_lengths: list[int] | None = None
    # per batch row: list of (segment id, run length) covering the sequence; shared by q and k if lq == lk
    segment_runs: list[list[tuple[int, int]]] | None = None
    allowed: list[list[int]] | None = None
    expect_empty_rows: bool = False
    extra: dict = field(default_factory=dict)


def _runs_to_ids(runs: list[tuple[int, int]], length: int) -> list[int]:
    ids = [seg for seg, n in runs for _ in range(n)]
    return (ids + [ids[-1]] * length)[:length]


CASES = [
    # keys at 1, 37, 130, 257 of 257: ragged tails inside tiles, a row of one key
    Case("ragged_lengths", batch=4, lq=257, lk=257, key_lengths=[1, 37, 130, 257]),
    # [cls+text | image | audio] with boundaries at 21 and 85 (off the 32-wide tiles); text sees all,
    # image sees text+image, audio sees text+audio; segment 3 (padding-like) sees nothing -> empty rows
    Case("segments", batch=2, lq=150, lk=150, key_lengths=[150, 130],
         segment_runs=[[(0, 21), (1, 64), (2, 50), (3, 15)], [(0, 10), (1, 33), (2, 87), (3, 20)]],
         allowed=[[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]], expect_empty_rows=True),
    # decoder cross-attention: Lq != Lk, one sample with no memory at all
    Case("cross_zero_length", batch=3, lq=37, lk=130, key_lengths=[130, 0, 57], expect_empty_rows=True),
    Case("causal_self", batch=2, lq=130, lk=130, heads=2, causal=True, key_lengths=[130, 77]),
    # bottom-right aligned: 37 new queries over 130 cached keys (decoding)
    Case("causal_decode", batch=2, lq=37, lk=130, causal=True),
    # more queries than keys: the first Lq - Lk queries see no key at all
    Case("causal_more_queries", batch=1, lq=64, lk=16, causal=True, expect_empty_rows=True),
    Case("causal_segments", batch=1, lq=100, lk=100, causal=True, head_dim=64,
         segment_runs=[[(0, 45), (1, 55)]], allowed=[[1, 0], [1, 1]]),
    Case("head_dim_128", batch=1, lq=40, lk=70, head_dim=128, key_lengths=[61]),
    Case("head_dim_24_padded", batch=1, lq=33, lk=33, head_dim=24, key_lengths=[20]),
]


def make_inputs(case: Case, dtype: torch.dtype, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    shape_q = (case.batch, case.heads, case.lq, case.head_dim)
    shape_k = (case.batch, case.heads, case.lk, case.head_dim)
    # scaled so that softmax rows are peaked rather than flat (a flat row hides a wrong max)
    q = (torch.randn(shape_q, generator=g) * 1.5).to(dtype)
    k = (torch.randn(shape_k, generator=g) * 1.5).to(dtype)
    v = torch.randn(shape_k, generator=g).to(dtype)
    kw: dict = {"causal": case.causal}
    if case.key_lengths is not None:
        kw["key_lengths"] = torch.tensor(case.key_lengths)
    if case.segment_runs is not None:
        kw["q_segments"] = torch.tensor([_runs_to_ids(r, case.lq) for r in case.segment_runs])
        kw["k_segments"] = torch.tensor([_runs_to_ids(r, case.lk) for r in case.segment_runs])
        kw["allowed_pairs"] = torch.tensor(case.allowed, dtype=torch.bool)
    grad_out = torch.randn(shape_q, generator=g)
    grad_lse = torch.randn(shape_q[:3], generator=g)
    return dict(q=q, k=k, v=v, kw=kw, grad_out=grad_out, grad_lse=grad_lse)


def reference_mask(case: Case, kw: dict) -> torch.Tensor:
    """[B, Lq, Lk] bool, built element by element from the documented rules."""
    B, Lq, Lk = case.batch, case.lq, case.lk
    mask = torch.ones(B, Lq, Lk, dtype=torch.bool)
    for b in range(B):
        if "key_lengths" in kw:
            mask[b, :, int(kw["key_lengths"][b]):] = False
        if "allowed_pairs" in kw:
            qs, ks = kw["q_segments"][b], kw["k_segments"][b]
            mask[b] &= kw["allowed_pairs"][qs][:, ks]
    if case.causal:
        for i in range(Lq):
            mask[:, i, max(0, Lk - Lq + i + 1):] = False  # max: a negative start would wrap
    return mask


def reference_attention(q, k, v, mask, scale):
    """float64 softmax attention; rows without keys give 0 and an LSE of 0."""
    s = torch.einsum("bhqd,bhkd->bhqk", q, k) * scale
    m = mask[:, None]
    any_key = m.any(-1)
    s = s.masked_fill(~m, float("-inf")).masked_fill(~any_key[..., None], 0.0)  # keep backward NaN-free
    lse = torch.where(any_key, torch.logsumexp(s, -1), torch.zeros_like(any_key, dtype=s.dtype))
    p = torch.where(m, torch.exp(s - lse[..., None]), torch.zeros_like(s))
    return torch.einsum("bhqk,bhkd->bhqd", p, v), lse


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.detach().double() - ref.detach()).abs().max() / ref.detach().abs().max().clamp(min=1e-30))


def run_case(case: Case, dtype: torch.dtype, backend: str):
    inp = make_inputs(case, dtype)
    scale = 1.0 / math.sqrt(case.head_dim)
    ref_in = [t.detach().double().requires_grad_() for t in (inp["q"], inp["k"], inp["v"])]
    mask = reference_mask(case, inp["kw"])
    ref_out, ref_lse = reference_attention(*ref_in, mask, scale)
    ((ref_out * inp["grad_out"].double()).sum() + (ref_lse * inp["grad_lse"].double()).sum()).backward()

    got_in = [t.detach().clone().requires_grad_() for t in (inp["q"], inp["k"], inp["v"])]
    out, lse = attention(*got_in, **inp["kw"], return_lse=True, backend=backend)
    ((out.float() * inp["grad_out"]).sum() + (lse.float() * inp["grad_lse"]).sum()).backward()
    assert out.dtype == dtype and out.shape == ref_out.shape and lse.shape == ref_lse.shape
    assert torch.isfinite(lse).all()
    return dict(out=(out, ref_out), lse=(lse, ref_lse), dq=(got_in[0].grad, ref_in[0].grad),
                dk=(got_in[1].grad, ref_in[1].grad), dv=(got_in[2].grad, ref_in[2].grad)), mask


def check_case(case: Case, dtype: torch.dtype, backend: str) -> None:
    results, mask = run_case(case, dtype, backend)
    fwd_tol, grad_tol = REL_TOL[dtype]
    errors = {name: rel_err(got, ref) for name, (got, ref) in results.items()}
    for name, err in errors.items():
        tol = fwd_tol if name in ("out", "lse") else grad_tol
        assert err <= tol, f"{case.name} {backend} {dtype}: {name} relative error {err:.2e} > {tol:.0e} ({errors})"
    empty = ~mask.any(-1)  # [B, Lq]
    assert bool(empty.any()) == case.expect_empty_rows, "test case does not cover what it claims"
    if case.expect_empty_rows:
        out, lse = results["out"][0], results["lse"][0]
        rows = empty[:, None, :].expand(-1, case.heads, -1)
        assert (out[rows] == 0).all() and (lse[rows] == 0).all()
        assert (results["dq"][0][rows] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_triton_kernels_match_float64_reference(case: Case, dtype: torch.dtype):
    check_case(case, dtype, "triton")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_cpu_default_sdpa_path_matches_float64_reference(case: Case):
    from opt_scale.kernels.attention import choose_backend
    assert choose_backend(torch.empty(1, 1, 1, 8)) == "sdpa"  # what the model runs on CPU
    check_case(case, torch.float32, "sdpa")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", CASES[:4], ids=[c.name for c in CASES[:4]])
def test_custom_op_blocked_cpu_impl_matches_float64_reference(case: Case, dtype: torch.dtype, monkeypatch):
    import opt_scale.kernels.attention_op as op_module
    monkeypatch.setattr(op_module, "QUERY_BLOCK", 64)  # several query blocks, ragged last one
    check_case(case, dtype, "blocked")


def test_model_call_signature_runs_on_triton_and_matches_default():
    """The model calls attention(q, k, v, key_lengths=..., causal=..., q_segments=..., ...) without a
    backend; the environment override routes that same call to the kernels."""
    case = CASES[1]
    inp = make_inputs(case, torch.float32)
    default = attention(inp["q"], inp["k"], inp["v"], **inp["kw"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPT_SCALE_ATTENTION_BACKEND", "triton")
        fused = attention(inp["q"], inp["k"], inp["v"], **inp["kw"])
    assert rel_err(fused, default.double()) < 2e-5


def test_custom_op_passes_opcheck():
    """Schema, fake (meta) implementation, autograd registration and dispatch of the
    custom op, as torch.library checks them (what torch.compile relies on)."""
    inp = make_inputs(CASES[1], torch.float32)
    kw = inp["kw"]
    q, k, v = (t.detach().requires_grad_() for t in (inp["q"], inp["k"], inp["v"]))
    for impl in ("blocked", "triton"):
        torch.library.opcheck(fused_attention_op, (q, k, v, kw["key_lengths"], kw["q_segments"], kw["k_segments"],
                                                   kw["allowed_pairs"], False, 0.125, impl))


def test_torch_compile_traces_the_op_without_graph_breaks():
    case = CASES[3]
    inp = make_inputs(case, torch.float32)

    def block(q, k, v, key_lengths):
        return attention(q, k, v, key_lengths=key_lengths, causal=True, backend="triton").sum()

    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)  # fullgraph: a break is an error
    q, k, v = (t.detach().requires_grad_() for t in (inp["q"], inp["k"], inp["v"]))
    compiled(q, k, v, inp["kw"]["key_lengths"]).backward()
    q2, k2, v2 = (t.detach().requires_grad_() for t in (inp["q"], inp["k"], inp["v"]))
    block(q2, k2, v2, inp["kw"]["key_lengths"]).backward()
    for a, b in ((q, q2), (k, k2), (v, v2)):
        assert rel_err(a.grad, b.grad.double()) < 1e-6


def test_forcing_triton_without_interpreter_fails_loudly(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    inp = make_inputs(CASES[4], torch.float32)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        attention(inp["q"], inp["k"], inp["v"], backend="triton")


# ---- bad segment ids: refused the same way by every backend (the kernels would read another segment's bits)

def tiny_segment_inputs(bad_id: int | None) -> dict:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, 8, 16, generator=g) for _ in range(3))
    segments = torch.tensor([[0, 0, 1, 1, 1, 0, 1, 1]])
    if bad_id is not None:
        segments[0, 5] = bad_id
    allowed = torch.tensor([[True, False], [True, True]])
    return dict(q=q, k=k, v=v, q_segments=segments, k_segments=segments, allowed_pairs=allowed)


@pytest.mark.parametrize("bad_id", [-1, 2, 7], ids=["minus_one", "table_size", "beyond"])
def test_segment_ids_outside_the_table_are_refused_alike_by_every_backend(bad_id: int):
    inp = tiny_segment_inputs(bad_id)
    errors = {}
    for backend in ("sdpa", "triton", "blocked"):
        with pytest.raises(Exception) as info:
            attention(inp["q"], inp["k"], inp["v"], q_segments=inp["q_segments"], k_segments=inp["k_segments"],
                      allowed_pairs=inp["allowed_pairs"], backend=backend)
        errors[backend] = (type(info.value), str(info.value))
    assert len(set(errors.values())) == 1, errors
    kind, message = errors["sdpa"]
    assert kind is ValueError and "q_segments" in message and "allowed_pairs" in message and str(bad_id) in message


def test_segment_ids_changed_in_place_after_a_good_call_are_checked_again():
    inp = tiny_segment_inputs(None)
    kw = dict(q_segments=inp["q_segments"], k_segments=inp["k_segments"], allowed_pairs=inp["allowed_pairs"])
    attention(inp["q"], inp["k"], inp["v"], **kw)  # valid: passes (and is remembered as checked)
    inp["q_segments"][0, 2] = 5
    with pytest.raises(ValueError, match="q_segments"):
        attention(inp["q"], inp["k"], inp["v"], **kw)
