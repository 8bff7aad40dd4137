"""opt-bench loader / step / scaling run end to end on tiny inputs and write well-formed JSON.

No timed assertions: speed goals live in the benchmarks (BENCHMARKS.md).
"""

import json
import os
import subprocess

import pytest

from .conftest import BIN, REPO, run_cli

ENGINE_ROW = {"ds_config", "zero_stage", "step_s_median", "step_s_mean", "step_s", "samples_per_s", "tflops", "mfu",
              "state_bytes_per_rank", "state_detail_per_rank"}


def read(path):
    result = json.loads(path.read_text())
    assert result["ok"] is True and result["machine"]["cores"] >= 1
    return result


def test_loader_bench_times_both_loaders_and_every_stage(tmp_path):
    out = tmp_path / "loader.json"
    run_cli(["opt-bench", "loader", "--config", "tiny", "--samples", "16", "--audio-seconds", "3",
             "--image-size", "320x240", "--batch-size", "4", "--measure-samples", "4", "--repeats", "1",
             "--workers", "1", "--work-dir", str(tmp_path / "work"), "--json", str(out),
             "--plot", str(tmp_path / "loader.png")], timeout=300)
    result = read(out)
    assert {(r["loader"], r["workers"]) for r in result["rows"]} == {("sharded", 1), ("naive", 1)}
    for row in result["rows"]:
        assert row["samples_per_s"] > 0 and row["samples_per_cpu_s"] > 0 and row["repeats"][0]["samples"] >= 4
    assert result["speedup"][0]["workers"] == 1 and result["speedup"][0]["speedup_cpu"] > 0
    assert [t["target"] for t in result["targets"]] == [200.0, 5.0]
    stages = {(s["pipeline"], s["stage"]) for s in result["stages"]}
    for stage in ("read tar", "JPEG decode + crop/resize", "FLAC decode (<= 5 s)", "log-mel", "tokenize",
                  "masks (per-sample draws)", "collate (pad + stack)"):
        assert ("sharded", stage) in stages
    assert ("naive", "Vorbis decode (whole) + resample to 16 kHz") in stages
    assert (tmp_path / "loader.png").stat().st_size > 0
    # The shards were built with the builder's defaults (16 kHz FLAC, short side 384; 320x240 is kept as is).
    assert list((tmp_path / "work").glob("shards-*-flac/bench-000000.tar"))


def _free_port() -> int:
    from opt_scale.engine.distributed import free_port
    return free_port()


@pytest.mark.distributed
def test_step_bench_runs_in_place_on_every_srun_task_and_rank0_reports(demo_shards, demo_tokenizer, tmp_path):
    """As `srun opt-bench step` starts it: one task per rank, the world from SLURM_*; only rank 0 writes."""
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = {**os.environ, "SLURM_NTASKS": "2", "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "PYTHONWARNINGS": "ignore"}
        cmd = [str(BIN / "opt-bench"), "step", "--shards", str(demo_shards / "demo-index.json"), "--tokenizer",
               str(demo_tokenizer), "--steps", "2", "--warmup", "1", "--workers", "0",
               "--work-dir", str(tmp_path / "work"), "--json", str(tmp_path / f"step{rank}.json"),
               "--set", "train.micro_batch_size=4"]
        procs.append(subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    for proc in procs:
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, output[-3000:]
    assert not (tmp_path / "step1.json").exists()
    result = read(tmp_path / "step0.json")
    (run,) = result["runs"]
    assert run["launcher"] == "slurm" and run["world_size"] == 2 and run["steps"] == 2
    assert len(run["engines"][0]["step_s"]) == 2 and ENGINE_ROW <= set(run["engines"][0])
    row = result["rows"][0]
    assert row["world_size"] == 2 and row["ds_config"] == "zero3_cpu" and row["zero_stage"] == 3
    assert row["samples_per_s"] > 0 and row["text_tok_per_s"] > 0 and row["audio_tok_per_s"] > 0
    assert row["tflops"] > 0 and 0 <= row["data_wait"] < 1 and row["peak_mem_gb"] > 0
    parts = {r["part"] for r in result["flops_per_sample"]}
    assert {"text_encoder", "vision_encoder", "audio_encoder", "cross_encoder", "total"} <= parts
    assert len(run["peak_memory_bytes_per_rank"]) == 2


@pytest.mark.distributed
def test_scaling_bench_measures_state_of_each_engine(demo_shards, demo_tokenizer, tmp_path):
    out = tmp_path / "scaling.json"
    run_cli(["opt-bench", "scaling", "--world-sizes", "1", "--ds-configs", "zero3_cpu,ddp", "--steps", "1",
             "--warmup", "1", "--shards", str(demo_shards / "demo-index.json"), "--tokenizer", str(demo_tokenizer),
             "--work-dir", str(tmp_path / "work"), "--json", str(out), "--plot", str(tmp_path / "scaling.png"),
             "--set", "train.micro_batch_size=4", "data.num_workers=0"],
            timeout=300, env={"PYTHONWARNINGS": "ignore"})
    result = read(out)
    rows = {r["ds_config"]: r for r in result["rows"]}
    zero3, ddp = rows["zero3_cpu"], rows["ddp"]
    assert (zero3["zero_stage"], ddp["zero_stage"]) == (3, 0)
    # One rank: both hold all of Adam's two moments, i.e. twice the fp32 parameters...
    assert ddp["optim_mb"] == pytest.approx(2 * ddp["params_mb"], rel=1e-3)
    assert zero3["optim_mb"] == pytest.approx(ddp["optim_mb"], rel=1e-2)
    # ...ZeRO-3's parameters are its (one) partition plus the small parameters it also keeps whole.
    assert ddp["params_mb"] <= zero3["params_mb"] < 1.2 * ddp["params_mb"]
    assert zero3["state_vs_ws1"] == 1.0 and ddp["step_vs_ddp"] == 1.0
    assert result["targets"] == []  # judged only with a world size above 1
    assert (tmp_path / "scaling.png").stat().st_size > 0
