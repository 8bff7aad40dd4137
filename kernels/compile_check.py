"""Compile the Triton kernels for an NVIDIA target without a GPU.

The interpreter checks the kernels' arithmetic but not that they compile:
it never lowers to TTGIR/LLVM/PTX, so an unsupported construct, a layout the
backend rejects or a config that overflows shared memory only shows on a
GPU. Triton's compiler and the ptxas it bundles need no device, so this
module compiles every kernel, for each dtype and head dim, with the autotune
configs that survive the shared-memory pruning, for sm_90 (H100) by default,
and reports ptxas's shared-memory figure for each.

Must run where ``TRITON_INTERPRET`` is unset (the interpreter replaces the
JIT functions this compiles): ``python -m opt_scale.kernels.compile_check``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

SHARED_MEMORY_LIMIT = {90: 227 * 1024, 80: 163 * 1024}
_TENSOR_DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


def _signature(jit, dtype: str, constexprs: dict) -> dict[str, str]:
    sig = {}
    for name in jit.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in ("Q", "K", "V", "Out", "DO", "DQ", "DK", "DV"):
            sig[name] = f"*{dtype}"
        elif name in ("Lse", "Delta", "Logits", "Loss", "InvCount"):
            sig[name] = "*fp32"
        elif name in ("KeyLengths", "QAllow", "KBit"):
            sig[name] = "*i32"
        elif name == "Targets":
            sig[name] = "*i64"
        elif name in ("qk_scale", "scale", "label_smoothing"):
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def compile_kernels(arch: int = 90, head_dims=(32, 64, 128), dtypes=("fp16", "bf16", "fp32"),
                    all_configs: bool = False) -> list[dict]:
    """One row per compiled kernel variant. ``all_configs=False`` compiles the
    largest surviving config of each autotuner (the one most likely to break)."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("compile_check needs TRITON_INTERPRET unset")
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from . import attention_triton as at
    from . import masked_loss_triton as mt

    target = GPUTarget("cuda", arch, 32)
    limit = SHARED_MEMORY_LIMIT.get(arch, 99 * 1024)
    rows = []

    def build(jit, dtype, constexprs, num_warps, num_stages, label):
        start = time.perf_counter()
        row = dict(kernel=jit.__name__, dtype=dtype, config=label, ok=False)
        try:
            compiled = triton.compile(ASTSource(jit, _signature(jit, dtype, constexprs), constexprs), target=target,
                                      options=dict(num_warps=num_warps, num_stages=num_stages))
            row["shared_bytes"] = compiled.metadata.shared
            row["ok"] = compiled.metadata.shared <= limit
            if not row["ok"]:
                row["error"] = f"needs {compiled.metadata.shared} B of shared memory, sm_{arch} has {limit}"
        except Exception as exc:  # the point is to report every failure, not the first
            row["error"] = f"{type(exc).__name__}: {str(exc)[:500]}"
        row["seconds"] = round(time.perf_counter() - start, 2)
        rows.append(row)

    for autotuner in (at._attention_fwd_kernel, at._attention_bwd_dkdv_kernel, at._attention_bwd_dq_kernel):
        for dtype in dtypes:
            for head_dim in head_dims:
                probe = torch.empty(1, dtype=getattr(torch, _TENSOR_DTYPES[dtype]))
                configs = at._prune_by_shared_memory(autotuner.configs, {"Q": probe}, BLOCK_D=head_dim)
                if not all_configs:
                    configs = [max(configs, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] * c.num_stages)]
                for cfg in configs:
                    constexprs = dict(CAUSAL=True, HAS_LENGTHS=True, HAS_SEGMENTS=True, DOT_PRECISION="tf32",
                                      BLOCK_D=head_dim, **cfg.kwargs)
                    tile = f"{cfg.kwargs['BLOCK_M']}x{cfg.kwargs['BLOCK_N']}"
                    label = f"D={head_dim} {tile} w{cfg.num_warps} s{cfg.num_stages}"
                    build(autotuner.fn, dtype, constexprs, cfg.num_warps, cfg.num_stages, label)
    build(mt._cross_entropy_rows_kernel, "fp32", dict(HAS_SMOOTHING=True, BLOCK_V=4096), 16, 1, "BLOCK_V=4096 w16")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--head-dims", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--dtypes", nargs="+", default=["fp16", "bf16", "fp32"])
    p.add_argument("--all-configs", action="store_true")
    args = p.parse_args(argv)
    rows = compile_kernels(args.arch, tuple(args.head_dims), tuple(args.dtypes), args.all_configs)
    print(json.dumps(rows))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
