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
"""

from __future__ import annotations

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

import torch
import torch.distributed as dist

from .distributed import collective_device

log = logging.getLogger(__name__)
MARKER = "COMPLETE.json"
TAG_RE = re.compile(r"^step_(\d{8})$")


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
    """Files this rank writes/reads: its own partitions, plus (rank 0) the shared ones."""
    mine = []
    for p in sorted(tag_dir.iterdir()):
        if p.name == MARKER or not p.is_file():
            continue
        m = re.search(r"zero_pp_rank_(\d+)_", p.name)
        if (m and int(m.group(1)) == rank) or (not m and rank == 0):
            mine.append(p)
    return mine


def _all_gather(obj):
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _from_rank0(obj):
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _all_true(flag: bool) -> bool:
    if not dist.is_initialized():
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


class Checkpointer:
    def __init__(self, root: str | Path, engine, keep: int = 3):
        self.root = Path(root)
        self.engine = engine
        self.keep = keep
        self.rank = dist.get_rank() if dist.is_initialized() else 0

    def save(self, step: int, client_state: dict) -> Path:
        tag = tag_for(step)
        tag_dir = self.root / tag
        if self.rank == 0:
            # A leftover of an interrupted save of this same step, and the
            # universal conversion of an older checkpoint of that name.
            shutil.rmtree(tag_dir, ignore_errors=True)
            shutil.rmtree(tag_dir.with_name(tag_dir.name + ".universal"), ignore_errors=True)
        if dist.is_initialized():
            dist.barrier()
        started = time.time()
        self.engine.save_checkpoint(str(self.root), tag=tag, client_state=client_state, save_latest=False)
        files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in _files_of_rank(tag_dir, self.rank)}
        all_files = _all_gather(files)  # also a barrier: every rank's write is finished
        if self.rank == 0:
            marker = {"step": step, "world_size": len(all_files), "time": time.time(),
                      "files": {k: v for f in all_files for k, v in f.items()},
                      "client_keys": sorted(client_state)}
            tmp = tag_dir / (MARKER + ".tmp")
            tmp.write_text(json.dumps(marker, indent=1))
            os.replace(tmp, tag_dir / MARKER)
            log.info("checkpoint %s written in %.1fs", tag_dir, time.time() - started)
            self._rotate()
        if dist.is_initialized():
            dist.barrier()
        return tag_dir

    def _rotate(self) -> None:
        if self.keep <= 0:
            return
        for old in complete_checkpoints(self.root)[self.keep:]:
            shutil.rmtree(old, ignore_errors=True)
            shutil.rmtree(old.with_name(old.name + ".universal"), ignore_errors=True)

    def set_aside_newer(self, step: int) -> None:
        """Collective. A run resumed from an older checkpoint than the newest
        (a roll-back, or a fall-back past a damaged one) moves the newer step
        directories into ``abandoned-<time>/``: rotation keeps the highest
        steps, so left in place they would make it delete the resumed run's
        own checkpoints as they are written, and ``resume=auto`` would later
        jump back onto the abandoned line."""
        if self.rank == 0 and self.root.is_dir():
            newer = sorted(p for p in self.root.iterdir()
                           if (m := TAG_RE.match(p.name.removesuffix(".universal"))) and int(m.group(1)) > step)
            if newer:
                dest = self.root / time.strftime("abandoned-%Y%m%d-%H%M%S")
                dest.mkdir(exist_ok=True)
                for p in newer:
                    os.replace(p, dest / p.name)
                log.warning("resumed from step %d: moved the %d newer checkpoint directories to %s", step,
                            len(newer), dest)
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
        candidates = _from_rank0(complete_checkpoints(root))
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
    """Collective: every rank checks its files against the marker; all agree.

    A run resumed on fewer ranks than wrote the checkpoint has rank 0 also
    check the files of the ranks that no longer exist."""
    ok, why = True, ""
    try:
        marker = read_marker(tag_dir)
        expected = marker["files"]
        world = dist.get_world_size() if dist.is_initialized() else 1
        mine = [p for r in range(rank, max(world, marker["world_size"]), world) for p in _files_of_rank(tag_dir, r)]
        for p in mine:
            want = expected.get(p.name)
            if want is None or p.stat().st_size != want["bytes"] or _sha256(p) != want["sha256"]:
                ok, why = False, f"{p.name} differs from what was written"
                break
        present = {p.name for p in tag_dir.iterdir()}
        missing = sorted(n for n in expected if n not in present)
        if ok and missing:
            ok, why = False, f"missing {missing}"
    except Exception as exc:  # unreadable marker, vanished files...
        ok, why = False, f"{type(exc).__name__}: {exc}"
    if not ok:
        log.warning("rank %d: checkpoint %s is damaged (%s)", rank, tag_dir, why)
    return _all_true(ok)


def ensure_universal(tag_dir: Path, rank: int) -> Path:
    """Convert ``tag_dir`` to the universal format once (rank 0), cache it."""
    out = tag_dir.with_name(tag_dir.name + ".universal")
    # The cache names the write it was converted from: a step saved again
    # since (same name, new weights) is converted again.
    source_time = read_marker(tag_dir)["time"]
    if rank == 0 and not ((out / MARKER).is_file() and read_marker(out).get("source_time") == source_time):
        tmp = tag_dir.with_name(tag_dir.name + ".universal.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
        started = time.time()
        cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(tag_dir),
               "--output_folder", str(tmp / tag_dir.name), "--num_extract_workers", "1", "--num_merge_workers", "1"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"converting {tag_dir} to a universal checkpoint failed:\n{proc.stderr[-3000:]}")
        (tmp / tag_dir.name / MARKER).write_text(json.dumps({"source": str(tag_dir), "source_time": source_time,
                                                             "time": time.time()}))
        os.replace(tmp / tag_dir.name, out)
        shutil.rmtree(tmp, ignore_errors=True)
        log.info("universal checkpoint %s written in %.1fs", out, time.time() - started)
    if dist.is_initialized():
        dist.barrier()
    return out
