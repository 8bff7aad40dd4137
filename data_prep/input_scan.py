"""The planning pre-pass: stream the JSONL inputs once, keep a few numbers per line.

The real Open Images train release is 507,444 lines and several GB of JSONL,
mostly mouse traces. We never hold lines or records in memory: per line we keep its
place (file, line number, byte offset and length), whether it parses as a
valid narrative, a 128-bit digest of its sample key (for global duplicate
detection), a 64-bit digest of its image id (to find Open Images CSV rows)
and, per held-out split, a 64-bit rank of its image id (to choose held-out
images). About 60 bytes per line: ~40 MB for the whole release.

Files are cut into byte ranges at line starts, so the pass runs in parallel
even over a single huge file, and the result does not depend on the cut.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from .narratives import RecordError, parse_line

CHUNK_BYTES = 32 << 20
UTF8_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class ScanChunk:
    file_index: int
    path: str
    start: int
    end: int


@dataclass
class ChunkScan:
    """Per non-blank line of one chunk (arrays of equal length)."""
    physical_lines: int           # lines owned by the chunk, blank ones included (for numbering)
    local_line: np.ndarray        # int64, 0-based line index within the chunk
    offset: np.ndarray            # int64, byte offset in the file
    length: np.ndarray            # int64, bytes including the newline
    valid: np.ndarray             # bool, parses as a valid narrative
    key_digest: np.ndarray        # uint64 [n, 2], digest of the sample key (zeros when invalid)
    image_digest: np.ndarray      # uint64, digest of the image id (zero when invalid)
    holdout_rank: np.ndarray      # uint64 [n, H], rank of the image for each held-out split


@dataclass
class LineTable:
    """Every non-blank input line, in file then line order."""
    files: list[str]
    file_index: np.ndarray        # int32
    line_no: np.ndarray           # int64, 1-based within its file
    offset: np.ndarray
    length: np.ndarray
    valid: np.ndarray
    key_digest: np.ndarray
    image_digest: np.ndarray
    holdout_rank: np.ndarray
    blank_lines: int

    def __len__(self) -> int:
        return len(self.offset)

    def where(self, i: int) -> str:
        return f"{self.files[self.file_index[i]]}:{self.line_no[i]}"


def digest64(text: str, salt: str = "") -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8, person=salt.encode()[:16]).digest(), "little")


def key_digest128(key: str) -> tuple[int, int]:
    d = hashlib.blake2b(key.encode(), digest_size=16).digest()
    return int.from_bytes(d[:8], "little"), int.from_bytes(d[8:], "little")


def holdout_rank(name: str, image_id: str) -> int:
    """Rank of an image for held-out split ``name``: a hash, so it depends on nothing but the id."""
    return digest64(f"{name}\x00{image_id}", salt="opt-holdout")


def plan_chunks(files: list[str], chunk_bytes: int = CHUNK_BYTES) -> list[ScanChunk]:
    chunks = []
    for i, path in enumerate(files):
        size = os.path.getsize(path)
        for start in range(0, max(size, 1), chunk_bytes):
            chunks.append(ScanChunk(i, path, start, min(size, start + chunk_bytes)))
    return chunks


def scan_chunk(chunk: ScanChunk, holdout_names: tuple[str, ...] = ()) -> ChunkScan:
    """Scan the lines that *start* inside ``[chunk.start, chunk.end)``."""
    local, offsets, lengths, valid, keys, images, ranks = [], [], [], [], [], [], []
    physical = 0
    with open(chunk.path, "rb") as f:
        pos = chunk.start
        if pos > 0:
            # The line that straddles our start belongs to the previous chunk.
            f.seek(pos - 1)
            pos += len(f.readline()) - 1
        while pos < chunk.end:
            line = f.readline()
            if not line:
                break
            if (line.removeprefix(UTF8_BOM) if pos == 0 else line).strip():  # a file may start with a BOM
                local.append(physical)
                offsets.append(pos)
                lengths.append(len(line))
                try:
                    rec = parse_line(line)
                except RecordError:
                    valid.append(False)
                    keys.append((0, 0))
                    images.append(0)
                    ranks.append([0] * len(holdout_names))
                else:
                    valid.append(True)
                    keys.append(key_digest128(rec.key))
                    images.append(digest64(rec.image_id))
                    ranks.append([holdout_rank(name, rec.image_id) for name in holdout_names])
            physical += 1
            pos += len(line)
    n = len(offsets)
    return ChunkScan(
        physical_lines=physical,
        local_line=np.asarray(local, dtype=np.int64),
        offset=np.asarray(offsets, dtype=np.int64),
        length=np.asarray(lengths, dtype=np.int64),
        valid=np.asarray(valid, dtype=bool),
        key_digest=np.asarray(keys, dtype=np.uint64).reshape(n, 2),
        image_digest=np.asarray(images, dtype=np.uint64),
        holdout_rank=np.asarray(ranks, dtype=np.uint64).reshape(n, len(holdout_names)),
    )


def _scan_args(args: tuple[ScanChunk, tuple[str, ...]]) -> ChunkScan:
    return scan_chunk(*args)


def scan_inputs(files: list[str], holdout_names: tuple[str, ...] = (),
                map_fn: Callable[[Callable, Iterable], Iterable] = map,
                chunk_bytes: int = CHUNK_BYTES) -> LineTable:
    """Scan every file; ``map_fn`` (e.g. a process pool's ``map``) parallelises it."""
    chunks = plan_chunks(files, chunk_bytes)
    scans = list(map_fn(_scan_args, [(c, tuple(holdout_names)) for c in chunks]))
    file_index, line_no = [], []
    lines_before = [0] * len(files)  # physical lines already numbered, per file
    for chunk, scan in zip(chunks, scans):
        file_index.append(np.full(len(scan.offset), chunk.file_index, dtype=np.int32))
        line_no.append(scan.local_line + lines_before[chunk.file_index] + 1)
        lines_before[chunk.file_index] += scan.physical_lines
    h = len(holdout_names)

    def cat(parts, dtype, shape=()):
        return np.concatenate(parts) if parts else np.zeros((0, *shape), dtype=dtype)

    table = LineTable(
        files=list(files),
        file_index=cat(file_index, np.int32),
        line_no=cat(line_no, np.int64),
        offset=cat([s.offset for s in scans], np.int64),
        length=cat([s.length for s in scans], np.int64),
        valid=cat([s.valid for s in scans], bool),
        key_digest=cat([s.key_digest for s in scans], np.uint64, (2,)),
        image_digest=cat([s.image_digest for s in scans], np.uint64),
        holdout_rank=cat([s.holdout_rank for s in scans], np.uint64, (h,)),
        blank_lines=sum(s.physical_lines - len(s.offset) for s in scans),
    )
    return table
