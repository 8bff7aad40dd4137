"""``opt-shards build``: Localized Narratives + images + recordings -> shards.

The plan (which input line goes to which shard) is a pure function of the
input files and ``samples_per_shard``; workers and jobs only decide who builds
which shard. Each shard is built whole by one process, written under a
temporary name, renamed into place, and followed by its sidecar: a shard
whose sidecar exists is finished, so a rerun skips it, and anything else is
rebuilt from scratch.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .media import MediaError, process_audio, process_image
from .narratives import RecordError, check_relative_path, parse_line
from .shard_writer import ShardWriter, atomic_write_bytes

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")
_KEY_RE = re.compile(rb'"image_id"\s*:\s*"?([^",}\s]+)"?.*?"annotator_id"\s*:\s*(-?\d+)|'
                     rb'"annotator_id"\s*:\s*(-?\d+).*?"image_id"\s*:\s*"?([^",}\s]+)"?')


@dataclass
class BuildOptions:
    annotations: list[str]
    image_root: str
    audio_root: str
    out_dir: str
    prefix: str = "shard"
    samples_per_shard: int = 1000
    image_short_side: int = 384
    jpeg_quality: int = 90
    max_audio_seconds: float = 60.0
    audio_format: str = "flac"
    max_image_pixels: int = 89_478_485


@dataclass(frozen=True)
class LineRef:
    """Where one input line lives; the line itself is read by the shard builder."""
    file: str
    line_no: int      # 1-based, for failure reports
    offset: int
    length: int
    duplicate_of: str | None = None  # "file:line" of the first occurrence


@dataclass
class ShardPlan:
    index: int
    lines: list[LineRef] = field(default_factory=list)


def expand_annotations(patterns: list[str]) -> list[str]:
    files: list[str] = []
    for pattern in patterns:
        matched = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matched:
            raise FileNotFoundError(f"--annotations pattern {pattern!r} matched no file")
        for path in matched:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"annotation file {path!r} does not exist")
        files.extend(matched)
    return files


def plan_shards(files: list[str], samples_per_shard: int) -> list[ShardPlan]:
    """Assign input lines, in file then line order, to shards of a fixed size.

    Duplicates of (image_id, annotator_id) are found here, over the whole
    input, so the first occurrence wins whatever the worker or job layout.
    """
    refs: list[LineRef] = []
    first_seen: dict[bytes, str] = {}
    for path in files:
        with open(path, "rb") as f:
            offset = 0
            for line_no, line in enumerate(f, start=1):
                if line.strip():
                    dup = None
                    m = _KEY_RE.search(line)
                    if m:
                        image_id = m.group(1) or m.group(4)
                        annotator = m.group(2) or m.group(3)
                        key = image_id + b"_" + annotator
                        where = f"{path}:{line_no}"
                        dup = first_seen.setdefault(key, where)
                        dup = None if dup == where else dup
                    refs.append(LineRef(path, line_no, offset, len(line), dup))
                offset += len(line)
    return [ShardPlan(i, refs[start:start + samples_per_shard])
            for i, start in enumerate(range(0, len(refs), samples_per_shard))]


def shard_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:06d}.tar"


def sidecar_path(out_dir: str | Path, prefix: str, index: int) -> Path:
    return Path(out_dir) / f"{prefix}-{index:06d}.stats.json"


def build_shard(plan: ShardPlan, opts: BuildOptions) -> dict:
    """Build one shard completely; return its stats (also written as sidecar)."""
    started = time.time()
    out_dir = Path(opts.out_dir)
    name = shard_name(opts.prefix, plan.index)
    failures: list[dict] = []
    reasons: Counter = Counter()
    with ShardWriter(out_dir / name) as writer:
        handles: dict[str, object] = {}
        try:
            for ref in plan.lines:
                f = handles.get(ref.file) or handles.setdefault(ref.file, open(ref.file, "rb"))
                f.seek(ref.offset)
                raw_line = f.read(ref.length).decode("utf-8", errors="replace")
                try:
                    if ref.duplicate_of:
                        raise RecordError("duplicate", f"same (image_id, annotator_id) as {ref.duplicate_of}")
                    key, members = make_sample(raw_line, opts)
                    writer.write(key, members)
                except (RecordError, MediaError) as err:
                    reasons[err.reason] += 1
                    failures.append(failure_record(ref, raw_line, err.reason, err.detail))
        finally:
            for h in handles.values():
                h.close()
        sha256 = writer.commit()
    tar_path = out_dir / name
    stats = {
        "shard": name,
        "index": plan.index,
        "nsamples": writer.num_samples,
        "ninput": len(plan.lines),
        "filesize": tar_path.stat().st_size,
        "sha256": sha256,
        "failures": dict(sorted(reasons.items())),
        "seconds": round(time.time() - started, 3),
    }
    failures_path = out_dir / f"{opts.prefix}-{plan.index:06d}.failures.jsonl"
    atomic_write_bytes(failures_path, "".join(json.dumps(r) + "\n" for r in failures).encode())
    # The sidecar is written last: its presence marks the shard as finished.
    atomic_write_bytes(sidecar_path(out_dir, opts.prefix, plan.index), json.dumps(stats, indent=1).encode())
    return stats


def make_sample(raw_line: str, opts: BuildOptions) -> tuple[str, dict[str, bytes]]:
    rec = parse_line(raw_line)
    image_path = find_image(opts.image_root, rec.image_id)
    check_relative_path(rec.voice_recording, "voice_recording")
    audio_path = Path(opts.audio_root) / rec.voice_recording
    if not audio_path.is_file():
        raise RecordError("missing_audio", f"no recording at {audio_path}")
    image = process_image(image_path.read_bytes(), short_side=opts.image_short_side,
                          quality=opts.jpeg_quality, max_pixels=opts.max_image_pixels)
    audio = process_audio(audio_path.read_bytes(), max_seconds=opts.max_audio_seconds,
                          audio_format=opts.audio_format)
    meta = {
        "key": rec.key,
        "dataset_id": rec.dataset_id,
        "image_id": rec.image_id,
        "annotator_id": rec.annotator_id,
        "timed_caption": rec.timed_caption,
        "voice_recording": rec.voice_recording,
        "image": {"original_size": list(image.original_size), "size": list(image.size), "sha256": image.sha256},
        "audio": {"original_rate": audio.original_rate, "original_channels": audio.original_channels,
                  "original_seconds": round(audio.original_seconds, 4), "seconds": round(audio.seconds, 4),
                  "cropped": audio.cropped, "sha256": audio.sha256},
    }
    members = {
        "jpg": image.jpeg,
        audio.extension: audio.data,
        "txt": rec.caption.encode("utf-8"),
        "json": json.dumps(meta, sort_keys=True).encode("utf-8"),
    }
    return rec.key, members


def find_image(root: str, image_id: str) -> Path:
    for ext in IMAGE_EXTENSIONS:
        path = Path(root) / f"{image_id}{ext}"
        if path.is_file():
            return path
    raise RecordError("missing_image", f"no image for {image_id} under {root}")


def failure_record(ref: LineRef, raw_line: str, reason: str, detail: str) -> dict:
    ids = {}
    try:
        obj = json.loads(raw_line)
        if isinstance(obj, dict):
            ids = {k: obj.get(k) for k in ("image_id", "annotator_id", "voice_recording") if k in obj}
    except json.JSONDecodeError:
        pass
    return {"file": ref.file, "line": ref.line_no, **ids, "reason": reason, "detail": detail,
            "line_sha1": hashlib.sha1(raw_line.encode()).hexdigest()}


def write_index(out_dir: str | Path, prefix: str, name: str = "") -> dict:
    """Merge sidecars into a wids-format dataset index and one failures.jsonl."""
    out_dir = Path(out_dir)
    sidecars = sorted(out_dir.glob(f"{prefix}-*.stats.json"))
    shardlist, failures = [], []
    for sc in sidecars:
        stats = json.loads(sc.read_text())
        shardlist.append({"url": stats["shard"], "nsamples": stats["nsamples"],
                          "filesize": stats["filesize"], "sha256": stats["sha256"]})
        fpath = out_dir / f"{prefix}-{stats['index']:06d}.failures.jsonl"
        if fpath.exists():
            failures.append(fpath.read_text())
    index = {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": name or prefix,
             "shardlist": shardlist}
    atomic_write_bytes(out_dir / f"{prefix}-index.json", json.dumps(index, indent=1).encode())
    atomic_write_bytes(out_dir / "failures.jsonl", "".join(failures).encode())
    return index


def build(opts: BuildOptions) -> dict:
    files = expand_annotations(opts.annotations)
    os.makedirs(opts.out_dir, exist_ok=True)
    plans = plan_shards(files, opts.samples_per_shard)
    totals: Counter = Counter()
    for plan in plans:
        sc = sidecar_path(opts.out_dir, opts.prefix, plan.index)
        stats = json.loads(sc.read_text()) if sc.exists() else build_shard(plan, opts)
        totals["samples"] += stats["nsamples"]
        totals["inputs"] += stats["ninput"]
        for reason, n in stats["failures"].items():
            totals[f"failed:{reason}"] += n
    write_index(opts.out_dir, opts.prefix)
    return dict(totals)
