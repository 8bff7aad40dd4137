"""``opt-shards download``: Localized Narratives annotations, the voice recordings they name and the
Open Images images they show, laid out as ``opt-shards build`` and the demo's ``DEMO_INPUT`` read:

    OUT/annotations/<annotation file>.jsonl
    OUT/images/<image_id>.jpg
    OUT/audio/<voice_recording>          (the record's relative path, e.g. open_images_train/....ogg)

so that ``opt-shards build --annotations 'OUT/annotations/*.jsonl' --images OUT/images --audio
OUT/audio`` (or ``DEMO_INPUT=OUT``) runs on it unchanged.

Only what the narratives reference is fetched (Open Images has 1.7 M train images; the narratives
cover 0.5 M of them). The transfer itself (atomic, verified, retried) is :mod:`.http_fetch`; this
module decides what to fetch, shares it over a job array and reports.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from opt_scale.utils.cli_errors import UsageError

from .http_fetch import FetchError, FetchOptions, RateLimiter, content_length, fetch
from .input_scan import digest64
from .narratives import RecordError, check_relative_path, parse_line
from .shard_writer import atomic_write_bytes

LN_BUCKET = "https://storage.googleapis.com/localized-narratives/"
DEFAULT_ANNOTATIONS_URL = LN_BUCKET + "annotations/"
DEFAULT_RECORDINGS_URL = LN_BUCKET + "voice-recordings/"
DEFAULT_IMAGES_URL = "https://open-images-dataset.s3.amazonaws.com/"  # + <split>/<image_id>.jpg
IMAGE_SPLITS = ("train", "validation", "test")
SPLIT_FILES = {
    "train": [f"open_images_train_v6_localized_narratives-{k:05d}-of-00010.jsonl" for k in range(10)],
    "validation": ["open_images_validation_localized_narratives.jsonl"],
    "test": ["open_images_test_localized_narratives.jsonl"],
}
# --dry-run --no-head: rough sizes per file. Open Images train is ~513 GB for 1.74 M JPEGs
# (~300 KB each); an Open Images narrative lasts ~40 s of Ogg Vorbis speech (~250 KB).
IMAGE_BYTES_ESTIMATE = 300_000
RECORDING_BYTES_ESTIMATE = 250_000
SHARE_SALT = "opt-download"


@dataclass(frozen=True)
class DownloadOptions:
    out_dir: str
    annotations: tuple[str, ...] = ("train",)   # split names and/or annotation file names
    image_split: str | None = None              # Open Images folder; None: the split --annotations names
    annotations_url: str = DEFAULT_ANNOTATIONS_URL
    recordings_url: str = DEFAULT_RECORDINGS_URL
    images_url: str = DEFAULT_IMAGES_URL
    connections: int = 16
    max_per_second: float = 100.0
    fetch: FetchOptions = field(default_factory=FetchOptions)
    num_jobs: int = 1
    job_index: int = 0
    progress: bool = True


@dataclass(frozen=True)
class Item:
    """One file to fetch: ``rel`` under the output directory, from ``url``."""
    kind: str   # annotation | image | recording
    rel: str
    url: str


@dataclass
class References:
    """What the annotation files name (sorted, without repeats)."""
    narratives: int = 0
    invalid_lines: int = 0
    other_datasets: int = 0      # narratives of COCO, Flickr30k, ...: recording fetched, image not
    images: list[str] = field(default_factory=list)
    recordings: list[str] = field(default_factory=list)


@dataclass
class Outcome:
    fetched: int = 0
    skipped: int = 0
    nbytes: int = 0
    failures: list[dict] = field(default_factory=list)


def annotation_files(names: Iterable[str]) -> list[str]:
    """Split names expanded to their files; file names checked to stay inside annotations/."""
    files = []
    for name in names:
        if name in SPLIT_FILES:
            files += SPLIT_FILES[name]
            continue
        if not name.endswith(".jsonl") or "/" in name or "\\" in name or name.startswith("."):
            raise UsageError(f"--annotations {name!r}: give a split ({', '.join(SPLIT_FILES)}) or an "
                             "annotation file name such as open_images_train_v6_localized_narratives-00000-"
                             "of-00010.jsonl (a name, no directory)")
        files.append(name)
    return list(dict.fromkeys(files))


def check_options(opts: DownloadOptions) -> None:
    """Refuse bad flags before anything is created or fetched."""
    for flag, value, low in (("--connections", opts.connections, 1), ("--retries", opts.fetch.retries, 0),
                             ("--num-jobs", opts.num_jobs, 1)):
        if value < low:
            raise UsageError(f"{flag} {value}: must be at least {low}")
    for flag, value in (("--timeout", opts.fetch.timeout), ("--backoff", opts.fetch.backoff),
                        ("--max-per-second", opts.max_per_second)):
        if not value >= 0 or (flag == "--timeout" and value == 0):
            raise UsageError(f"{flag} {value}: must be {'positive' if flag == '--timeout' else 'at least 0'}")
    if not 0 <= opts.job_index < opts.num_jobs:
        raise UsageError(f"--job-index {opts.job_index}: must be in [0, --num-jobs {opts.num_jobs})")
    for flag, url in (("--annotations-url", opts.annotations_url), ("--recordings-url", opts.recordings_url),
                      ("--images-url", opts.images_url)):
        if not url.startswith(("http://", "https://")) or not url.endswith("/"):
            raise UsageError(f"{flag} {url!r}: must be an http(s) URL ending with '/'")
    annotation_files(opts.annotations)
    image_split(opts)
    if Path(opts.out_dir).exists() and not Path(opts.out_dir).is_dir():
        raise UsageError(f"--out {opts.out_dir}: exists and is not a directory")


def image_split(opts: DownloadOptions) -> str:
    if opts.image_split is not None:
        return opts.image_split
    named = [s for s in opts.annotations if s in SPLIT_FILES]
    if len(set(named)) > 1:
        raise UsageError(f"--annotations names splits {sorted(set(named))}: their images live in different "
                         "Open Images folders; download one split at a time, or pass --image-split")
    return named[0] if named else "train"


def read_references(paths: Iterable[Path]) -> References:
    """Stream the annotation files; keep the image ids and recording paths (not the records)."""
    refs = References()
    images, recordings = set(), set()
    for path in paths:
        with open(path, "rb") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    rec = parse_line(line)
                except RecordError:
                    refs.invalid_lines += 1  # `opt-shards build` rejects it too, with its reason
                    continue
                refs.narratives += 1
                if rec.voice_recording:
                    recordings.add(rec.voice_recording)
                if not rec.has_image:
                    continue
                if rec.dataset_id.startswith("open_images") and not rec.image_path:
                    images.add(rec.image_id)
                else:
                    refs.other_datasets += 1
    refs.images, refs.recordings = sorted(images), sorted(recordings)
    return refs


def media_items(refs: References, opts: DownloadOptions) -> list[Item]:
    split = image_split(opts)
    items = [Item("image", f"images/{image_id}.jpg", f"{opts.images_url}{split}/{image_id}.jpg")
             for image_id in refs.images]
    for rel in refs.recordings:
        check_relative_path(rel, "voice_recording")  # parse_line did; a path from the network stays inside
        items.append(Item("recording", f"audio/{rel}", opts.recordings_url + rel))
    return items


def in_share(rel: str, num_jobs: int, job_index: int) -> bool:
    """Job ``job_index`` of ``num_jobs`` owns the files whose path hashes to it: the same share on
    every rerun and every host, whatever order the annotations list the files in."""
    return digest64(rel, salt=SHARE_SALT) % num_jobs == job_index


def failures_name(opts: DownloadOptions) -> str:
    # Jobs of an array write side by side; one file each, so none overwrites another's.
    return "failures.jsonl" if opts.num_jobs == 1 else f"failures-job{opts.job_index}-of-{opts.num_jobs}.jsonl"


class Progress:
    """Two tqdm bars, files and bytes, fed from the fetching threads."""

    def __init__(self, total_files: int, enabled: bool):
        from tqdm import tqdm
        self.files = tqdm(total=total_files, desc="files", unit="file", disable=not enabled, position=0)
        self.bytes = tqdm(desc="bytes", unit="B", unit_scale=True, unit_divisor=1024, disable=not enabled,
                          position=1)
        self._lock = threading.Lock()

    def add_bytes(self, n: int) -> None:
        with self._lock:
            self.bytes.update(n)

    def file_done(self) -> None:
        with self._lock:
            self.files.update(1)

    def close(self) -> None:
        self.bytes.close()
        self.files.close()


def fetch_all(items: list[Item], opts: DownloadOptions, limiter: RateLimiter) -> Outcome:
    """Fetch the items not yet complete, ``opts.connections`` at a time."""
    out = Path(opts.out_dir)
    outcome = Outcome()
    todo = []
    for item in items:
        if (out / item.rel).is_file():  # only ever renamed there complete
            outcome.skipped += 1
        else:
            todo.append(item)
    progress = Progress(len(todo), opts.progress)
    lock = threading.Lock()

    def one(item: Item) -> None:
        dest = out / item.rel
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            nbytes = fetch(item.url, dest, opts.fetch, limiter, progress.add_bytes)
        except FetchError as err:
            with lock:
                outcome.failures.append({"url": item.url, "path": item.rel, "kind": item.kind,
                                         "reason": err.reason, "detail": err.detail, "attempts": err.attempts})
        else:
            with lock:
                outcome.fetched += 1
                outcome.nbytes += nbytes
        progress.file_done()

    try:
        with ThreadPoolExecutor(opts.connections, thread_name_prefix="download") as pool:
            for future in [pool.submit(one, item) for item in todo]:
                future.result()
    finally:
        progress.close()
    outcome.failures.sort(key=lambda f: f["path"])
    return outcome


def sizes(items: list[Item], opts: DownloadOptions,
          size_of: Callable[[Item], int | None]) -> tuple[int, int, int]:
    """(bytes to download, files whose size is unknown, bytes already on disk) for ``items``."""
    out = Path(opts.out_dir)
    on_disk = sum((out / i.rel).stat().st_size for i in items if (out / i.rel).is_file())
    todo = [i for i in items if not (out / i.rel).is_file()]
    with ThreadPoolExecutor(opts.connections, thread_name_prefix="head") as pool:
        found = list(pool.map(size_of, todo))
    return sum(n for n in found if n is not None), sum(n is None for n in found), on_disk


def head_size(opts: DownloadOptions, limiter: RateLimiter) -> Callable[[Item], int | None]:
    def size_of(item: Item) -> int | None:
        try:
            return content_length(item.url, opts.fetch, limiter)
        except FetchError:
            return None
    return size_of


def estimated_size(item: Item) -> int:
    return IMAGE_BYTES_ESTIMATE if item.kind == "image" else RECORDING_BYTES_ESTIMATE


@dataclass
class DownloadReport:
    """What ``opt-shards download`` did (or, with ``--dry-run``, would do)."""
    refs: References
    annotations: Outcome
    media_total: int                 # images + recordings over all jobs
    share: list[Item]                # this job's images and recordings
    media: Outcome | None = None     # None on a dry run
    bytes_needed: int = 0            # dry run: still to download, this job's share
    unknown_sizes: int = 0
    bytes_on_disk: int = 0
    failures_path: Path | None = None

    @property
    def failed(self) -> int:
        return len(self.annotations.failures) + (len(self.media.failures) if self.media else 0)


def download(opts: DownloadOptions, dry_run: bool = False, head: bool = True) -> DownloadReport:
    check_options(opts)
    out = Path(opts.out_dir)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    limiter = RateLimiter(opts.max_per_second)
    # Every job fetches every annotation file (they say what there is to share); a file another job
    # is writing at the same time is replaced atomically with the same bytes.
    names = annotation_files(opts.annotations)
    ann_items = [Item("annotation", f"annotations/{n}", opts.annotations_url + n) for n in names]
    ann_outcome = fetch_all(ann_items, opts, limiter)
    present = [out / i.rel for i in ann_items if (out / i.rel).is_file()]
    refs = read_references(present)
    items = media_items(refs, opts)
    share = [i for i in items if in_share(i.rel, opts.num_jobs, opts.job_index)]
    report = DownloadReport(refs, ann_outcome, len(items), share)
    if dry_run:
        size_of = head_size(opts, limiter) if head else estimated_size
        report.bytes_needed, report.unknown_sizes, report.bytes_on_disk = sizes(share, opts, size_of)
        return report
    for sub in ("images", "audio"):  # present even when empty: DEMO_INPUT requires both
        (out / sub).mkdir(exist_ok=True)
    report.media = fetch_all(share, opts, limiter)
    report.failures_path = out / failures_name(opts)
    atomic_write_bytes(report.failures_path,
                       "".join(json.dumps(f) + "\n" for f in ann_outcome.failures + report.media.failures).encode())
    return report


def format_report(report: DownloadReport, opts: DownloadOptions, dry_run: bool, head: bool) -> str:
    refs, ann = report.refs, report.annotations
    images = sum(i.kind == "image" for i in report.share)
    lines = [
        f"annotations: {ann.fetched + ann.skipped} of {ann.fetched + ann.skipped + len(ann.failures)} files "
        f"({ann.skipped} already complete)",
        f"narratives: {refs.narratives} ({refs.invalid_lines} invalid lines skipped; {refs.other_datasets} "
        "not from Open Images: recording only)",
        f"images: {len(refs.images)} (Open Images {image_split(opts)})",
        f"recordings: {len(refs.recordings)}",
        f"job {opts.job_index + 1}/{opts.num_jobs}: {len(report.share)} of {report.media_total} files "
        f"({images} images, {len(report.share) - images} recordings)",
    ]
    if dry_run:
        how = "HEAD Content-Length" if head else (f"estimated {IMAGE_BYTES_ESTIMATE / 1e3:g} kB per image, "
                                                  f"{RECORDING_BYTES_ESTIMATE / 1e3:g} kB per recording")
        lines.append(f"bytes to download: {report.bytes_needed} ({report.bytes_needed / 1e9:.3f} GB, {how}"
                     + (f"; {report.unknown_sizes} files of unknown size" if report.unknown_sizes else "") + ")")
        lines.append(f"bytes already on disk: {report.bytes_on_disk} ({report.bytes_on_disk / 1e9:.3f} GB)")
        return "\n".join(lines)
    media = report.media
    lines.append(f"downloaded {media.fetched} files ({media.nbytes / 1e9:.3f} GB), {media.skipped} already "
                 f"complete, {report.failed} failed -> {report.failures_path}")
    if opts.num_jobs == 1:
        lines.append(f"build with: opt-shards build --annotations '{opts.out_dir}/annotations/*.jsonl' "
                     f"--images {opts.out_dir}/images --audio {opts.out_dir}/audio --out SHARDS")
    return "\n".join(lines)
