"""opt-bench gpu-check on a machine without CUDA: the parts that can run here
run (the training part through the real engine), the one that cannot says
why, and the verdict and exit code follow the parts."""

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


def test_a_failing_part_fails_the_verdict_and_the_exit_code_and_the_others_still_run(
        demo_shards, demo_tokenizer, tmp_path):
    proc, verdict = gpu_check(demo_shards, demo_tokenizer, tmp_path, "--skip", "correctness",
                              "--set", "train.lr=-1", check=False)
    assert proc.returncode == 1
    assert verdict["verdict"] == "fail"
    assert verdict["parts"]["training"]["status"] == "fail" and "train.lr" in verdict["parts"]["training"]["error"]
    assert verdict["parts"]["speed"]["status"] == "skipped"
