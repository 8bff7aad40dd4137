"""The Triton kernels compile for H100 (sm_90) with the configs the autotuner
may pick: front end, TTGIR, LLVM, PTX and the bundled ptxas, no GPU needed.
The interpreter tests check the arithmetic; only this catches a construct
the GPU backend rejects, a config that overflows shared memory, or a
variant the model launches whose K/V loads are no longer pipelined."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest


NEEDS_NVIDIA = pytest.mark.skipif(importlib.util.find_spec("triton.backends.nvidia") is None,
                                  reason="this triton build has no NVIDIA backend")


def compile_check(*args: str) -> tuple[list[dict], int]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compiling needs the real JIT
    proc = subprocess.run([sys.executable, "-m", "opt_scale.kernels.compile_check", "--arch", "90", *args],
                          capture_output=True, text=True, env=env, timeout=300)
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.returncode


@NEEDS_NVIDIA
def test_kernels_compile_for_sm90_within_shared_memory():
    # bf16, the CUDA default (fp32 compiles the same code with wider tiles' pruning; see --dtypes).
    rows, returncode = compile_check("--head-dims", "128", "--dtypes", "bf16")
    kernels = {r["kernel"] for r in rows}
    assert kernels == {"_attention_fwd_kernel", "_attention_bwd_dkdv_kernel", "_attention_bwd_dq_kernel",
                       "_cross_entropy_rows_kernel"}
    failed = [r for r in rows if not r["ok"]]
    assert not failed and returncode == 0, failed


@NEEDS_NVIDIA
def test_the_variants_the_model_launches_keep_their_pipelined_loads():
    """As launched (unit strides constant, aligned pointers and strides), the
    key-lengths and causal variants issue their K/V tile loads as cp.async
    copies in every kernel. The segments variant, which the model does not
    launch, is only required to compile (today it has no async copies: the
    loads sit inside its tile-skip branch, #16 item 2)."""
    rows, returncode = compile_check("--launch-variants", "--head-dims", "64", "--dtypes", "bf16")
    assert {r["variant"] for r in rows} == {"key_lengths", "causal", "segments"} and len(rows) == 9
    for r in rows:
        assert r["ok"] and r["registers"] > 0, r
        assert r["pipelined"] or not r["launched"], r
    assert returncode == 0
