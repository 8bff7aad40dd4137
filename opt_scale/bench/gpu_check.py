"""One-shot check of a GPU node: ``opt-bench gpu-check`` (``slurm/gpu_check.sbatch``).

Three parts, one JSON verdict, a few minutes on one GPU:

1. **kernel correctness**: the Triton attention (the variants the model
   launches: key lengths, causal, short queries over long keys; and the
   segment path) and the masked-token loss against float64 PyTorch, forward
   and every gradient, in fp16 and bf16, head dims 64, 80 and 128;
2. **kernel speed**: the same kernels against SDPA (with the equivalent
   mask), FlexAttention and the full-logits loss, at a base-sized sequence;
3. **training**: ``--steps`` optimizer steps of ``--config`` (base) in bf16
   under ZeRO-3 through the real engine and loader (``opt-bench step``'s
   probe), with samples/s, MFU and peak memory.

Without CUDA, part 1 runs under the Triton interpreter (fp32 and fp16, small
shapes: the interpreter's bf16 ``tl.dot`` is not exact), part 2 is skipped
and says why, and part 3 runs on the CPU, so the whole path is exercised by
the tests. The verdict is ``pass`` when every part that ran passed.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

from .launch import add_data_arguments, data_overrides
from .report import print_table

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "--preset", dest="preset", default="base",
                   help="preset of the training part (on CPU, tiny is what fits in minutes)")
    p.add_argument("--steps", type=int, default=50, help="timed optimizer steps of the training part")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before them")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--min-speedup", type=float, default=1.0,
                   help="the Triton attention (fwd+bwd, key-lengths variant) must be at least this many times "
                        "as fast as SDPA with the equivalent mask")
    p.add_argument("--skip", nargs="+", choices=["correctness", "speed", "training"], default=[],
                   help="parts not to run")
    add_data_arguments(p)
    p.add_argument("--work-dir", default="", help="logs and scratch files (default runs/bench/gpu-check)")
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="config overrides for the training part")


def run(args: argparse.Namespace) -> dict:
    import torch
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible (CUDA_VISIBLE_DEVICES, the driver?)")
    started = time.time()
    result: dict = {"bench": "gpu-check", "device": device, "host": os.uname().nodename,
                    "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
                    "torch": torch.__version__, "parts": {}}
    parts = result["parts"]
    for name, fn in (("correctness", correctness), ("speed", speed), ("training", training)):
        if name in args.skip:
            parts[name] = {"status": "skipped", "why": "--skip"}
            continue
        t0 = time.time()
        try:
            parts[name] = fn(args, device)
        except Exception as exc:  # one broken part must not hide the others' results
            parts[name] = {"status": "fail", "error": f"{type(exc).__name__}: {str(exc)[:1000]}"}
        parts[name]["seconds"] = round(time.time() - t0, 1)
        print(f"gpu-check {name}: {parts[name]['status']} ({parts[name]['seconds']} s)"
              + (f" - {parts[name].get('why') or parts[name].get('error')}" if parts[name]["status"] != "pass" else ""),
              flush=True)
    ran = [p["status"] for p in parts.values() if p["status"] != "skipped"]
    result["verdict"] = "pass" if ran and all(s == "pass" for s in ran) else "fail"
    result["ok"] = result["verdict"] == "pass"
    result["seconds"] = round(time.time() - started, 1)
    statuses = ", ".join(f"{k} {v['status']}" for k, v in parts.items())
    print(f"\ngpu-check verdict: {result['verdict'].upper()} on {result['gpu'] or 'CPU'} in {result['seconds']} s "
          f"({statuses})")
    return result


# -- parts ------------------------------------------------------------------

def correctness(args: argparse.Namespace, device: str) -> dict:
    if device == "cuda":
        import torch

        from .kernels import kernel_correctness
        out = kernel_correctness("cuda", (torch.float16, torch.bfloat16), head_dims=(64, 80, 128), long=True)
    else:
        from .kernels import interpreter_check
        out = interpreter_check(head_dims=(32, 80))
    print_table(out["rows"], ["check", "head_dim", "dtype", "max_rel_err", "tolerance", "ok"],
                title=f"kernel correctness vs float64 ({'compiled' if device == 'cuda' else 'Triton interpreter'})")
    failed = [r for r in out["rows"] if not r["ok"]]
    return {"status": "fail" if failed else "pass", "rows": out["rows"],
            **({"why": f"{len(failed)} check(s) over tolerance"} if failed else {})}


def speed(args: argparse.Namespace, device: str) -> dict:
    if device != "cuda":
        return {"status": "skipped", "why": "needs CUDA (kernel times on CPU say nothing about a GPU)"}
    import torch

    from .kernels import add_arguments as kernel_arguments
    from .kernels import attention_cuda, masked_loss_cuda
    parser = argparse.ArgumentParser()
    kernel_arguments(parser)
    kargs = parser.parse_args(["--head-dim", "64", "--repeats", "20"])
    seq = 1024  # the base preset's cross-modal sequence is a few hundred to ~1k tokens
    rows = [r for variant in ("key_lengths", "causal") for r in attention_cuda(kargs, seq, torch.bfloat16, variant)]
    print_table(rows, ["variant", "impl", "seq", "pass", "ms", "tflops"], title="attention, bf16, fwd and fwd+bwd")
    loss_rows = masked_loss_cuda(kargs, torch.bfloat16)
    print_table(loss_rows, ["variant", "ms", "peak_mib", "speedup", "memory_ratio"],
                title="masked-token loss fwd+bwd, bf16")
    ms = {(r["variant"], r["impl"]): r["ms"] for r in rows if r["pass"] == "fwd+bwd"}
    speedups = {v: ms[(v, "sdpa+mask")] / ms[(v, "triton")] for v in ("key_lengths", "causal")
                if ms.get((v, "triton")) and ms.get((v, "sdpa+mask"))}
    slow = {v: s for v, s in speedups.items() if s < args.min_speedup}
    why = ("no attention timing completed" if not speedups
           else f"Triton slower than SDPA+mask x{args.min_speedup}: {slow}" if slow else None)
    return {"status": "fail" if why else "pass", "attention": rows, "masked_loss": loss_rows,
            "speedup_vs_sdpa_mask": speedups, **({"why": why} if why else {})}


def training(args: argparse.Namespace, device: str) -> dict:
    from .launch import run_probes
    from .step import step_row
    from .train_probe import ProbeSpec
    work = Path(args.work_dir or "runs/bench/gpu-check")
    precision = "bf16" if device == "cuda" else "fp32"
    ds_config = "zero3_gpu" if device == "cuda" else "zero3_cpu"
    spec = ProbeSpec(preset=args.preset, ds_configs={ds_config: ds_config}, steps=args.steps, warmup=args.warmup,
                     overrides=[*data_overrides(args), f"train.precision={precision}", *args.overrides],
                     work_dir=str(work), peak_tflops=0.0, profile=False)
    probe_args = argparse.Namespace(world_sizes="1")
    probes = run_probes(spec, probe_args, work)
    row = step_row(probes[0])
    print_table([row], ["ds_config", "micro_batch", "samples_per_s", "step_s_median", "tflops", "mfu", "peak_mem_gb"],
                title=f"training: {args.preset}, {precision}, ZeRO-3, {args.steps} timed steps")
    losses = probes[0]["final_loss"]
    finite = bool(losses) and all(math.isfinite(v) for v in losses.values())
    return {"status": "pass" if finite else "fail", "preset": args.preset, "precision": precision,
            "final_loss": losses, **row, **({"why": f"loss at the last step: {losses}"} if not finite else {})}
