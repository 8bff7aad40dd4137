"""One run per run directory: a lock while it runs, and no fresh start on top of another run.

Two ways a run directory gets two writers:

* **Two runs at once** (a resumed run started while the old ranks still
  live, or the same out_dir in two jobs): rank 0 holds a lock on
  ``<out_dir>/.opt-train.lock`` for the life of its process, and a second run
  is refused. A POSIX record lock (``fcntl.lockf``): the kernel drops it when
  the process dies, however it dies, so it never goes stale; forked loader
  workers do not inherit it (a ``flock`` would be shared with them and
  outlive a killed rank 0 by the workers' few seconds); and on NFS it is the
  lock that works across hosts. Its one trap: closing *any* descriptor of
  the file in the holding process drops it, so the file is opened once and
  only read by the runs it refuses.
* **A fresh run into a used directory.** Checkpoint rotation keeps the
  highest steps, so the old run's later checkpoints would make the new run
  delete its own as it writes them; two runs' TensorBoard files would mix;
  ``resume=auto`` and ``opt-export`` would pick the old run. A directory is
  *used* when it holds a checkpoint directory (``checkpoints/step_*``, an
  ``abandoned-*`` set), TensorBoard event files or sample logs; config.json
  and the tokenizer copy alone (a run that failed while starting) do not
  count, as they are rewritten. Such a directory is refused unless the run
  continues it (``train.resume``) or ``train.overwrite=true`` deletes the old
  run's outputs first, as ``opt-shards build --overwrite`` does for shards.

Rank 0 decides and every rank learns the verdict (a broadcast), so that all
of them exit 2 with the same message instead of rank 0 alone.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path

from opt_scale.utils.config_tools import ConfigError

from .config import TrainConfig
from .distributed import from_rank0

log = logging.getLogger(__name__)
LOCK_FILE = ".opt-train.lock"
# What a run writes, hence what train.overwrite deletes (the VQ outputs only for a VQ run, which writes them anew).
RUN_OUTPUTS = ("checkpoints", "tensorboard", "samples", "run_info.jsonl", "trackers.json")
VQ_OUTPUTS = ("vq.safetensors", "vq_reconstructions.png")


class RunDirLock:
    """The lock rank 0 holds; released when the process ends (or by :meth:`release`)."""

    def __init__(self, fd: int | None):
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def claim_run_dir(train: TrainConfig, is_main: bool) -> RunDirLock:
    """Collective: lock ``train.out_dir`` and check it may be written, or raise
    ConfigError on every rank. With ``train.overwrite`` the old run's outputs
    are deleted, and the flag is cleared in ``train``: it is an action of this
    start, not a property of the run, and the config.json written next must
    not delete the run again when given back to ``--config``."""
    lock, error = RunDirLock(None), ""
    if is_main:
        try:
            lock = _lock(Path(train.out_dir))
            _check_or_clear(Path(train.out_dir), train)
        except ConfigError as err:
            error = str(err)
        except OSError as err:   # clearing the old run failed: still one message, on every rank
            error = f"config key 'train.overwrite': {err}"
    error = from_rank0(error)
    if error:
        lock.release()
        raise ConfigError(error)
    train.overwrite = False
    return lock


def _lock(out_dir: Path) -> RunDirLock:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(out_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise ConfigError(f"config key 'train.out_dir': cannot write to {out_dir}: {err.strerror}") from None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EACCES, errno.EAGAIN):
            os.close(fd)
            raise ConfigError(f"config key 'train.out_dir': {out_dir} is in use by another run "
                              f"({_holder(out_dir)}); wait for it to end, stop it, or choose another "
                              "train.out_dir") from None
        # ENOLCK/EOPNOTSUPP: a filesystem without locks (some NFS or Lustre mounts). Run unguarded.
        log.warning("cannot lock %s (%s): nothing stops a second run from writing into it", out_dir, err.strerror)
        return RunDirLock(fd)
    holder = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")})
    os.ftruncate(fd, 0)
    os.pwrite(fd, holder.encode() + b"\n", 0)
    return RunDirLock(fd)


def _holder(out_dir: Path) -> str:
    try:
        h = json.loads((out_dir / LOCK_FILE).read_text())
        return f"pid {h['pid']} on {h['host']}, since {h['since']}"
    except (OSError, ValueError, KeyError):
        return "holder unknown"


def used_by(out_dir: Path) -> list[str]:
    """What shows that a run has written into ``out_dir`` (empty: unused)."""
    found = [p for p in sorted((out_dir / "checkpoints").glob("*"))
             if p.name.startswith(("step_", "abandoned-"))]
    found += sorted((out_dir / "tensorboard").glob("events.out.tfevents.*"))
    found += sorted((out_dir / "samples").glob("rank*.jsonl"))
    return [str(p.relative_to(out_dir)) for p in found]


def _check_or_clear(out_dir: Path, train: TrainConfig) -> None:
    if train.resume:
        return
    used = used_by(out_dir)
    if not used:
        return
    if not train.overwrite:
        shown = ", ".join(used[:3]) + (f" and {len(used) - 3} more" if len(used) > 3 else "")
        raise ConfigError(f"config key 'train.out_dir': {out_dir} holds an earlier run ({shown}); continue it "
                          "with train.resume=auto, start over with train.overwrite=true (deletes its checkpoints, "
                          "tensorboard and samples), or choose another train.out_dir")
    doomed = [out_dir / name for name in RUN_OUTPUTS + (VQ_OUTPUTS if train.task == "vq" else ())]
    for path in doomed:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    log.warning("train.overwrite: deleted the earlier run in %s (%s)", out_dir, ", ".join(RUN_OUTPUTS))

