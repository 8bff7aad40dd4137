"""A rank started by torchrun ends when torchrun does.

torchrun starts every rank in a session of its own, so when torchrun itself
is killed (kill -9, an OOM kill, a lost ssh session) nothing reaches the
ranks: they train on as orphans, write checkpoints, and race whatever run is
started next on the same directory (the run-directory lock in run_dir.py
only keeps that next run out while they live).

A daemon thread polls ``os.getppid()`` once a second; when the launcher is
gone the process is reparented and the rank exits at once. Its loader
workers follow through torch's own watchdog within a few seconds.

Why not ``prctl(PR_SET_PDEATHSIG)``: the kernel sends that signal when the
*thread* that forked the child exits, not the process; a launcher that starts
ranks from a helper thread would kill them while alive and well. The poll
costs nothing measurable and fires only on a real death. Only torchrun's
ranks are watched (it sets ``TORCHELASTIC_RUN_ID``): a process started from
a shell, say under ``nohup``, must outlive that shell; and srun's tasks are
ended by slurmstepd and the job's cgroup.
"""

from __future__ import annotations

import os
import sys
import threading
import time

LAUNCHER_GONE_EXIT_CODE = 1   # a failure: the run stopped without a checkpoint


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ


def watch_launcher(interval: float = 1.0) -> None:
    """Exit this process when the torchrun that started it dies (no-op otherwise)."""
    if not launched_by_torchrun():
        return
    launcher = os.getppid()
    if launcher == 1:   # already orphaned before we looked
        _exit(launcher)
    threading.Thread(target=_poll, args=(launcher, interval), name="launcher-watch", daemon=True).start()


def _poll(launcher: int, interval: float) -> None:
    while os.getppid() == launcher:
        time.sleep(interval)
    _exit(launcher)


def _exit(launcher: int) -> None:
    rank = os.environ.get("RANK", "?")
    print(f"opt-train: rank {rank}: the launcher (pid {launcher}) is gone; exiting without a checkpoint, so that "
          "no orphan writes into train.out_dir beside a restarted run", file=sys.stderr, flush=True)
    os._exit(LAUNCHER_GONE_EXIT_CODE)   # from this thread; the main one may be inside a collective
