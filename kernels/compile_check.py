"""Compile the Triton kernels for an NVIDIA target without a GPU.

The interpreter checks the kernels' arithmetic but not that they compile:
it never lowers to TTGIR/LLVM/PTX, so an unsupported construct, a layout the
backend rejects or a config that overflows shared memory only shows on a
GPU. Triton's compiler and the ptxas it bundles need no device, so this
module compiles every kernel, for each dtype and head dim, with the autotune
configs that survive the shared-memory pruning, for sm_90 (H100) by default,
and reports ptxas's shared-memory figure for each.

``--launch-variants`` compiles the attention kernels as a launch would (see
:func:`compile_launch_variants`): arguments specialised as the JIT
specialises real tensors and strides, for the mask variants the model
launches, and reports per variant shared memory, registers, spills and the
asynchronous copies that show the key/value loads are software-pipelined.

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


def largest_config(configs):
    """The config with the most tile work in flight: the one most likely to break."""
    return max(configs, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] * c.num_stages)


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
                configs = at._prune_by_shared_memory(autotuner.configs, {"Q": probe}, BLOCK_D=head_dim,
                                                     shared_budget=limit)
                if not all_configs:
                    configs = [largest_config(configs)]
                for cfg in configs:
                    constexprs = dict(CAUSAL=True, HAS_LENGTHS=True, HAS_SEGMENTS=True, DOT_PRECISION="tf32",
                                      BLOCK_D=head_dim, **cfg.kwargs)
                    tile = f"{cfg.kwargs['BLOCK_M']}x{cfg.kwargs['BLOCK_N']}"
                    label = f"D={head_dim} {tile} w{cfg.num_warps} s{cfg.num_stages}"
                    build(autotuner.fn, dtype, constexprs, cfg.num_warps, cfg.num_stages, label)
    build(mt._cross_entropy_rows_kernel, "fp32", dict(HAS_SMOOTHING=True, BLOCK_V=4096), 16, 1, "BLOCK_V=4096 w16")
    return rows


# Mask variants: constexpr flags of the attention kernels. The model launches
# the first two (encoders and cross-attention: key lengths; decoders' self-
# attention: causal over padded rows); segments are the kernels' option for
# packed or modality-separated variants, which the model does not launch yet.
LAUNCH_VARIANTS = {
    "key_lengths": dict(CAUSAL=False, HAS_LENGTHS=True, HAS_SEGMENTS=False),
    "causal": dict(CAUSAL=True, HAS_LENGTHS=True, HAS_SEGMENTS=False),
    "segments": dict(CAUSAL=False, HAS_LENGTHS=True, HAS_SEGMENTS=True),
}
MODEL_LAUNCHES = ("key_lengths", "causal")


def _launch_arguments(jit, dtype: str, head_dim: int, constexprs: dict) -> tuple[dict, dict, dict]:
    """(signature, constexprs, attrs) of a realistic launch: 12 heads of
    ``head_dim`` over 1000 queries and keys, q/k/v views of a fused [B, L, 3,
    H, D] projection. Each argument is specialised by Triton's own rule (an
    int equal to 1 becomes a constant, a multiple of 16 and an aligned
    pointer get divisibility 16), which is what lets the backend vectorise the
    tile loads and issue them as asynchronous copies."""
    import torch
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend
    tensor = getattr(torch, _TENSOR_DTYPES[dtype])
    example = {"H": 12, "Lq": 1000, "Lk": 1000, "D": head_dim, "SEQ_Q_BUCKET": 1024, "SEQ_K_BUCKET": 1024}
    signature, constexprs, attrs = {}, dict(constexprs), {}
    for i, name in enumerate(jit.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
            continue
        if name in ("Q", "K", "V", "Out", "DO", "DQ", "DK", "DV"):
            value = torch.empty(8, dtype=tensor)
        elif name in ("Lse", "Delta"):
            value = torch.empty(8)
        elif name in ("KeyLengths", "QAllow", "KBit"):
            value = torch.empty(8, dtype=torch.int32)
        elif name.startswith("stride_"):
            value = 1 if name.endswith("d") else 3 * 12 * head_dim
        elif name in ("qk_scale", "scale"):
            value = 0.125
        else:
            value = example[name]
        kind, spec = native_specialize_impl(BaseBackend, value, False, True, True)
        signature[name] = kind
        if kind == "constexpr":
            constexprs[name] = value
        elif spec:
            attrs[(i,)] = BaseBackend.parse_attr(spec)
    return signature, constexprs, attrs


def _ptxas_resources(ptx: str, arch: int) -> dict:
    """Registers and spill bytes per thread, from the bundled ptxas (-v)."""
    import re
    import subprocess
    import tempfile

    from triton.backends.nvidia.compiler import get_ptxas
    target = re.search(r"^\.target\s+(\S+)", ptx, re.M).group(1)
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
        f.write(ptx)
        f.flush()
        proc = subprocess.run([get_ptxas(arch).path, "-v", f"--gpu-name={target}", f.name, "-o", os.devnull],
                              capture_output=True, text=True)
    info = proc.stderr + proc.stdout
    registers = re.search(r"Used (\d+) registers", info)
    spills = re.search(r"(\d+) bytes spill stores", info)
    return {"registers": int(registers.group(1)) if registers else None,
            "spill_bytes": int(spills.group(1)) if spills else None}


def compile_launch_variants(archs=(80, 90), head_dims=(64, 80, 128), dtypes=("fp16", "bf16"),
                            variants=tuple(LAUNCH_VARIANTS)) -> list[dict]:
    """One row per (attention kernel, arch, dtype, head dim, mask variant),
    each with the largest config that survives the shared-memory pruning:
    shared bytes, registers, spills, and ``async_copies``, the PTX's
    ``cp.async`` instructions. Zero async copies means the K/V tile loads
    were not software-pipelined (one buffer, every load waited on), which
    the interpreter cannot see and which costs a Hopper most of its
    bandwidth; ``pipelined`` is False then."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("compile_check needs TRITON_INTERPRET unset")
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from . import attention_triton as at
    from .triton_support import next_power_of_2
    rows = []
    for autotuner in (at._attention_fwd_kernel, at._attention_bwd_dkdv_kernel, at._attention_bwd_dq_kernel):
        for arch in archs:
            limit = SHARED_MEMORY_LIMIT.get(arch, 99 * 1024)
            for dtype in dtypes:
                probe = torch.empty(1, dtype=getattr(torch, _TENSOR_DTYPES[dtype]))
                for head_dim in head_dims:
                    block_d = max(16, next_power_of_2(head_dim))  # as the launcher pads it (_common_meta)
                    configs = at._prune_by_shared_memory(autotuner.configs, {"Q": probe}, BLOCK_D=block_d,
                                                         shared_budget=limit)
                    cfg = largest_config(configs)
                    for variant in variants:
                        flags = dict(LAUNCH_VARIANTS[variant], DOT_PRECISION="tf32", BLOCK_D=block_d, **cfg.kwargs)
                        row = dict(kernel=autotuner.fn.__name__, arch=f"sm_{arch}", dtype=dtype, head_dim=head_dim,
                                   variant=variant, launched=variant in MODEL_LAUNCHES,
                                   config=f"{cfg.kwargs['BLOCK_M']}x{cfg.kwargs['BLOCK_N']} w{cfg.num_warps} "
                                          f"s{cfg.num_stages}", ok=False)
                        start = time.perf_counter()
                        try:
                            compiled = triton.compile(
                                ASTSource(autotuner.fn, *_launch_arguments(autotuner.fn, dtype, head_dim, flags)),
                                target=GPUTarget("cuda", arch, 32),
                                options=dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages))
                            ptx = compiled.asm["ptx"]
                            row.update(shared_bytes=compiled.metadata.shared,
                                       async_copies=ptx.count("cp.async.cg") + ptx.count("cp.async.ca"),
                                       **_ptxas_resources(ptx, arch))
                            row["pipelined"] = row["async_copies"] > 0
                            row["ok"] = compiled.metadata.shared <= limit
                        except Exception as exc:  # report every failure, not the first
                            row["error"] = f"{type(exc).__name__}: {str(exc)[:500]}"
                        row["seconds"] = round(time.perf_counter() - start, 2)
                        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--head-dims", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--dtypes", nargs="+", default=["fp16", "bf16", "fp32"])
    p.add_argument("--all-configs", action="store_true")
    p.add_argument("--launch-variants", action="store_true",
                   help="compile the attention kernels as launched, per mask variant (compile_launch_variants); "
                        "--arch, --head-dims and --dtypes narrow it, --variants picks variants; fails when a "
                        "variant the model launches is not pipelined")
    p.add_argument("--variants", nargs="+", default=list(LAUNCH_VARIANTS), choices=list(LAUNCH_VARIANTS))
    args = p.parse_args(argv)
    if args.launch_variants:
        rows = compile_launch_variants((args.arch,), tuple(args.head_dims), tuple(args.dtypes), tuple(args.variants))
        print(json.dumps(rows))
        return 0 if all(r["ok"] and (r["pipelined"] or not r["launched"]) for r in rows) else 1
    rows = compile_kernels(args.arch, tuple(args.head_dims), tuple(args.dtypes), args.all_configs)
    print(json.dumps(rows))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
