"""Stop signals: recorded, not fatal; every rank stops after the same step."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from opt_scale.engine.preemption import REQUEUE_EXIT_CODE, PreemptionHandler


def test_a_stop_signal_is_recorded_instead_of_killing_and_uninstall_restores_the_old_handler():
    before = signal.getsignal(signal.SIGUSR1), signal.getsignal(signal.SIGTERM)
    handler = PreemptionHandler().install()
    try:
        assert not handler.should_stop(1)
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)   # a second signal does not replace the first
        assert handler.received == signal.SIGUSR1
        assert handler.should_stop(2) and handler.stop_signal == signal.SIGUSR1
    finally:
        handler.uninstall()
    assert (signal.getsignal(signal.SIGUSR1), signal.getsignal(signal.SIGTERM)) == before


def test_release_after_a_stop_ignores_further_signals_and_otherwise_restores_the_old_handlers():
    before = signal.getsignal(signal.SIGUSR1), signal.getsignal(signal.SIGTERM)
    finished = PreemptionHandler().install()
    finished.release()   # ran to the end: back to what was there
    assert (signal.getsignal(signal.SIGUSR1), signal.getsignal(signal.SIGTERM)) == before

    stopped = PreemptionHandler().install()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stopped.should_stop(7)
        stopped.release()   # checkpointed: nothing may kill this rank on its way out
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGTERM)   # survives
    finally:
        signal.signal(signal.SIGUSR1, before[0])
        signal.signal(signal.SIGTERM, before[1])


def test_the_requeue_exit_code_is_distinct_from_success_crash_config_error_and_signal_deaths():
    assert REQUEUE_EXIT_CODE not in (0, 1, 2, 124) and REQUEUE_EXIT_CODE < 128


# One rank of a 2-process gloo group running a stand-in training loop: a step,
# the agreement check, and on a stop a "checkpoint" (a JSON line), release,
# and the requeue exit code, as opt-train does.
WORKER = r"""
import json, os, sys, time
import torch.distributed as dist
from opt_scale.engine.preemption import REQUEUE_EXIT_CODE, PreemptionHandler

handler = PreemptionHandler().install()
dist.init_process_group("gloo")
rank = dist.get_rank()
for step in range(1, 3001):
    time.sleep(0.02)
    print(json.dumps({"rank": rank, "step": step}), flush=True)
    if handler.should_stop(step):
        dist.barrier()   # the checkpoint's collectives: both ranks must get here
        print(json.dumps({"rank": rank, "checkpoint_step": step, "signal": handler.stop_signal.name,
                          "received": handler.received.name if handler.received else None}), flush=True)
        handler.release()
        sys.exit(REQUEUE_EXIT_CODE)
sys.exit(0)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
def test_when_only_rank_1_is_signalled_both_ranks_checkpoint_the_same_step_and_ask_for_a_requeue(tmp_path):
    port = _free_port()
    procs, logs = [], []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port)}
        log_path = tmp_path / f"rank{rank}.jsonl"
        logs.append(log_path)
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER], env=env, stdout=open(log_path, "w"),
                                      stderr=subprocess.STDOUT))
    try:
        deadline = time.monotonic() + 90
        while not all(p.read_text().count('"step"') >= 5 for p in logs):  # both are stepping
            assert time.monotonic() < deadline, "workers did not start stepping"
            assert all(p.poll() is None for p in procs), [p.read_text() for p in logs]
            time.sleep(0.1)
        procs[1].send_signal(signal.SIGUSR1)
        codes = [p.wait(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert codes == [REQUEUE_EXIT_CODE, REQUEUE_EXIT_CODE], [p.read_text()[-2000:] for p in logs]
    final = [json.loads(p.read_text().splitlines()[-1]) for p in logs]
    assert final[0]["checkpoint_step"] == final[1]["checkpoint_step"] >= 5
    assert [f["signal"] for f in final] == ["SIGUSR1", "SIGUSR1"]
    assert [f["received"] for f in final] == [None, "SIGUSR1"]   # rank 0 stopped on rank 1's signal


@pytest.mark.distributed
def test_sigterm_to_every_process_with_loader_workers_checkpoints_and_the_run_resumes(tiny_overrides, tmp_path):
    """What scancel, a time limit or preemption do: SIGTERM to every process,
    loader workers included (torchrun forwards it to each rank's process group)."""
    from .conftest import run_cli, sigterm_group_after_steps, torchrun_args
    run = tmp_path / "run"
    args = torchrun_args(2) + ["--config", "tiny", "--set", *tiny_overrides, "data.num_workers=1",
                               "train.log_samples=true", "train.steps=40"]
    out, _ = sigterm_group_after_steps(args, run)
    assert "killed by signal" not in out, out[-4000:]
    stop = re.search(r"SIGTERM: every rank stops after step (\d+)", out)
    assert stop, out[-4000:]
    step = int(stop.group(1))
    assert 2 <= step < 40
    # Both ranks wrote their part of the checkpoint of the step they stopped on, and rank 0 asked for a requeue.
    marker = json.loads((run / "checkpoints" / f"step_{step:08d}" / "COMPLETE.json").read_text())
    assert marker["step"] == step and marker["world_size"] == 2
    assert f"exit code {REQUEUE_EXIT_CODE} asks for a requeue" in out

    resumed = run_cli(torchrun_args(2) + ["--config", "tiny", "--set", *tiny_overrides, "data.num_workers=1",
                                          "train.log_samples=true", f"train.steps={step + 1}", "train.resume=auto"],
                      timeout=600)
    assert f"resumed from {run}/checkpoints/step_{step:08d} (step {step})" in resumed.stdout + resumed.stderr
    assert [json.loads(line)["step"] for line in (run / "samples" / "rank0.jsonl").read_text().splitlines()] == \
        list(range(1, step + 2))
