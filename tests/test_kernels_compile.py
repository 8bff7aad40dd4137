"""The Triton kernels compile for H100 (sm_90) with the configs the autotuner
may pick: front end, TTGIR, LLVM, PTX and the bundled ptxas, no GPU needed.
The interpreter tests check the arithmetic; only this catches a construct
the GPU backend rejects or a config that overflows shared memory."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest


@pytest.mark.skipif(importlib.util.find_spec("triton.backends.nvidia") is None,
                    reason="this triton build has no NVIDIA backend")
def test_kernels_compile_for_sm90_within_shared_memory():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compiling needs the real JIT
    proc = subprocess.run([sys.executable, "-m", "opt_scale.kernels.compile_check", "--arch", "90",
                           "--head-dims", "128", "--dtypes", "bf16", "fp32"],
                          capture_output=True, text=True, env=env, timeout=300)
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    kernels = {r["kernel"] for r in rows}
    assert kernels == {"_attention_fwd_kernel", "_attention_bwd_dkdv_kernel", "_attention_bwd_dq_kernel",
                       "_cross_entropy_rows_kernel"}
    failed = [r for r in rows if not r["ok"]]
    assert not failed and proc.returncode == 0, failed
