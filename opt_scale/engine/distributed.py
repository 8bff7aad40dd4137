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
        torch.cuda.set_device(dist_env.local_rank)
        return torch.device("cuda", dist_env.local_rank)
    return torch.device("cpu")


def collective_device() -> torch.device:
    """Where a tensor handed to a collective must live: NCCL reduces only
    CUDA tensors, gloo only CPU ones."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def init(dist_env: DistEnv) -> None:
    prepare_environment(dist_env)
    import deepspeed
    deepspeed.init_distributed(dist_backend=backend(), auto_mpi_discovery=False)
