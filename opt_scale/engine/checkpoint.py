"""DeepSpeed checkpoints that are either whole or ignored.

Layout: ``<out_dir>/checkpoints/step_00000100/`` holds DeepSpeed's files
(every rank writes its own partition) and, written last by rank 0 once every
rank has finished and reported its files' sizes and SHA-256, ``COMPLETE.json``.
A directory without that marker is an interrupted write and never loaded.
On resume every rank verifies the files it will read against the marker
before DeepSpeed touches them; the ranks agree (all-reduce) on the verdict,
so a damaged newest checkpoint makes all of them fall back to the previous
one together, instead of one rank failing inside a collective and hanging
the rest.

``latest`` names the newest complete checkpoint for DeepSpeed's own tools
(``zero_to_fp32.py`` without ``--tag``); it is written after the marker.

Only the files named in the marker matter: a stray file next to them (an NFS
``.nfs*`` silly-rename, an editor's backup) does not make a complete
checkpoint damaged. A save that fails (disk full, directory not writable)
removes its partial directory, leaves the previous checkpoint as it was, and
stops the run with one line naming the cause and the path.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch.distributed as dist

from opt_scale.utils.config_tools import ConfigError

from .distributed import all_gather_objects, all_true, from_rank0

log = logging.getLogger(__name__)
MARKER = "COMPLETE.json"
TAG_RE = re.compile(r"^step_(\d{8})$")


class CheckpointError(ConfigError):
    """A checkpoint cannot be written, or is damaged. A ConfigError, so that
    the command line tools report it as one line and exit 2: the user must
    act (free space, fix permissions, pick another checkpoint) before a retry
    can succeed, and a traceback would add nothing."""


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint directories under ``root``, newest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if TAG_RE.match(p.name) and (p / MARKER).is_file()]
    return sorted(found, key=lambda p: p.name, reverse=True)


def read_marker(path: Path) -> dict:
    return json.loads((path / MARKER).read_text())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def _files_of_rank(tag_dir: Path, rank: int) -> list[Path]:
    """Files this rank wrote: its own partitions, plus (rank 0) the shared ones."""
    return [p for p in sorted(tag_dir.iterdir())
            if p.name != MARKER and p.is_file() and _owner(p.name) == rank]


def _owner(name: str) -> int:
    """The rank that writes (and on resume reads) a checkpoint file."""
    m = re.search(r"zero_pp_rank_(\d+)_", name)
    return int(m.group(1)) if m else 0


def file_problem(tag_dir: Path, name: str, want: dict) -> str | None:
    """Why ``tag_dir/name`` is not the file the marker recorded; None if it is.

    Markers written before hashes were recorded carry only sizes: those
    files are checked by size (a flipped byte goes unseen), with a warning."""
    path = tag_dir / name
    if not path.is_file():
        return f"{path} is missing"
    size = path.stat().st_size
    if size != want["bytes"]:
        return f"{path} has {size} bytes, {want['bytes']} were written"
    if "sha256" not in want:
        log.warning("%s: the checkpoint's record has no content hash (an older checkpoint); checked its size "
                    "only", path)
    elif _sha256(path) != want["sha256"]:
        return f"{path} differs from what was written (SHA-256 mismatch)"
    return None


def damaged_files(tag_dir: Path) -> list[str]:
    """Every recorded file of ``tag_dir`` checked (not collective): the problems found."""
    try:
        expected = read_marker(tag_dir)["files"]
    except (OSError, ValueError, KeyError) as exc:
        return [f"{tag_dir / MARKER} is unreadable ({type(exc).__name__}: {exc})"]
    return [why for name, want in sorted(expected.items()) if (why := file_problem(tag_dir, name, want))]


def point_latest(root: Path) -> None:
    """``<root>/latest``: the newest complete checkpoint's tag, as DeepSpeed
    writes it (so its ``zero_to_fp32.py`` and ``load_checkpoint`` find it
    without a tag). Written only once that checkpoint's marker is, and
    atomically: it never names a partial write. Our own resume reads the
    markers, never this file."""
    newest = complete_checkpoints(root)
    tmp = root / f"latest.tmp-{os.getpid()}"
    try:
        if newest:
            tmp.write_text(newest[0].name)
            os.replace(tmp, root / "latest")
        else:
            (root / "latest").unlink(missing_ok=True)
    except OSError as exc:  # a convenience for other tools: never worth stopping a run
        log.warning("could not update %s: %s", root / "latest", _describe(exc))
        tmp.unlink(missing_ok=True)


def _write_marker(tag_dir: Path, marker: dict) -> None:
    tmp = tag_dir / (MARKER + ".tmp")
    tmp.write_text(json.dumps(marker, indent=1))
    os.replace(tmp, tag_dir / MARKER)


def _describe(exc: OSError) -> str:
    return f"{(exc.strerror or str(exc)).lower()} ({exc.filename or ''})".replace(" ()", "")


def _os_error(action, path: Path) -> str | None:
    """Run ``action``; a one-line description of the OSError it raised, or None."""
    try:
        action()
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return f"checkpoint directory {path.parent} is not writable ({_describe(exc)})"
        return f"writing checkpoint {path} failed: {_describe(exc)}"
    return None


def _diagnose(tag_dir: Path, exc: Exception) -> str:
    """Name the cause of a failed write that torch reported without an errno.

    A write that ran out of space leaves the file system (nearly) full, so a
    small probe written and synced where the checkpoint was going fails with
    the real reason (ENOSPC, EDQUOT, EROFS...)."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return _describe(exc)
    probe = tag_dir / f".write-probe-{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(b"\0" * (1 << 20))
            f.flush()
            os.fsync(f.fileno())
    except OSError as probe_exc:
        return (probe_exc.strerror or str(probe_exc)).lower()
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def ensure_writable(root: Path) -> None:
    """Collective: refuse, before any heavy work, a checkpoint directory that
    cannot be written (read-only mount, no permission); every rank checks its
    own view of it (node-local mounts differ) and all agree."""
    problem = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        problem = f"checkpoint directory {root} is not writable ({_describe(exc)})"
    problems = [p for p in all_gather_objects(problem) if p]
    if problems:
        raise CheckpointError(problems[0])


class Checkpointer:
    def __init__(self, root: str | Path, engine, keep: int = 3):
        self.root = Path(root)
        self.engine = engine
        self.keep = keep
        self.rank = dist.get_rank() if dist.is_initialized() else 0

    def save(self, step: int, client_state: dict) -> Path:
        tag = tag_for(step)
        tag_dir = self.root / tag
        error = None
        if self.rank == 0:
            # A leftover of an interrupted save of this same step, and the
            # universal conversion of an older checkpoint of that name.
            shutil.rmtree(tag_dir, ignore_errors=True)
            remove_universal(tag_dir)
            # Created here, not by DeepSpeed: it ignores a failed mkdir, and
            # torch.save then reports "Parent directory does not exist".
            error = _os_error(lambda: tag_dir.mkdir(parents=True, exist_ok=True), tag_dir)
        error = from_rank0(error)
        if error is not None:
            raise CheckpointError(error)
        started = time.time()
        files = {}
        try:
            self.engine.save_checkpoint(str(self.root), tag=tag, client_state=client_state, save_latest=False)
        except Exception as exc:  # torch.save's C++ errors carry no errno: "basic_ios::clear", "unexpected pos"
            error = f"writing checkpoint {tag_dir} failed on rank {self.rank}: {_diagnose(tag_dir, exc)}"
            if dist.is_initialized():
                dist.barrier()  # the one that ends DeepSpeed's save, where the ranks that succeeded wait
        if error is None:
            try:
                files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)}
                         for p in _files_of_rank(tag_dir, self.rank)}
            except OSError as exc:
                error = f"reading back checkpoint {tag_dir} failed on rank {self.rank}: {_describe(exc)}"
        reports = all_gather_objects((files, error))  # also a barrier: every rank's write is finished
        errors = [e for _, e in reports if e]
        if self.rank == 0:
            if not errors:
                marker = {"step": step, "world_size": len(reports), "time": time.time(),
                          "files": {k: v for f, _ in reports for k, v in f.items()},
                          "client_keys": sorted(client_state)}
                error = _os_error(lambda: _write_marker(tag_dir, marker), tag_dir)
                errors += [error] if error else []
            if errors:
                # Kept, the partial directory would hold the space that ran
                # out; it is never loaded (no marker) and a retry rewrites it.
                shutil.rmtree(tag_dir, ignore_errors=True)
            else:
                log.info("checkpoint %s written in %.1fs", tag_dir, time.time() - started)
                self._rotate()
                point_latest(self.root)
        errors = from_rank0(errors)
        if errors:
            previous = [p for p in complete_checkpoints(self.root) if p.name < tag]
            raise CheckpointError(f"{errors[0]}; removed the partial checkpoint, the previous one "
                                  f"({previous[0] if previous else 'none'}) is unchanged")
        return tag_dir

    def _rotate(self) -> None:
        if self.keep <= 0:
            return
        for old in complete_checkpoints(self.root)[self.keep:]:
            shutil.rmtree(old, ignore_errors=True)
            remove_universal(old)

    def set_aside_newer(self, step: int) -> None:
        """Collective. A run resumed from an older checkpoint than the newest
        (a roll-back, or a fall-back past a damaged one) moves the newer
        complete step directories into ``abandoned-<time>/``: rotation keeps
        the highest steps, so left in place they would make it delete the
        resumed run's own checkpoints as they are written, and
        ``resume=auto`` would later jump back onto the abandoned line. Newer
        partial writes (no marker; never loadable) are deleted: kept, they
        would hold on to the space a full disk needs back."""
        if self.rank == 0 and self.root.is_dir():
            newer = sorted(p for p in self.root.iterdir()
                           if (m := TAG_RE.match(p.name.removesuffix(".universal"))) and int(m.group(1)) > step)
            partial = [p for p in newer if not (p / MARKER).is_file()]
            for p in partial:
                shutil.rmtree(p, ignore_errors=True)
            complete = [p for p in newer if p not in partial]
            if partial:
                log.warning("resumed from step %d: deleted the partial checkpoint writes %s", step,
                            ", ".join(p.name for p in partial))
            if complete:
                dest = self.root / time.strftime("abandoned-%Y%m%d-%H%M%S")
                dest.mkdir(exist_ok=True)
                for p in complete:
                    os.replace(p, dest / p.name)
                log.warning("resumed from step %d: moved the %d newer checkpoint directories to %s", step,
                            len(complete), dest)
            if partial or complete:
                point_latest(self.root)
        if dist.is_initialized():
            dist.barrier()

    def load(self, point: "ResumePoint | None") -> dict | None:
        """Load a point chosen by :func:`resolve_resume`; return its client state."""
        if point is None:
            return None
        _, client = self.engine.load_checkpoint(str(point.path.parent), tag=point.path.name,
                                                load_optimizer_states=True, load_lr_scheduler_states=True)
        if client is None:
            raise RuntimeError(f"DeepSpeed could not load {point.path}")
        log.info("resumed from %s (step %s%s)", point.path, client.get("step"),
                 ", universal checkpoint: world size changed" if point.universal else "")
        return client


@dataclass(frozen=True)
class ResumePoint:
    path: Path          # the directory DeepSpeed loads (a tag dir, or its universal conversion)
    step: int
    universal: bool     # load with "checkpoint": {"load_universal": true}


def resolve_resume(root: Path, spec: str, world_size: int) -> ResumePoint | None:
    """Collective: pick the checkpoint to resume from, before the engine exists.

    ``spec``: "" (fresh), "auto" (newest complete, falling back past damaged
    ones), or a checkpoint directory. A checkpoint written by another number
    of ranks is converted once to DeepSpeed's universal format (cached next
    to it as ``<tag>.universal``) and loaded from there."""
    if not spec:
        return None
    if spec == "auto":
        # Rank 0 lists and every rank follows: listings that differed (NFS
        # attribute caching) would put the per-checkpoint collectives below
        # out of step.
        candidates = from_rank0(complete_checkpoints(root))
        if not candidates:
            log.info("resume=auto: no complete checkpoint under %s, starting fresh", root)
            return None
    else:
        path = Path(spec)
        if not (path / MARKER).is_file():
            raise FileNotFoundError(f"train.resume={spec!r} is not a complete checkpoint (no {MARKER})")
        candidates = [path]
    rank = dist.get_rank() if dist.is_initialized() else 0
    for tag_dir in candidates:
        if not verify_files(tag_dir, rank):
            log.warning("skipping damaged checkpoint %s; falling back to the previous one", tag_dir)
            continue
        marker = read_marker(tag_dir)
        if marker["world_size"] == world_size:
            return ResumePoint(tag_dir, marker["step"], universal=False)
        log.warning("checkpoint %s was written by %d ranks, this run has %d: using DeepSpeed's universal "
                    "checkpoint format", tag_dir, marker["world_size"], world_size)
        return ResumePoint(ensure_universal(tag_dir, rank), marker["step"], universal=True)
    raise RuntimeError(f"every checkpoint under {root} is damaged; nothing to resume from")


def verify_files(tag_dir: Path, rank: int) -> bool:
    """Collective: every rank checks the recorded files it will read; all agree.

    A rank reads the files of the ranks ``r`` with ``r % world == rank`` (on
    fewer ranks than wrote the checkpoint, rank 0 also checks the files of
    the ranks that no longer exist). Files that are not in the record are not
    looked at."""
    why = None
    try:
        expected = read_marker(tag_dir)["files"]
        world = dist.get_world_size() if dist.is_initialized() else 1
        for name, want in sorted(expected.items()):
            if _owner(name) % world == rank and (why := file_problem(tag_dir, name, want)):
                break
    except Exception as exc:  # unreadable marker, files vanishing while read...
        why = f"{type(exc).__name__}: {exc}"
    if why:
        log.warning("rank %d: checkpoint %s is damaged (%s)", rank, tag_dir, why)
    return all_true(why is None)


def remove_universal(tag_dir: Path) -> None:
    """The cached universal conversion of ``tag_dir`` and any record of a failed one."""
    shutil.rmtree(tag_dir.with_name(tag_dir.name + ".universal"), ignore_errors=True)
    tag_dir.with_name(tag_dir.name + ".universal.failed").unlink(missing_ok=True)


def ensure_universal(tag_dir: Path, rank: int, poll_seconds: float = 5.0) -> Path:
    """Convert ``tag_dir`` to the universal format once, cache it; every rank
    gets the converted path.

    Rank 0 converts, with as many extract and merge workers as it has CPUs
    (the other ranks are idle meanwhile, so the node's cores are free). The
    others do not wait in a collective, whose timeout
    (``train.dist_timeout_minutes``) a large model's conversion could
    outlast: they poll the shared file system for the cached conversion's
    marker, or for the failure rank 0 records, and log while they wait."""
    out = tag_dir.with_name(tag_dir.name + ".universal")
    failed = tag_dir.with_name(tag_dir.name + ".universal.failed")
    # The cache names the write it was converted from: a step saved again
    # since (same name, new weights) is converted again.
    source_time = read_marker(tag_dir)["time"]

    def converted() -> bool:
        return (out / MARKER).is_file() and read_marker(out).get("source_time") == source_time

    if rank == 0:
        failed.unlink(missing_ok=True)
        if not converted():
            try:
                _convert_to_universal(tag_dir, out, source_time)
            except Exception as exc:
                failed.write_text(f"{exc}\n")
                raise
    else:
        started = last_log = time.time()
        while not converted():
            if failed.is_file() and failed.stat().st_mtime >= started - 1:
                raise RuntimeError(f"rank 0 could not convert {tag_dir} to a universal checkpoint: "
                                   f"{failed.read_text().strip()[:500]}")
            if time.time() - last_log > 60:
                log.info("rank %d: waiting for rank 0's universal conversion of %s (%.0f s)", rank, tag_dir,
                         time.time() - started)
                last_log = time.time()
            time.sleep(poll_seconds)
    if dist.is_initialized():
        dist.barrier()  # quick: every rank already sees the conversion
    return out


def _convert_to_universal(tag_dir: Path, out: Path, source_time: float) -> None:
    tmp = tag_dir.with_name(tag_dir.name + ".universal.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    started = time.time()
    workers = str(max(1, len(os.sched_getaffinity(0))))
    cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(tag_dir),
           "--output_folder", str(tmp / tag_dir.name), "--num_extract_workers", workers,
           "--num_merge_workers", workers]
    log.info("converting %s to DeepSpeed's universal format (%s workers)", tag_dir, workers)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"converting {tag_dir} to a universal checkpoint failed:\n{proc.stderr[-3000:]}")
    (tmp / tag_dir.name / MARKER).write_text(json.dumps({"source": str(tag_dir), "source_time": source_time,
                                                         "time": time.time()}))
    os.replace(tmp / tag_dir.name, out)
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("universal checkpoint %s written in %.1fs", out, time.time() - started)
