"""``opt-shards verify``: read every shard, decode every sample, check against the index.

Checks, per shard: the file exists with the indexed size and sha256;
tar members are regular files whose sample members are contiguous; every
sample has an image, a 16 kHz mono audio track, a non-empty UTF-8 caption and
metadata naming its own key; the sample count matches the index. Across the
whole index: no key appears twice. Each problem names the shard and key.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing as mp
import tarfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf
from PIL import Image

from opt_scale.data.shard_reader import split_member_name

AUDIO_EXTENSIONS = ("flac", "wav")


@dataclass
class ShardCheck:
    shard: str
    expected: dict | None          # the index entry, or None (a bare tar)
    nsamples: int = 0
    keys: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class _HashingReader:
    def __init__(self, f):
        self._f = f
        self.sha256 = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.sha256.update(data)
        return data


def check_shard(path: str, expected: dict | None) -> ShardCheck:
    check = ShardCheck(Path(path).name, expected)
    p = Path(path)
    if not p.is_file():
        check.problems.append(f"shard {check.shard}: file missing")
        return check
    if expected and p.stat().st_size != expected.get("filesize"):
        check.problems.append(f"shard {check.shard}: size {p.stat().st_size} != indexed {expected.get('filesize')}")
    with open(p, "rb") as f:
        reader = _HashingReader(f)
        try:
            _check_members(tarfile.open(fileobj=reader, mode="r|"), check)
        except tarfile.TarError as exc:
            check.problems.append(f"shard {check.shard}: unreadable tar ({exc})")
        while reader.read(1 << 20):  # the padding after the end-of-archive blocks counts too
            pass
    if expected:
        if expected.get("sha256") and reader.sha256.hexdigest() != expected["sha256"]:
            check.problems.append(f"shard {check.shard}: sha256 mismatch (content changed or corrupted)")
        if check.nsamples != expected.get("nsamples"):
            check.problems.append(
                f"shard {check.shard}: {check.nsamples} samples, index says {expected.get('nsamples')}")
    return check


def _check_members(tar: tarfile.TarFile, check: ShardCheck) -> None:
    current: dict | None = None
    finished: set[str] = set()
    for info in tar:
        if not info.isfile():
            check.problems.append(f"shard {check.shard}: member {info.name!r} is not a regular file")
            continue
        key, ext = split_member_name(info.name)
        if current is None or key != current["__key__"]:
            if current is not None:
                _check_sample(current, check)
                finished.add(current["__key__"])
            if key in finished:
                check.problems.append(f"shard {check.shard} key {key}: members not contiguous")
            current = {"__key__": key}
        if ext in current:
            check.problems.append(f"shard {check.shard} key {key}: two {ext!r} members")
        current[ext] = tar.extractfile(info).read()
    if current is not None:
        _check_sample(current, check)


def _check_sample(sample: dict, check: ShardCheck) -> None:
    key = sample["__key__"]
    check.nsamples += 1
    check.keys.append(key)

    def problem(msg: str) -> None:
        check.problems.append(f"shard {check.shard} key {key}: {msg}")

    if "." in key or not key:
        problem("key is empty or holds a dot")
    audio_ext = next((e for e in AUDIO_EXTENSIONS if e in sample), None)
    # A narrative has both; an image-text or audio-text pair one of them.
    if "jpg" not in sample and audio_ext is None:
        problem(f"neither a jpg nor an audio member ({'/'.join(AUDIO_EXTENSIONS)})")
    img = None
    if "jpg" in sample:
        try:
            img = Image.open(io.BytesIO(sample["jpg"]))
            img.load()
            if img.format != "JPEG" or img.mode != "RGB":
                problem(f"image is {img.format} {img.mode}, expected an RGB JPEG")
        except Exception as exc:
            problem(f"image does not decode ({type(exc).__name__}: {exc})")
            img = None
    if audio_ext is not None:
        try:
            wave, rate = sf.read(io.BytesIO(sample[audio_ext]), dtype="float32", always_2d=True)
            if rate != 16_000 or wave.shape[1] != 1 or wave.shape[0] == 0:
                problem(f"audio is {rate} Hz x {wave.shape[1]} channel(s), {wave.shape[0]} frames; "
                        "expected 16 kHz mono, non-empty")
        except Exception as exc:
            problem(f"audio does not decode ({type(exc).__name__}: {exc})")
    try:
        if not sample["txt"].decode("utf-8").strip():
            problem("caption is empty")
    except KeyError:
        problem("no txt member")
    except UnicodeDecodeError:
        problem("caption is not UTF-8")
    try:
        meta = json.loads(sample["json"])
        if meta.get("key") != key:
            problem(f"metadata names key {meta.get('key')!r}")
        image_meta = meta.get("image") or {}
        if img is not None and list(img.size) != image_meta.get("size"):
            problem(f"image is {img.size}, metadata says {image_meta.get('size')}")
        for member, there, field in (("jpg", "jpg" in sample, "image"), ("audio", audio_ext is not None, "audio")):
            if field in meta and (meta[field] is not None) != there:
                problem(f"metadata {'describes' if meta[field] is not None else 'lacks'} the {member}, "
                        f"the sample {'lacks' if meta[field] is not None else 'has'} it")
    except KeyError:
        problem("no json member")
    except ValueError as exc:
        problem(f"metadata is not JSON ({exc})")


def _check_args(args: tuple[str, dict | None]) -> ShardCheck:
    return check_shard(*args)


def shards_to_check(target: str) -> list[tuple[str, dict | None]]:
    """(shard path, index entry) pairs for an index file, a directory of indexes
    (a build's output: its held-out splits' subdirectories included) or one tar."""
    p = Path(target)
    if p.is_dir():
        indexes = sorted(p.glob("*-index.json")) + sorted(p.glob("*/*-index.json"))
        if not indexes:
            raise FileNotFoundError(f"no *-index.json in {p}")
    elif p.suffix == ".json":
        indexes = [p]
    elif p.suffix == ".tar":
        sidecar = p.with_name(p.name[:-len(".tar")] + ".stats.json")
        expected = json.loads(sidecar.read_text()) if sidecar.exists() else None
        return [(str(p), expected)]
    else:
        raise ValueError(f"{target}: give a dataset index (.json), a directory of them, or a shard (.tar)")
    pairs = []
    for index_file in indexes:
        index = json.loads(index_file.read_text())
        if index.get("__kind__") != "wids-shard-index-v1":
            raise ValueError(f"{index_file} is not a wids-shard-index-v1 index")
        pairs += [(str(index_file.parent / s["url"]), s) for s in index["shardlist"]]
    return pairs


def verify(target: str, workers: int = 1) -> tuple[list[ShardCheck], list[str]]:
    """Check every shard; return the per-shard checks and all problems found."""
    pairs = shards_to_check(target)
    from tqdm import tqdm

    def progress(checks):  # a bar on a terminal; nothing in logs and pipes (disable=None: off when not a TTY)
        return list(tqdm(checks, total=len(pairs), desc="verify", unit="shard", disable=None))

    if workers > 1 and len(pairs) > 1:
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            checks = progress(pool.map(_check_args, pairs))
    else:
        checks = progress(check_shard(*pair) for pair in pairs)
    problems = [msg for c in checks for msg in c.problems]
    seen: dict[str, str] = {}
    for c in checks:
        for key in c.keys:
            if key in seen and seen[key] != c.shard:
                problems.append(f"shard {c.shard} key {key}: also in shard {seen[key]}")
            seen.setdefault(key, c.shard)
    return checks, problems
