"""Fused attention and masked-token loss: speed, memory and correctness.

On CUDA: forward and forward+backward times (median of --repeats, CUDA
events) of the Triton attention against PyTorch SDPA (with the equivalent
boolean mask, and unmasked as a ceiling) and FlexAttention, and of the
masked-token loss against unfused linear + cross-entropy; TFLOP/s, achieved
GB/s and peak memory.

On CPU: correctness of the Triton kernels under the interpreter (a
subprocess with TRITON_INTERPRET=1, small shapes), a compile check of every
kernel for sm_90, and time and peak memory of the masked-loss path against
full logits (vocab 32k, 15% of 64x512 positions masked, forward+backward),
each variant in a fresh subprocess that measures its own peak RSS growth.
See KERNELS.md for what the figures mean.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from .report import plot_lines, print_table

WORKER_FLAG = "--kernels-worker"  # python -m opt_scale.bench.kernels --kernels-worker KIND JSON
ATTENTION_VARIANTS = {
    "key_lengths": "ragged key lengths only: the towers and the cross-modal encoder",
    "causal": "causal: the decoders' self-attention",
    "segments": "ragged key lengths + 3 segments with a pair rule: modality-separated variants",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    g = p.add_argument_group("masked-token loss")
    g.add_argument("--vocab", type=int, default=32000)
    g.add_argument("--batch", type=int, default=64)
    g.add_argument("--seq", type=int, default=512)
    g.add_argument("--hidden", type=int, default=256, help="hidden size of the projected rows")
    g.add_argument("--mask-ratio", type=float, default=0.15)
    g.add_argument("--loss-repeats", type=int, default=3, help="timed forward+backward runs per variant (CPU)")
    g = p.add_argument_group("attention (CUDA)")
    g.add_argument("--attn-seqs", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    g.add_argument("--attn-tokens", type=int, default=16384, help="batch x sequence per measurement")
    g.add_argument("--attn-variants", nargs="+", choices=list(ATTENTION_VARIANTS), default=list(ATTENTION_VARIANTS),
                   help="which masks to time (the model launches key_lengths and causal)")
    g.add_argument("--heads", type=int, default=16)
    g.add_argument("--head-dim", type=int, default=64, choices=[32, 64, 128])
    g.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    g.add_argument("--repeats", type=int, default=30, help="timed runs per CUDA measurement (median)")
    p.add_argument("--skip-compile-check", action="store_true", help="CPU: skip compiling the kernels for sm_90")
    p.add_argument("--skip-interpreter-check", action="store_true", help="CPU: skip the interpreter correctness run")


def run(args: argparse.Namespace) -> dict:
    import torch
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    return run_cuda(args) if device == "cuda" else run_cpu(args)


# =========================================================================== CPU

def run_cpu(args: argparse.Namespace) -> dict:
    # shared machines: the load says how far the times can be trusted
    result: dict = {"device": "cpu", "ok": True, "load_average_before": os.getloadavg()}
    if not args.skip_interpreter_check:
        result["interpreter_check"] = interpreter_check()
        print_table(result["interpreter_check"]["rows"], title="Triton kernels under the interpreter vs float64")
        result["ok"] &= result["interpreter_check"]["ok"]
    if not args.skip_compile_check:
        result["compile_check"] = _compile_check()
        result["ok"] &= result["compile_check"]["ok"]
    result["masked_loss"] = masked_loss_cpu(args)
    result["ok"] &= result["masked_loss"]["ok"]
    result["load_average_after"] = os.getloadavg()
    print(f"load average before/after: {result['load_average_before'][0]:.1f} / {result['load_average_after'][0]:.1f}"
          f" on {os.cpu_count()} cores")
    if args.plot and "rows" not in result["masked_loss"]:
        print(f"no plot: the masked-loss comparison did not run ({result['masked_loss'].get('error')})")
    elif args.plot:
        rows = result["masked_loss"]["rows"]
        names = [r["variant"] for r in rows]
        base = rows[0]
        plot_lines({"time / full logits": (names, [r["time_s"] / base["time_s"] for r in rows]),
                    "peak memory / full logits": (names, [r["peak_mib"] / base["peak_mib"] for r in rows])},
                   "variant", "relative to full logits", "masked-token loss on CPU (fwd+bwd)", args.plot,
                   targets={"full logits": 1.0}, bars=True)
    return result


LOSS_VARIANTS = {
    "full_logits": "F.linear over all B*L rows + F.cross_entropy(ignore_index)",
    "selected_full": "gather masked rows, their full logits + F.cross_entropy",
    "masked_chunked": "masked_linear_cross_entropy, CPU default (chunked)",
}


def masked_loss_cpu(args: argparse.Namespace) -> dict:
    shape = dict(batch=args.batch, seq=args.seq, hidden=args.hidden, vocab=args.vocab, mask_ratio=args.mask_ratio,
                 repeats=args.loss_repeats)
    need = 3 * args.batch * args.seq * args.vocab * 4  # full logits: 3 fp32 [N, V] buffers live at the peak
    available = _mem_available()
    if available is not None and need * 1.2 > available:
        return {"ok": False, "error": f"full-logits baseline needs ~{need / 2**30:.1f} GiB, "
                                      f"{available / 2**30:.1f} GiB available: lower --batch"}
    rows = []
    for variant, what in LOSS_VARIANTS.items():
        r = _subprocess_json("loss", {**shape, "variant": variant}, {"MALLOC_MMAP_THRESHOLD_": "65536"})
        rows.append({"variant": variant, **r, "what": what})
    base = rows[0]
    for r in rows:
        r["speedup"] = base["time_s"] / r["time_s"]
        r["memory_ratio"] = base["peak_mib"] / r["peak_mib"]
        r["loss_diff"] = abs(r["loss"] - base["loss"])
    print_table(rows, ["variant", "time_s", "peak_mib", "speedup", "memory_ratio", "loss", "loss_diff"],
                title=f"masked-token loss, fwd+bwd, B={args.batch} L={args.seq} D={args.hidden} V={args.vocab} "
                      f"masked={args.mask_ratio:.0%} (median of {args.loss_repeats}; peak = RSS growth)")
    same_loss = all(r["loss_diff"] <= 1e-4 * abs(base["loss"]) for r in rows)
    return {"ok": same_loss, "shape": shape, "rows": rows}


def _loss_worker(spec: dict) -> dict:
    """Runs in a fresh process: memory first (one cold fwd+bwd), then timing."""
    import torch
    import torch.nn.functional as F

    from opt_scale.kernels import masked_linear_cross_entropy

    torch.manual_seed(0)
    B, L, D, V = spec["batch"], spec["seq"], spec["hidden"], spec["vocab"]
    hidden = torch.randn(B, L, D, requires_grad=True)
    weight = (torch.randn(V, D) * D ** -0.5).requires_grad_()
    bias = torch.zeros(V, requires_grad=True)
    labels = torch.full((B * L,), -100)
    picked = torch.randperm(B * L)[:round(spec["mask_ratio"] * B * L)]
    labels[picked] = torch.randint(0, V, (len(picked),))

    def step() -> float:
        if spec["variant"] == "full_logits":
            # no Python reference to the logits: the baseline at its leanest (they die inside log_softmax)
            loss = F.cross_entropy(F.linear(hidden.reshape(-1, D), weight, bias), labels, ignore_index=-100)
        else:
            positions = (labels != -100).nonzero().squeeze(1)
            backend = "reference" if spec["variant"] == "selected_full" else None
            loss, _ = masked_linear_cross_entropy(hidden, weight, bias, positions, labels[positions],
                                                  backend=backend)
        loss.backward()
        value = loss.item()
        for p in (hidden, weight, bias):
            p.grad = None
        return value

    baseline = _rss_kib()
    hwm_reset = _reset_peak_rss()
    start = time.perf_counter()
    loss = step()
    first = time.perf_counter() - start
    peak = _peak_rss_kib()
    times = []
    for _ in range(spec["repeats"]):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"time_s": statistics.median(times), "first_run_s": first, "peak_mib": (peak - baseline) / 1024,
            "peak_method": "VmHWM reset via clear_refs" if hwm_reset else "VmHWM since start (upper bound)",
            "loss": loss}


def interpreter_check(head_dims: tuple[int, ...] = (32,)) -> dict:
    """:func:`kernel_correctness` at small shapes under the Triton interpreter, in a subprocess
    of its own (TRITON_INTERPRET is a process-wide switch); fp32 and fp16 (the interpreter's
    bf16 ``tl.dot`` is not exact)."""
    return _subprocess_json("interpreter-check", {"head_dims": list(head_dims)}, {"TRITON_INTERPRET": "1"})


# Max error relative to the reference's largest magnitude. bf16 keeps 8 mantissa bits (fp16: 11), so
# rounding the inputs alone moves outputs by ~2^-9 of their scale, gradients (sums of products) more.
TOLERANCE = {"float32": 5e-6, "float16": 4e-3, "bfloat16": 3e-2}


def kernel_correctness(device: str, dtypes: tuple, head_dims: tuple[int, ...] = (32,), long: bool = False) -> dict:
    """The Triton kernels against float64 PyTorch, forward and every gradient, on
    the attention variants the model launches (key lengths only: towers and the
    cross-modal encoder; causal: decoder self-attention; queries shorter than keys
    with key lengths: decoder cross-attention) plus the segment path, and the
    masked-token loss. ``device`` cpu runs under the interpreter (small shapes);
    cuda compiles the kernels (``long``: sequences of the base preset's size)."""
    import torch

    from opt_scale.kernels import attention, masked_linear_cross_entropy
    from opt_scale.kernels.attention import attention_reference

    rows = []
    g = torch.Generator().manual_seed(0)
    L = 1000 if long else 130
    three_segments = torch.tensor([[0] * 21 + [1] * 50 + [2] * 29])  # boundaries off the 32-wide tiles
    cases = {
        f"attention key lengths L={L}": dict(B=3, Lq=L, Lk=L, kw=dict(key_lengths=torch.tensor([1, 37, L]))),
        f"attention causal L={L // 2}": dict(B=2, Lq=L // 2, Lk=L // 2, kw=dict(causal=True)),
        f"attention causal 37x{L} (cached decoding)": dict(B=2, Lq=37, Lk=L, kw=dict(causal=True)),
        f"attention cross 37x{L}, key lengths": dict(B=2, Lq=37, Lk=L, kw=dict(key_lengths=torch.tensor([L, 60]))),
        "attention segments L=100": dict(B=1, Lq=100, Lk=100, kw=dict(
            q_segments=three_segments, k_segments=three_segments,
            allowed_pairs=torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 1]], dtype=torch.bool))),
    }
    for name, c in cases.items():
        kw = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in c["kw"].items()}
        for D in head_dims:
            for dtype in dtypes:
                q, k, v = (torch.randn(c["B"], 2, n, D, generator=g).to(device, dtype)
                           for n in (c["Lq"], c["Lk"], c["Lk"]))
                grad = torch.randn(c["B"], 2, c["Lq"], D, generator=g).to(device)
                got, ref = [], []
                for backend, cast, sink in (("triton", lambda t: t, got), ("sdpa", lambda t: t.double(), ref)):
                    leaves = [cast(t).detach().requires_grad_() for t in (q, k, v)]
                    fn = attention if backend == "triton" else attention_reference
                    kwargs = {"backend": "triton"} if backend == "triton" else {}
                    out = fn(*leaves, **kw, **kwargs)
                    (out.double() * grad.double()).sum().backward()
                    sink.extend([out, *(t.grad for t in leaves)])
                errs = [float((a.detach().double() - b).abs().max() / b.abs().max()) for a, b in zip(got, ref)]
                dname = str(dtype).split(".")[1]
                rows.append({"check": name, "head_dim": D, "dtype": dname, "max_rel_err": max(errs),
                             "tolerance": TOLERANCE[dname], "ok": max(errs) <= TOLERANCE[dname]})
    hidden = torch.randn(4, 50, 32, generator=g)
    weight, bias = torch.randn(3000, 32, generator=g) * 0.3, torch.randn(3000, generator=g)
    positions = torch.randperm(200, generator=g)[:30]
    targets = torch.randint(0, 3000, (30,), generator=g)
    for dtype in ((torch.float32,) if device == "cpu" else dtypes):
        results = []
        for backend, cast in (("triton", lambda t: t.to(device, dtype)), ("reference", lambda t: t.double())):
            leaves = [cast(t).detach().requires_grad_() for t in (hidden, weight, bias)]
            loss, _ = masked_linear_cross_entropy(*leaves, positions.to(leaves[0].device),
                                                  targets.to(leaves[0].device), label_smoothing=0.1,
                                                  backend=backend, chunk_rows=8 if backend == "triton" else None)
            loss.backward()
            results.append([loss, *(t.grad for t in leaves)])
        errs = [float((a.detach().double().cpu() - b.detach().cpu()).abs().max() / b.detach().abs().max())
                for a, b in zip(*results)]
        dname = str(dtype).split(".")[1]
        tol = 1e-5 if dtype == torch.float32 else TOLERANCE[dname]
        rows.append({"check": "masked loss V=3000 (4 row chunks, 3 vocab blocks)", "head_dim": 32, "dtype": dname,
                     "max_rel_err": max(errs), "tolerance": tol, "ok": max(errs) <= tol})
    return {"ok": all(r["ok"] for r in rows), "rows": rows}


def _compile_check() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "opt_scale.kernels.compile_check"], capture_output=True, text=True,
                          env=env)
    try:
        rows = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"ok": False, "error": proc.stderr[-2000:]}
    failed = [r for r in rows if not r["ok"]]
    print(f"\nsm_90 compile check: {len(rows) - len(failed)}/{len(rows)} kernel variants compiled, max shared memory "
          f"{max(r.get('shared_bytes', 0) for r in rows) // 1024} KiB" + (f"; FAILED: {failed}" if failed else ""))
    return {"ok": not failed, "compiled": len(rows), "failed": failed, "rows": rows}


# =========================================================================== CUDA

def run_cuda(args: argparse.Namespace) -> dict:
    import torch
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    attn = [attention_cuda(args, seq, dtype, variant) for variant in args.attn_variants for seq in args.attn_seqs]
    attn_rows = [r for rows in attn for r in rows]
    print_table(attn_rows, ["variant", "impl", "seq", "pass", "ms", "tflops", "gbps", "peak_mib"],
                title=f"attention, {args.attn_tokens} tokens, H={args.heads} D={args.head_dim} {args.dtype} "
                      f"(median of {args.repeats}); variants: "
                      + "; ".join(f"{v}: {ATTENTION_VARIANTS[v]}" for v in args.attn_variants))
    loss_rows = masked_loss_cuda(args, dtype)
    print_table(loss_rows, ["variant", "ms", "tflops", "peak_mib", "speedup", "memory_ratio"],
                title=f"masked-token loss fwd+bwd, B={args.batch} L={args.seq} D={args.hidden} V={args.vocab}")
    if args.plot:
        series = {}
        for r in attn_rows:
            if r["pass"] == "fwd+bwd" and r["tflops"]:
                xs, ys = series.setdefault(f"{r['impl']} ({r['variant']})", ([], []))
                xs.append(r["seq"])
                ys.append(r["tflops"])
        plot_lines(series, "sequence length", "TFLOP/s (dense-equivalent)", "attention fwd+bwd", args.plot)
    return {"device": "cuda", "ok": True, "attention": attn_rows, "masked_loss": loss_rows}


def _cuda_time(fn, repeats: int) -> tuple[float, float]:
    """(median ms, peak MiB above what was allocated before) of ``fn()``."""
    import torch
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), peak


def attention_cuda(args, seq: int, dtype, variant: str = "segments") -> list[dict]:
    import torch
    import torch.nn.functional as F

    from opt_scale.kernels import attention

    B, H, D = max(1, args.attn_tokens // seq), args.heads, args.head_dim
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(B, H, seq, D, device="cuda", dtype=dtype, generator=g).requires_grad_() for _ in range(3))
    lengths = torch.randint(seq // 2, seq + 1, (B,), device="cuda", generator=g)
    seg = allowed = None
    if variant == "causal":
        kw = dict(causal=True)
    elif variant == "key_lengths":
        kw = dict(key_lengths=lengths)
    else:
        cut = [int(seq * 0.25), int(seq * 0.75)]  # [text | image | audio]
        seg = torch.cat([torch.full((c,), i, device="cuda")
                         for i, c in enumerate([cut[0], cut[1] - cut[0], seq - cut[1]])])
        seg = seg.expand(B, seq).contiguous()
        allowed = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 1]], dtype=torch.bool, device="cuda")
        kw = dict(key_lengths=lengths, q_segments=seg, k_segments=seg, allowed_pairs=allowed)
    grad = torch.randn_like(q)
    impls = {
        "triton": lambda: attention(q, k, v, **kw, backend="triton"),
        "sdpa+mask": lambda: attention(q, k, v, **kw, backend="sdpa"),
        "sdpa no mask (ceiling)": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=variant == "causal"),
    }
    flex = _flex_attention(B, seq, lengths if variant != "causal" else None, seg, allowed)
    if flex is not None:
        impls["flex_attention"] = lambda: flex(q, k, v)
    # Dense-equivalent FLOPs (the convention FlashAttention reports): 2 matmuls of 2*L*L*D per head forward,
    # 2.5x that backward. Bytes: the roofline floor, each operand once.
    fwd_flops = 4 * B * H * seq * seq * D
    elem = q.element_size()
    fwd_bytes = 4 * B * H * seq * D * elem
    bwd_bytes = 8 * B * H * seq * D * elem
    rows = []
    for name, fn in impls.items():
        try:
            ms, peak = _cuda_time(fn, args.repeats)
            rows.append(dict(impl=name, variant=variant, seq=seq, **{"pass": "fwd"}, ms=ms,
                             tflops=fwd_flops / ms / 1e9, gbps=fwd_bytes / ms / 1e6, peak_mib=peak))

            def fwd_bwd(fn=fn):
                q.grad = k.grad = v.grad = None
                fn().backward(grad)
            ms, peak = _cuda_time(fwd_bwd, args.repeats)
            rows.append(dict(impl=name, variant=variant, seq=seq, **{"pass": "fwd+bwd"}, ms=ms,
                             tflops=3.5 * fwd_flops / ms / 1e9, gbps=(fwd_bytes + bwd_bytes) / ms / 1e6,
                             peak_mib=peak))
        except Exception as exc:  # e.g. out of memory for the N x N mask at long sequences
            rows.append(dict(impl=name, variant=variant, seq=seq, **{"pass": "error"}, ms=None, tflops=None,
                             gbps=None, peak_mib=None, error=f"{type(exc).__name__}: {str(exc)[:200]}"))
            torch.cuda.empty_cache()
    return rows


def _flex_attention(B: int, seq: int, lengths, seg, allowed):
    """FlexAttention with the same rule as a block mask, compiled; None where unavailable."""
    try:
        import torch
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError:
        return None

    def rule(b, h, qi, ki):
        if lengths is None:
            return ki <= qi  # causal
        if seg is None:
            return ki < lengths[b]
        return (ki < lengths[b]) & allowed[seg[b, qi], seg[b, ki]]

    block_mask = create_block_mask(rule, B, None, seq, seq, device="cuda")
    compiled = torch.compile(flex_attention)
    return lambda q, k, v: compiled(q, k, v, block_mask=block_mask)


def masked_loss_cuda(args, dtype) -> list[dict]:
    import torch
    import torch.nn.functional as F

    from opt_scale.kernels import masked_linear_cross_entropy

    B, L, D, V = args.batch, args.seq, args.hidden, args.vocab
    hidden = torch.randn(B, L, D, device="cuda", dtype=dtype, requires_grad=True)
    weight = (torch.randn(V, D, device="cuda", dtype=dtype) * D ** -0.5).requires_grad_()
    bias = torch.zeros(V, device="cuda", dtype=dtype, requires_grad=True)
    labels = torch.full((B * L,), -100, device="cuda")
    picked = torch.randperm(B * L, device="cuda")[:round(args.mask_ratio * B * L)]
    labels[picked] = torch.randint(0, V, (len(picked),), device="cuda")
    positions = (labels != -100).nonzero().squeeze(1)
    M = len(positions)

    def full():
        F.cross_entropy(F.linear(hidden.reshape(-1, D), weight, bias).float(), labels).backward()

    def selected_full():
        loss, _ = masked_linear_cross_entropy(hidden, weight, bias, positions, labels[positions], backend="reference")
        loss.backward()

    def fused():
        loss, _ = masked_linear_cross_entropy(hidden, weight, bias, positions, labels[positions], backend="triton")
        loss.backward()

    rows = []
    variants = (("full_logits", full, B * L), ("selected_full", selected_full, M), ("triton_chunked", fused, M))
    for name, fn, n_rows in variants:
        def step(fn=fn):
            hidden.grad = weight.grad = bias.grad = None
            fn()
        ms, peak = _cuda_time(step, max(5, args.repeats // 3))
        rows.append(dict(variant=name, ms=ms, tflops=6 * n_rows * D * V / ms / 1e9, peak_mib=peak))
    for r in rows:
        r["speedup"] = rows[0]["ms"] / r["ms"]
        r["memory_ratio"] = rows[0]["peak_mib"] / max(r["peak_mib"], 1e-9)
    return rows


# =========================================================================== subprocess plumbing

def _subprocess_json(kind: str, spec: dict, env: dict[str, str]) -> dict:
    proc = subprocess.run([sys.executable, "-m", "opt_scale.bench.kernels", WORKER_FLAG, kind, json.dumps(spec)],
                          capture_output=True, text=True, env={**os.environ, **env})
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _rss_kib() -> int:
    import gc
    gc.collect()
    return _proc_status_kib("VmRSS")


def _peak_rss_kib() -> int:
    return _proc_status_kib("VmHWM")


def _reset_peak_rss() -> bool:
    """Linux resets VmHWM to the current RSS when "5" is written to clear_refs."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _mem_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _worker_main(argv: list[str]) -> int:
    kind, spec = argv[0], json.loads(argv[1])
    if kind == "loss":
        out = _loss_worker(spec)
    elif kind == "interpreter-check":
        import torch
        out = kernel_correctness("cpu", (torch.float32, torch.float16), head_dims=tuple(spec["head_dims"]))
    else:
        raise SystemExit(f"unknown worker {kind}")
    print(json.dumps(out, default=float))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == WORKER_FLAG:
        sys.exit(_worker_main(sys.argv[2:]))
    sys.exit(f"use: opt-bench kernels (this module's {WORKER_FLAG} is internal)")
