"""Rank discovery and process-group set-up for one process, torchrun or Slurm.

Launchers describe the world through environment variables: torchrun sets
RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT; an ``srun`` task sees
SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID, and our sbatch scripts export
MASTER_ADDR (first host of ``scontrol show hostnames``) and MASTER_PORT.
"""

from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass
from datetime import timedelta

import torch


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    launcher: str   # "single", "torchrun" or "slurm"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect() -> DistEnv:
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)), "torchrun")
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return DistEnv(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)),
                       "slurm")
    return DistEnv(0, 1, 0, "single")


def prepare_environment(dist_env: DistEnv) -> None:
    """Export what torch.distributed's env:// rendezvous reads."""
    env = os.environ
    env.setdefault("RANK", str(dist_env.rank))
    env.setdefault("WORLD_SIZE", str(dist_env.world_size))
    env.setdefault("LOCAL_RANK", str(dist_env.local_rank))
    if dist_env.launcher == "slurm" and "MASTER_ADDR" not in env:
        hosts = subprocess.run(["scontrol", "show", "hostnames", env["SLURM_JOB_NODELIST"]],
                               capture_output=True, text=True, check=True).stdout.split()
        env["MASTER_ADDR"] = hosts[0]
    if dist_env.launcher == "slurm" and "MASTER_PORT" not in env:
        env["MASTER_PORT"] = str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000)
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in env:
        # A lone process still needs a rendezvous port: take a free one, so
        # several single-process runs on one host do not collide.
        env["MASTER_PORT"] = str(free_port())
    if not torch.cuda.is_available():
        # DeepSpeed picks its accelerator at import time; on a CPU-only host
        # it must be told, before anything imports deepspeed.
        env.setdefault("DS_ACCELERATOR", "cpu")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def device_for(dist_env: DistEnv) -> torch.device:
    if torch.cuda.is_available():
        index = cuda_index_for(dist_env.local_rank, torch.cuda.device_count())
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def cuda_index_for(local_rank: int, visible: int) -> int:
    """The GPU this rank uses, among the ``visible`` ones. torchrun (and srun
    without GPU binding) shows each rank all of its node's GPUs: the local
    rank's own. srun with ``--gpus-per-task=1`` or ``--gpu-bind`` shows each
    task only its own GPU(s), renumbered from 0, so the local rank (up to 7)
    names a device that is not there: take it modulo what is visible."""
    if visible < 1:
        raise RuntimeError("CUDA is available but no device is visible (CUDA_VISIBLE_DEVICES?)")
    return local_rank % visible


def collective_device() -> torch.device:
    """Where a tensor handed to a collective must live: NCCL reduces only
    CUDA tensors, gloo only CPU ones."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _initialized() -> bool:
    import torch.distributed as dist
    return dist.is_available() and dist.is_initialized()


def all_gather_objects(obj) -> list:
    """Every rank's ``obj``, in rank order (collective; ``[obj]`` without a process group)."""
    if not _initialized():
        return [obj]
    import torch.distributed as dist
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def from_rank0(obj):
    """Rank 0's ``obj`` on every rank (collective): one verdict all ranks act on."""
    if not _initialized():
        return obj
    import torch.distributed as dist
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_true(flag: bool) -> bool:
    """Whether ``flag`` holds on every rank (collective)."""
    if not _initialized():
        return flag
    import torch.distributed as dist
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def init(dist_env: DistEnv, timeout_minutes: float = 30.0) -> None:
    """``timeout_minutes`` (``train.dist_timeout_minutes``) bounds every
    collective: how long a hung or dead rank keeps the others waiting. Slow
    work is kept out of collectives so it cannot run into it: periodic
    evaluation is shared by all ranks, and the ranks wait for rank 0's
    universal checkpoint conversion on the file system."""
    prepare_environment(dist_env)
    import deepspeed
    deepspeed.init_distributed(dist_backend=backend(), auto_mpi_discovery=False,
                               timeout=timedelta(minutes=timeout_minutes))


def shutdown(together: bool = False) -> None:
    """Tear the process group down. ``together``: first wait for every rank
    (a command's normal end). Left to the interpreter's exit, or torn down by
    one rank while another is still in a collective, gloo's threads can abort
    a rank with "terminate called without an active exception" after its
    work is done, which torchrun reports as a failure (seen on 2-rank
    opt-eval and opt-train runs in CI)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()
