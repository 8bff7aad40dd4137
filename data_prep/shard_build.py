"""Build one shard, whole, in one process; and tell finished shards from the rest.

Commit protocol (what makes a rerun after ``kill -9`` exact):

1. a previous sidecar is removed first, so an old "finished" mark can never
   vouch for a new, half-written shard;
2. stale temporaries of this shard (from a killed run) are deleted;
3. the tar is written under a temporary name, fsynced, renamed into place;
4. the shard's failure records are written (atomically);
5. the sidecar (stats) is written last (atomically): its presence, with the
   right build id and a tar of the recorded size, marks the shard finished.

A shard is only ever rebuilt whole, from its input lines, so a rebuilt shard
is byte-identical to what an uninterrupted run writes.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import signal
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .media import MediaError
from .narratives import RecordError
from .planning import LineRef
from .samples import SampleOptions, make_sample
from .shard_writer import ShardWriter, atomic_write_bytes, remove_stale_temps


@dataclass(frozen=True)
class ShardPaths:
    tar: Path
    stats: Path
    failures: Path

    @classmethod
    def of(cls, out_dir: str | Path, stem: str, index: int) -> "ShardPaths":
        base = Path(out_dir) / f"{stem}-{index:06d}"
        return cls(base.with_name(base.name + ".tar"), base.with_name(base.name + ".stats.json"),
                   base.with_name(base.name + ".failures.jsonl"))


@dataclass(frozen=True)
class WorkerContext:
    """What every shard of a build shares (sent once per worker process)."""
    files: tuple[str, ...]
    sample_options: SampleOptions
    out_dir: str
    build_id: str


@dataclass(frozen=True)
class ShardJob:
    split: str
    stem: str
    index: int
    lines: tuple[LineRef, ...]
    csv_rows: dict[str, dict[str, str]] | None  # None: no CSV given

    @property
    def name(self) -> str:
        return f"{self.stem}-{self.index:06d}"


def finished_stats(paths: ShardPaths, build_id: str) -> dict | None:
    """The sidecar of a finished shard of this build, or None (then: rebuild it)."""
    try:
        stats = json.loads(paths.stats.read_text())
        if stats.get("build_id") != build_id or not paths.failures.exists():
            return None
        if paths.tar.stat().st_size != stats["filesize"]:
            return None
        return stats
    except (OSError, ValueError, KeyError):
        return None


def build_shard(job: ShardJob, ctx: WorkerContext, on_record=None) -> dict:
    """Build one shard completely; return its stats (also written as its sidecar)."""
    started, cpu_started = time.time(), time.process_time()
    paths = ShardPaths.of(ctx.out_dir, job.stem, job.index)
    paths.stats.unlink(missing_ok=True)
    for path in (paths.tar, paths.stats, paths.failures):
        remove_stale_temps(path)
    failures: list[dict] = []
    reasons: Counter = Counter()
    cropped = csv_missing = 0
    handles: dict[int, object] = {}
    try:
        with ShardWriter(paths.tar) as writer:
            for ref in job.lines:
                _exit_if_orphaned()
                f = _handle(handles, ctx, ref.file_index)
                raw = _read_line(f, ref)
                try:
                    kept = first_copy_that_builds(ref.earlier_copies, ctx, job.csv_rows, handles)
                    if kept is not None:
                        raise RecordError("duplicate", f"same (image_id, annotator_id) as the copy kept at {kept}")
                    sample = make_sample(raw, ctx.files[ref.file_index], ref.line_no, ctx.sample_options, job.csv_rows)
                except (RecordError, MediaError) as err:
                    reasons[err.reason] += 1
                    failures.append(failure_record(job, ctx.files[ref.file_index], ref, raw, err.reason, err.detail))
                except Exception as exc:  # a library bug on one odd file must not stop the build
                    reasons["unexpected_error"] += 1
                    failures.append(failure_record(job, ctx.files[ref.file_index], ref, raw, "unexpected_error",
                                                   MediaError("", f"{type(exc).__name__}: {exc}").detail))
                else:
                    writer.write(sample.key, sample.members)
                    cropped += sample.audio_cropped
                    csv_missing += sample.csv_row_missing
                if on_record is not None:
                    on_record()
            writer.commit()
    finally:
        for h in handles.values():
            h.close()
    stats = {
        "build_id": ctx.build_id,
        "split": job.split,
        "shard": paths.tar.name,
        "index": job.index,
        "ninput": len(job.lines),
        "nsamples": writer.num_samples,
        "nfailed": len(failures),
        "failures": dict(sorted(reasons.items())),
        "filesize": paths.tar.stat().st_size,
        "sha256": writer.sha256,
        "member_bytes": dict(sorted(writer.member_bytes.items())),
        "audio_cropped": cropped,
        "csv_row_missing": csv_missing,
        "seconds": round(time.time() - started, 3),
        "cpu_seconds": round(time.process_time() - cpu_started, 3),
        "host": socket.gethostname(),
    }
    atomic_write_bytes(paths.failures, "".join(json.dumps(r, sort_keys=True) + "\n" for r in failures).encode())
    # The sidecar is written last: its presence marks the shard as finished.
    atomic_write_bytes(paths.stats, json.dumps(stats, indent=1, sort_keys=True).encode())
    return stats


def _handle(handles: dict, ctx: WorkerContext, file_index: int):
    f = handles.get(file_index)
    if f is None:
        f = handles[file_index] = open(ctx.files[file_index], "rb")
    return f


def _read_line(f, ref: LineRef) -> bytes:
    f.seek(ref.offset)
    return f.read(ref.length)


def first_copy_that_builds(earlier: tuple[LineRef, ...], ctx: WorkerContext, csv_rows, handles: dict) -> str | None:
    """"file:line" of the first earlier copy of a key that builds into a sample, or None.

    Such a copy was (or will be) written by whichever process builds its
    shard; building it again here (duplicates are rare) tells this line, in
    any shard, worker or job, whether it is a duplicate or the first copy
    that builds, with no communication between them.
    """
    for ref in earlier:
        path = ctx.files[ref.file_index]
        try:
            make_sample(_read_line(_handle(handles, ctx, ref.file_index), ref), path, ref.line_no,
                        ctx.sample_options, csv_rows)
        except Exception:  # noqa: BLE001 - any failure: that copy was recorded as a failure by its own builder
            continue
        return f"{path}:{ref.line_no}"
    return None


def failure_record(job: ShardJob, file: str, ref: LineRef, raw: bytes, reason: str, detail: str) -> dict:
    ids: dict = {}
    try:
        obj = json.loads(raw)
        if isinstance(obj, dict):
            ids = {k: obj[k] for k in ("image_id", "annotator_id", "voice_recording") if k in obj}
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        pass
    return {"split": job.split, "shard": job.name, "file": file, "line": ref.line_no, **ids,
            "reason": reason, "detail": detail, "line_sha1": hashlib.sha1(raw).hexdigest()}


# ------------------------------------------------------------ worker processes

_WORKER: dict = {}


def init_worker(ctx: WorkerContext, counter, parent_pid: int) -> None:
    """Pool initializer: remember the context; die with the parent.

    A worker orphaned by ``kill -9`` of the parent would otherwise finish its
    shard while a rerun rebuilds the same shard. PR_SET_PDEATHSIG makes the
    kernel kill it (Linux); the parent-pid check covers the rest.
    """
    _WORKER.update(ctx=ctx, counter=counter, parent=parent_pid)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    _exit_if_orphaned()


def _exit_if_orphaned() -> None:
    parent = _WORKER.get("parent")
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def _count_record() -> None:
    counter = _WORKER["counter"]
    with counter.get_lock():
        counter.value += 1


def build_shard_in_worker(job: ShardJob) -> dict:
    return build_shard(job, _WORKER["ctx"], on_record=_count_record)
