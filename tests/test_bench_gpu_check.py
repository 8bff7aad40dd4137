"""opt-bench gpu-check on a machine without CUDA: the parts that can run here
run (the training part through the real engine), the one that cannot says
why, and the verdict follows the parts."""

from __future__ import annotations

import json

from .conftest import run_cli


def gpu_check(demo_shards, demo_tokenizer, tmp_path, *extra: str, check: bool = True):
    out = tmp_path / "verdict.json"
    proc = run_cli(["opt-bench", "gpu-check", "--config", "tiny", "--steps", "1", "--warmup", "1",
                    "--shards", str(demo_shards / "demo-index.json"), "--tokenizer", str(demo_tokenizer),
                    "--work-dir", str(tmp_path / "work"), "--json", str(out), *extra], timeout=600, check=check)
    return proc, json.loads(out.read_text())


def test_without_cuda_the_check_runs_what_it_can_and_passes(demo_shards, demo_tokenizer, tmp_path):
    # Correctness under the interpreter is the kernel tests' job; skipped here to keep CI short.
    proc, verdict = gpu_check(demo_shards, demo_tokenizer, tmp_path, "--skip", "correctness")
    assert verdict["verdict"] == "pass" and verdict["device"] == "cpu"
    parts = verdict["parts"]
    assert parts["correctness"]["status"] == "skipped"
    assert parts["speed"]["status"] == "skipped" and "CUDA" in parts["speed"]["why"]
    training = parts["training"]
    assert training["status"] == "pass" and training["ds_config"] == "zero3_cpu" and training["precision"] == "fp32"
    assert training["samples_per_s"] > 0 and training["peak_mem_gb"] > 0
    assert "gpu-check verdict: PASS" in proc.stdout
