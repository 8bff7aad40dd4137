"""What produced a run: recorded in its directory and its TensorBoard.

Every launch of a run (the first, and each resume or Slurm requeue) appends
one JSON line to ``<out_dir>/run_info.jsonl``: the time, the command line,
the git commit of the code (and whether the tree had uncommitted changes),
the versions of the packages that decide the numbers, the world size and
the host of every rank. ``config.json`` beside it holds the resolved
configuration; both go to TensorBoard as text (``run/info``, ``run/config``)
at the step the launch starts from.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from .distributed import all_gather_objects

PACKAGES = ("opt-scale", "torch", "deepspeed", "triton", "webdataset", "sentencepiece", "numpy", "tensorboard",
            "apex")


def git_state(path: Path) -> dict:
    """The commit of the repository holding ``path``, and whether it has local changes (None outside git)."""
    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def launch_record(world_size: int, launcher: str, start_step: int) -> dict:
    """A collective (the hosts of every rank); the same record on every rank."""
    hosts = all_gather_objects(socket.gethostname())
    return {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "start_step": start_step, "argv": sys.argv,
            "git": git_state(Path(__file__).resolve().parent), "packages": package_versions(),
            "world_size": world_size, "launcher": launcher, "hosts": hosts, "python": sys.version.split()[0]}


def record_launch(out_dir: Path, record: dict, writer, config: dict) -> None:
    """Rank 0: append the record to run_info.jsonl; both texts to TensorBoard."""
    with open(out_dir / "run_info.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    if writer is not None:
        step = record["start_step"]
        writer.add_text("run/info", "```\n" + json.dumps(record, indent=1) + "\n```", step)
        writer.add_text("run/config", "```\n" + json.dumps(config, indent=1) + "\n```", step)
        writer.flush()
