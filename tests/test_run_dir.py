"""One run per run directory: the lock, the used-directory check, train.overwrite,
ranks that die with their launcher; and the rank-count traps of a resumed run."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from opt_scale.engine.config import TrainConfig
from opt_scale.engine.distributed import cuda_index_for
from opt_scale.engine.run_dir import LOCK_FILE, claim_run_dir, used_by
from opt_scale.engine.trainer import open_sample_log
from opt_scale.utils.config_tools import ConfigError

from .conftest import REPO, run_cli, torchrun_args


def earlier_run(out: Path) -> Path:
    """What a finished run leaves behind."""
    (out / "checkpoints" / "step_00000004").mkdir(parents=True)
    (out / "checkpoints" / "step_00000004" / "COMPLETE.json").write_text("{}")
    (out / "tensorboard").mkdir()
    (out / "tensorboard" / "events.out.tfevents.1.host").write_bytes(b"x")
    (out / "samples").mkdir()
    (out / "samples" / "rank0.jsonl").write_text('{"step": 1, "keys": []}\n')
    (out / "config.json").write_text("{}")
    return out


def test_a_fresh_run_into_a_used_directory_is_refused_unless_it_resumes_or_overwrites(tmp_path):
    out = earlier_run(tmp_path / "run")
    assert used_by(out) == ["checkpoints/step_00000004", "tensorboard/events.out.tfevents.1.host",
                            "samples/rank0.jsonl"]
    with pytest.raises(ConfigError, match=rf"'train.out_dir': {out} holds an earlier run \(checkpoints/step_00000004,"
                                          r".*train.resume=auto.*train.overwrite=true"):
        claim_run_dir(TrainConfig(out_dir=str(out)), is_main=True)
    claim_run_dir(TrainConfig(out_dir=str(out), resume="auto"), is_main=True).release()
    assert used_by(out)   # continuing it deletes nothing

    train = TrainConfig(out_dir=str(out), overwrite=True)
    claim_run_dir(train, is_main=True).release()
    assert used_by(out) == [] and (out / "config.json").exists()
    assert train.overwrite is False   # config.json, given back to --config, must not delete the run again
    claim_run_dir(TrainConfig(out_dir=str(out)), is_main=True).release()   # unused now: a fresh run may start

    with pytest.raises(ConfigError, match="train.overwrite"):
        TrainConfig(out_dir=str(out), overwrite=True, resume="auto").validate()


def test_config_json_and_a_tokenizer_copy_alone_do_not_make_a_directory_used(tmp_path):
    (tmp_path / "config.json").write_text("{}")   # a run that failed while starting
    (tmp_path / "tokenizer.model").write_bytes(b"x")
    (tmp_path / "checkpoints").mkdir()
    assert used_by(tmp_path) == []


HOLD_LOCK = """
import sys, time
from opt_scale.engine.config import TrainConfig
from opt_scale.engine.run_dir import claim_run_dir
lock = claim_run_dir(TrainConfig(out_dir=sys.argv[1]), is_main=True)
print("locked", flush=True)
time.sleep(120)
"""


def hold_lock(out: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_locked_directory_is_refused_naming_the_holder_and_freed_when_it_dies(tmp_path):
    holder = hold_lock(tmp_path)
    try:
        with pytest.raises(ConfigError, match=rf"{tmp_path} is in use by another run \(pid {holder.pid} on "):
            claim_run_dir(TrainConfig(out_dir=str(tmp_path), resume="auto"), is_main=True)
    finally:
        holder.kill()
        holder.wait()
    claim_run_dir(TrainConfig(out_dir=str(tmp_path), resume="auto"), is_main=True).release()   # no stale lock
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_a_fresh_opt_train_into_a_used_directory_exits_2_with_one_line_before_any_heavy_work(tiny_overrides, tmp_path):
    out = earlier_run(tmp_path / "run")   # tiny_overrides point train.out_dir here
    marker = (out / "checkpoints" / "step_00000004" / "COMPLETE.json").read_text()
    proc = run_cli(["opt-train", "--config", "tiny", "--set", *tiny_overrides], check=False, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("opt-train: error:")]
    assert len(errors) == 1 and f"{out} holds an earlier run" in errors[0], proc.stderr[-3000:]
    assert (out / "checkpoints" / "step_00000004" / "COMPLETE.json").read_text() == marker


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.distributed
def test_a_second_run_into_a_running_ones_directory_is_refused_and_ranks_die_with_a_killed_torchrun(
        tiny_overrides, tmp_path):
    run = tmp_path / "run"
    args = torchrun_args(2) + ["--config", "tiny", "--set", *tiny_overrides, "train.log_samples=true",
                               "train.steps=200", "train.resume=auto"]
    first = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    ranks: list[int] = []
    try:
        deadline = time.monotonic() + 400
        while not ((run / "samples" / "rank0.jsonl").exists() and (run / "samples" / "rank0.jsonl").read_text()):
            assert first.poll() is None and time.monotonic() < deadline, "the first run did not start training"
            time.sleep(0.2)
        ranks = children(first.pid)
        assert len(ranks) == 2
        holder = json.loads((run / LOCK_FILE).read_text())["pid"]
        assert holder in ranks

        # The same command again (a requeue while the old ranks still live): every rank refuses, nobody hangs.
        second = run_cli(args, check=False, timeout=300)
        out = second.stdout + second.stderr
        assert second.returncode != 0
        assert re.search(rf"opt-train: error: .*{run} is in use by another run \(pid {holder} on ", out), out[-3000:]
        # torchrun's report of each rank ("exitcode  : 2"; not its log line "failed (exitcode: 2)", which
        # depends on timing): every rank refused, exit 2, unless torchrun stopped it first (SIGTERM, -15).
        codes = re.findall(r"exitcode\s+:\s*(-?\d+)", out)
        assert "2" in codes and set(codes) <= {"2", "-15"}, out[-3000:]

        # torchrun killed outright: its ranks must not train on as orphans.
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        deadline = time.monotonic() + 5
        while any(Path(f"/proc/{r}").exists() for r in ranks) and time.monotonic() < deadline:
            time.sleep(0.1)
        alive = [r for r in ranks if Path(f"/proc/{r}").exists()]
        assert not alive, f"ranks {alive} outlived their torchrun"
    finally:
        try:
            os.killpg(first.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for r in ranks:
            try:
                os.kill(r, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_cuda_device_is_the_local_rank_among_the_visible_ones():
    assert cuda_index_for(3, 8) == 3   # torchrun: every rank sees the node's GPUs
    assert cuda_index_for(3, 1) == 0   # srun --gpus-per-task=1: each task sees only its own, as device 0
    assert cuda_index_for(5, 2) == 1
    with pytest.raises(RuntimeError, match="no device is visible"):
        cuda_index_for(0, 0)


def test_after_resuming_on_fewer_ranks_the_missing_ranks_sample_logs_drop_the_abandoned_steps(tmp_path):
    samples = tmp_path / "samples"
    samples.mkdir()
    for rank in range(3):   # a 3-rank run that trained 5 steps; resumed from step 3 on one rank
        (samples / f"rank{rank}.jsonl").write_text("".join(json.dumps({"step": s, "keys": [f"{rank}-{s}"]}) + "\n"
                                                           for s in range(1, 6)))
    with open_sample_log(tmp_path, rank=0, world=1, start_step=3) as f:
        f.write(json.dumps({"step": 4, "keys": ["new"]}) + "\n")
    steps = {r: [json.loads(line)["step"] for line in (samples / f"rank{r}.jsonl").read_text().splitlines()]
             for r in range(3)}
    assert steps == {0: [1, 2, 3, 4], 1: [1, 2, 3], 2: [1, 2, 3]}
