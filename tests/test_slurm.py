"""The sbatch scripts on a real Slurm cluster: slurm/local_cluster.sh starts
slurmctld, munged and two slurmd (two simulated nodes) on this host.

Needs root and Debian's slurmctld, slurmd, slurm-client and munge (``make
test`` installs them); skipped otherwise. Each test module run gets its own
cluster (own state directory, own ports), torn down at the end, jobs first.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from .conftest import BIN, REPO

SLURM = REPO / "slurm"
PRETRAIN = SLURM / "pretrain.sbatch"
BENCH = SLURM / "bench.sbatch"
DAEMONS = ("slurmctld", "slurmd", "munged", "sbatch", "srun", "scontrol", "scancel")
# The resources of the local cluster: 2 nodes of 2 cores and one pretend GPU.
# Everything else is the scripts' own #SBATCH lines.
LOCAL_RESOURCES = ["--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=1", "--cpus-per-task=1"]

pytestmark = pytest.mark.distributed


def why_no_slurm() -> str | None:
    if os.geteuid() != 0:
        return "the local Slurm cluster needs root (daemons, /etc/hosts)"
    missing = [d for d in DAEMONS if shutil.which(d) is None]
    if missing:
        return f"Slurm/munge not installed ({', '.join(missing)} missing): apt-get install slurmctld slurmd slurm-client munge"
    return None


def free_port_block(count: int, start: int = 26817) -> int:
    """First port p >= start such that p .. p+count-1 are all free."""
    for base in range(start, start + 2000, count):
        try:
            for port in range(base, base + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no free block of ports for the test cluster")


class LocalCluster:
    def __init__(self, state_dir: Path, port: int):
        self.state_dir = state_dir
        self.env = {**os.environ, "OPT_SLURM_DIR": str(state_dir), "OPT_SLURM_PORT": str(port),
                    "SLURM_CONF": str(state_dir / "etc" / "slurm.conf"),
                    # the jobs find opt-train (and test stand-ins) on PATH
                    "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                    # DeepSpeed JIT-builds a CPU op on start-up, cached by default in one
                    # directory for every virtualenv of the user: two venvs (worktrees)
                    # alternating rebuild it every time (minutes on 2 busy cores).
                    "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR",
                                                           str(Path(sys.prefix) / "torch_extensions"))}

    def script(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(SLURM / "local_cluster.sh"), *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"local_cluster.sh {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}\n{self.logs()}")
        return proc

    def daemon_pids(self) -> dict[str, str]:
        files = [*(self.state_dir / "run").glob("*.pid"), self.state_dir / "munge" / "munged.pid"]
        return {f.name: f.read_text().strip() for f in files if f.exists()}

    def logs(self, lines: int = 30) -> str:
        out = []
        for f in sorted((self.state_dir / "log").glob("*.log")):
            out.append(f"--- {f.name}\n" + "\n".join(f.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)


@pytest.fixture(scope="module")
def slurm_cluster():
    reason = why_no_slurm()
    if reason:
        pytest.skip(reason)
    # Not under pytest's tmp dir: munged wants every directory above its
    # socket to be traversable by all, and pytest's is private to its user.
    state_dir = Path(tempfile.mkdtemp(prefix="opt-slurm-test-"))
    cluster = LocalCluster(state_dir, free_port_block(3))
    try:
        cluster.script("up", "--nodes", "2")
        yield cluster
    finally:
        cluster.script("down", check=False)   # cancels jobs, then stops the daemons
        shutil.rmtree(state_dir, ignore_errors=True)


def wait_for(condition, timeout: float, what: str, diagnostics=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{diagnostics()}")
        time.sleep(0.5)


def test_local_cluster_up_is_idempotent_and_refuses_jobs_it_cannot_run(slurm_cluster):
    before = slurm_cluster.daemon_pids()
    assert {"slurmctld.pid", "slurmd-optnode1.pid", "slurmd-optnode2.pid", "munged.pid"} <= set(before)
    status = slurm_cluster.script("up", "--nodes", "2").stdout
    assert slurm_cluster.daemon_pids() == before, "a second 'up' restarted daemons"
    assert re.search(r"optnode1\s+debug\*?\s+idle", status) and re.search(r"optnode2\s+debug\*?\s+idle", status), status
    # pretrain.sbatch as written wants 2 nodes x 8 GPUs: refused at once, not left pending forever.
    proc = subprocess.run(["sbatch", str(PRETRAIN)], env=slurm_cluster.env, capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode != 0 and "submission failed" in proc.stderr, proc.stdout + proc.stderr


def test_bench_sbatch_launches_one_opt_bench_step_per_task_with_its_arguments(slurm_cluster, tmp_path):
    # opt-bench step is someone else's; a stand-in records what the script hands each task.
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "opt-bench").write_text(
        '#!/usr/bin/env bash\necho "$SLURM_PROCID/$SLURM_NTASKS $MASTER_ADDR:$MASTER_PORT $*" '
        f'> "{tmp_path}/rank$SLURM_PROCID.txt"\n')
    (fake_bin / "opt-bench").chmod(0o755)
    env = {**slurm_cluster.env, "PATH": f"{fake_bin}{os.pathsep}{slurm_cluster.env['PATH']}",
           "OPT_CONFIG": "tiny", "OPT_BENCH_JSON": str(tmp_path / "step.json")}
    proc = subprocess.run(["sbatch", "--wait", *LOCAL_RESOURCES, "--time=00:05:00", f"--output={tmp_path}/bench.out",
                           str(BENCH), "--steps", "3"], env=env, capture_output=True, text=True, timeout=120)
    job_log = (tmp_path / "bench.out").read_text() if (tmp_path / "bench.out").exists() else ""
    assert proc.returncode == 0, proc.stderr + job_log
    seen = sorted((tmp_path / f"rank{r}.txt").read_text().split() for r in range(2))
    job_id = re.search(r"Submitted batch job (\d+)", proc.stdout).group(1)
    port = str(20000 + int(job_id) % 20000)
    for rank, words in enumerate(seen):
        assert words == [f"{rank}/2", f"optnode1:{port}", "step", "--config", "tiny", "--json",
                         str(tmp_path / "step.json"), "--steps", "3"]


# A stand-in for opt-train, for the script's own decisions: it "checkpoints" on
# SIGTERM/SIGUSR1 and exits 75 as opt-train does, and a restarted run finishes.
STAND_IN_TRAINER = """#!/usr/bin/env bash
trap 'echo "rank $SLURM_PROCID: stopping on a signal"; exit 75' TERM USR1
echo "rank $SLURM_PROCID: started, restart ${SLURM_RESTART_COUNT:-0}"
[ "${SLURM_RESTART_COUNT:-0}" = 0 ] || exit 0
for _ in $(seq 1200); do sleep 0.1; done   # bash runs traps between commands
exit 1
"""


@pytest.mark.parametrize("how, requeued", [
    (["--signal=TERM"], True),   # preemption with a GraceTime: SIGTERM to the job's steps, job still RUNNING
    ([], False),                 # a user's scancel: the job is being cancelled and must stay so
])
def test_pretrain_sbatch_requeues_after_a_sigterm_only_if_the_job_is_not_being_cancelled(
        slurm_cluster, tmp_path, how, requeued):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "opt-train").write_text(STAND_IN_TRAINER)
    (fake_bin / "opt-train").chmod(0o755)
    job_log = tmp_path / "job.out"
    env = {**slurm_cluster.env, "PATH": f"{fake_bin}{os.pathsep}{slurm_cluster.env['PATH']}",
           "OPT_OUT_DIR": str(tmp_path / "run")}
    sbatch = subprocess.Popen(["sbatch", "--wait", *LOCAL_RESOURCES, "--time=00:30:00", f"--output={job_log}",
                               str(PRETRAIN)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log_text = lambda: job_log.read_text(errors="replace") if job_log.exists() else ""  # noqa: E731
    diagnostics = lambda: f"--- job log\n{log_text()}\n{slurm_cluster.logs()}"  # noqa: E731
    try:
        wait_for(lambda: log_text().count("started, restart 0") == 2, 60, "both tasks to start", diagnostics)
        job_id = re.search(r"job (\d+) run 1 ", log_text()).group(1)
        subprocess.run(["scancel", *how, job_id], env=env, check=True, timeout=30)
        sbatch.communicate(timeout=90)
    finally:
        if sbatch.poll() is None:
            sbatch.kill()
            sbatch.communicate()
    text = log_text()
    assert "training step exited with code 75" in text, diagnostics()
    if requeued:
        assert sbatch.returncode == 0, diagnostics()
        assert f"requeueing job {job_id}" in text and "run 2 (restart count 1)" in text
        assert text.count("started, restart 1") == 2 and "training finished" in text
    else:
        assert "not requeued: job state is" in text and "run 2" not in text, diagnostics()


def _tensorboard_steps(tb_dir: Path) -> list[list[int]]:
    """loss/total steps of each event file (one per run), in run order."""
    runs = []
    for event_file in tb_dir.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(event_file))
        acc.Reload()
        if "loss/total" in acc.Tags()["scalars"]:
            runs.append([e.step for e in acc.Scalars("loss/total")])
    return sorted(runs)


def test_pretrain_sbatch_checkpoints_on_usr1_and_on_scontrol_requeue_and_resumes_to_the_end(
        slurm_cluster, demo_shards, demo_tokenizer, demo_vq, tmp_path):
    """Run 1 is told to stop as --signal=B:USR1@600 does before the time limit; run 2 is
    requeued by an admin (``scontrol requeue``: SIGTERM to every process of the job, loader
    workers included, SIGKILL after KillWait); run 3 trains to the end. Each stop is a
    checkpoint of the step the ranks agreed on, and each run resumes from it."""
    steps = 12
    run_dir, job_log = tmp_path / "run", tmp_path / "job.out"
    env = {**slurm_cluster.env, "OPT_CONFIG": "tiny", "OPT_OUT_DIR": str(run_dir),
           # Both "nodes" are this host, and another test cluster's job may have our job id (and so
           # the port the script derives from it): pick a free one.
           "MASTER_PORT": str(free_port_block(1, start=31000)), "OPT_OVERRIDES": " ".join([
        f"data.train_shards={demo_shards / 'demo-index.json'}", f"data.tokenizer={demo_tokenizer}",
        f"model.vq.checkpoint={demo_vq}", f"train.steps={steps}", "train.log_every=1", "train.checkpoint_every=0",
        "train.micro_batch_size=4", "data.num_workers=1"])}
    # --time well above the script's 600 s signal lead: the only USR1 is ours.
    sbatch = subprocess.Popen(["sbatch", "--wait", *LOCAL_RESOURCES, "--time=00:30:00", f"--output={job_log}",
                               str(PRETRAIN)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log_text = lambda: job_log.read_text(errors="replace") if job_log.exists() else ""  # noqa: E731
    diagnostics = lambda: f"--- job log\n{log_text()[-6000:]}\n{slurm_cluster.logs()}"  # noqa: E731
    run_marker = lambda n: f"run {n} (restart count {n - 1})"  # noqa: E731
    job_id = None
    try:
        wait_for(lambda: re.search(r"job (\d+) run 1 ", log_text()), 60, "the job to start", diagnostics)
        job_id = re.search(r"job (\d+) run 1 ", log_text()).group(1)
        wait_for(lambda: f"step 3/{steps}" in log_text(), 240, "training to reach step 3", diagnostics)
        # What --signal=B:USR1@600 does before the time limit: USR1 to the batch shell only.
        subprocess.run(["scancel", "--batch", "--signal=USR1", job_id], env=env, check=True, timeout=30)
        wait_for(lambda: re.search(r"resumed from .* \(step (\d+)\)", log_text().split(run_marker(2))[-1])
                 and re.search(rf"step \d+/{steps} \|", log_text().split(run_marker(2))[-1]), 240,
                 "run 2 to resume and train a step", diagnostics)
        subprocess.run(["scontrol", "requeue", job_id], env=env, check=True, timeout=30)
        sbatch_out, _ = sbatch.communicate(timeout=400)
    finally:
        if sbatch.poll() is None:
            if job_id:
                subprocess.run(["scancel", job_id], env=env, timeout=30)
            sbatch.kill()
            sbatch.communicate()
    text = log_text()
    assert sbatch.returncode == 0, f"sbatch --wait: {sbatch.returncode} {sbatch_out}\n{diagnostics()}"
    assert "killed by signal" not in text, diagnostics()
    first, rest = text.split(f"job {job_id} {run_marker(2)}")
    second, third = rest.split(f"job {job_id} {run_marker(3)}")
    assert run_marker(4) not in third, diagnostics()

    # Run 1: stopped on USR1, all ranks after the same step, checkpointed, requeued itself.
    stop1 = int(re.search(r"SIGUSR1: every rank stops after step (\d+)", first).group(1))
    assert 3 <= stop1 < steps
    assert "training step exited with code 75" in first and f"requeueing job {job_id}" in first
    assert f"checkpoints/step_{stop1:08d} written" in first
    # Run 2: resumed from it; SIGTERM from the requeue: checkpointed the step it stopped on.
    assert f"resumed from {run_dir}/checkpoints/step_{stop1:08d} (step {stop1})" in second
    stop2 = int(re.search(r"SIGTERM: every rank stops after step (\d+)", second).group(1))
    assert stop1 < stop2 < steps
    assert f"checkpoints/step_{stop2:08d} written" in second
    assert "already requeued by Slurm" in second and "not requeued" not in second, second[-3000:]
    # Run 3: resumed from that one, not from scratch, and trained to the end.
    assert f"resumed from {run_dir}/checkpoints/step_{stop2:08d} (step {stop2})" in third
    resumed_steps = [int(s) for s in re.findall(rf"step (\d+)/{steps} \|", third)]
    assert resumed_steps == list(range(stop2 + 1, steps + 1)), third[-3000:]
    assert "training finished" in third

    for step in (stop1, stop2, steps):
        marker = json.loads((run_dir / "checkpoints" / f"step_{step:08d}" / "COMPLETE.json").read_text())
        assert marker["step"] == step and marker["world_size"] == 2
    assert _tensorboard_steps(run_dir / "tensorboard") == [list(range(1, stop1 + 1)), list(range(stop1 + 1, stop2 + 1)),
                                                           list(range(stop2 + 1, steps + 1))]
