"""``opt-shards build``: Localized Narratives + images + recordings -> shards.

Flow: expand the inputs, scan them once (:mod:`.input_scan`), plan shards
(:mod:`.planning`: a pure function of the input and the content options),
pick this job's shards, skip the finished ones, build the rest in a process
pool (:mod:`.shard_build`), then, for a single-job build, merge the sidecars
into the indexes (:mod:`.index`). A job array runs ``opt-shards index`` once
after all its jobs instead, so jobs never race on shared files.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import multiprocessing as mp
import os
import re
import sys
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .index import MANIFEST_KIND, manifest_path, merge_index, read_manifest
from .input_scan import digest64, scan_inputs
from .media import AUDIO_FORMATS, DEFAULT_MAX_PIXELS
from .open_images_csv import load_rows
from .planning import BuildPlan, HoldoutSpec, ShardTask, make_plan
from .samples import SampleOptions
from .shard_build import (ShardJob, ShardPaths, WorkerContext, build_shard, build_shard_in_worker, finished_stats,
                          init_worker)
from .shard_writer import atomic_write_bytes, remove_stale_temps

log = logging.getLogger(__name__)

FORMAT_VERSION = 3  # bump when the bytes a given input produces change


class BuildConfigError(ValueError):
    """Bad options or an output directory that holds a different build."""


@dataclass
class BuildOptions:
    annotations: list[str]
    image_root: str | list[str]                          # [] for audio-text pairs alone
    audio_root: str                                      # "" for image-text pairs alone
    out_dir: str
    prefix: str = "shard"
    samples_per_shard: int = 1000
    image_short_side: int = 384
    jpeg_quality: int = 90
    max_audio_seconds: float = 60.0
    audio_format: str = "flac"
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    open_images_csv: str | None = None
    holdouts: list[str] = field(default_factory=list)   # "NAME:COUNT"
    workers: int = 1
    num_jobs: int | None = None                          # None: from SLURM_ARRAY_* or 1
    job_index: int | None = None
    max_failure_rate: float = 0.05
    overwrite: bool = False
    progress: bool = True

    def sample_options(self) -> SampleOptions:
        # Absolute: the build identity must name the same directories from any
        # working directory (an array task resubmitted from elsewhere).
        roots = (self.image_root,) if isinstance(self.image_root, str) else tuple(self.image_root)
        return SampleOptions(tuple(os.path.abspath(r) for r in roots),
                             os.path.abspath(self.audio_root) if self.audio_root else "",
                             self.image_short_side, self.jpeg_quality,
                             self.max_audio_seconds, self.audio_format, self.max_image_pixels)


@dataclass
class BuildResult:
    job_index: int
    num_jobs: int
    workers: int
    shards_built: int = 0
    shards_skipped: int = 0
    samples_built: int = 0                                   # by this run
    seconds: float = 0.0
    per_split: dict[str, Counter] = field(default_factory=dict)  # shards, inputs, samples, failed, bytes
    reasons: Counter = field(default_factory=Counter)
    audio_cropped: int = 0
    csv_row_missing: int = 0
    index_written: bool = False

    @property
    def inputs(self) -> int:
        return sum(c["inputs"] for c in self.per_split.values())

    @property
    def failed(self) -> int:
        return sum(self.reasons.values())

    @property
    def failure_rate(self) -> float:
        return self.failed / self.inputs if self.inputs else 0.0

    def add(self, stats: dict, built: bool) -> None:
        c = self.per_split.setdefault(stats["split"], Counter())
        c.update(shards=1, inputs=stats["ninput"], samples=stats["nsamples"], failed=stats["nfailed"],
                 bytes=stats["filesize"])
        self.reasons.update(stats["failures"])
        self.audio_cropped += stats.get("audio_cropped", 0)
        self.csv_row_missing += stats.get("csv_row_missing", 0)
        self.shards_built += built
        self.shards_skipped += not built
        self.samples_built += stats["nsamples"] if built else 0


def resolve_job(num_jobs: int | None, job_index: int | None, env=os.environ) -> tuple[int, int]:
    """(num_jobs, job_index), explicit values first, else from a Slurm job array.

    Slurm array task ids need not start at 0 (``--array=1-64``) and may step
    (``--array=0-126:2``): the job index is (ID - MIN) / STEP.
    """
    env_jobs = env_index = None
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        task, low = int(env["SLURM_ARRAY_TASK_ID"]), int(env.get("SLURM_ARRAY_TASK_MIN", 0))
        step = int(env.get("SLURM_ARRAY_TASK_STEP") or 1)
        env_jobs = int(env["SLURM_ARRAY_TASK_COUNT"])
        if (task - low) % step:
            raise BuildConfigError(f"SLURM_ARRAY_TASK_ID={task} is not MIN={low} + k*STEP={step}: "
                                   "pass --num-jobs and --job-index explicitly")
        env_index = (task - low) // step
    jobs = num_jobs if num_jobs is not None else (env_jobs or 1)
    if job_index is not None:
        index = job_index
    elif jobs == 1:
        index = 0  # e.g. a whole build per array task: --num-jobs 1
    elif env_index is not None and jobs == env_jobs:
        index = env_index
    elif env_index is not None:
        # e.g. a partial resubmission (--array=3,11) of a 16-job build: the
        # array's own numbering says nothing about which of the 16 this is.
        raise BuildConfigError(f"--num-jobs {jobs} differs from the Slurm array's {env_jobs} tasks: "
                               "pass --job-index too")
    else:
        raise BuildConfigError("--num-jobs > 1 needs --job-index (or a Slurm job array)")
    if jobs < 1 or not 0 <= index < jobs:
        raise BuildConfigError(f"job index {index} is outside 0..{jobs - 1} (array ids must be contiguous; "
                               "otherwise pass --num-jobs and --job-index)")
    return jobs, index


def expand_annotations(patterns: list[str]) -> list[str]:
    files: list[str] = []
    for pattern in patterns:
        matched = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matched:
            raise BuildConfigError(f"--annotations pattern {pattern!r} matched no file")
        for path in matched:
            if not os.path.isfile(path):
                raise BuildConfigError(f"annotation file {path!r} does not exist")
        files.extend(matched)
    if len(set(map(os.path.realpath, files))) != len(files):
        raise BuildConfigError("an annotation file is given twice (overlapping --annotations patterns?)")
    return files


def build_identity(opts: BuildOptions, files: list[str], holdouts: list[HoldoutSpec]) -> dict:
    """Everything that decides the output bytes: same identity, same shards."""
    def file_id(path: str) -> list:
        # The modification time too: an annotation file regenerated in place
        # at the same size is new input, not the finished build's.
        st = os.stat(path)
        return [os.path.abspath(path), st.st_size, st.st_mtime_ns]
    return {"format_version": FORMAT_VERSION, "prefix": opts.prefix, "samples_per_shard": opts.samples_per_shard,
            "holdouts": [[h.name, h.count] for h in holdouts], "sample_options": asdict(opts.sample_options()),
            "annotations": [file_id(f) for f in files],
            "open_images_csv": file_id(opts.open_images_csv) if opts.open_images_csv else None}


def build(opts: BuildOptions) -> BuildResult:
    started = time.time()
    num_jobs, job_index = resolve_job(opts.num_jobs, opts.job_index)
    holdouts = [HoldoutSpec.parse(h) for h in opts.holdouts]
    files = check_inputs(opts)
    identity = build_identity(opts, files, holdouts)
    build_id = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    out_dir = Path(opts.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for h in holdouts:
        (out_dir / h.name).mkdir(exist_ok=True)  # held-out shards' own directory (planning.make_plan)
    prepare_out_dir(out_dir, opts, build_id, num_jobs)

    ctx = WorkerContext(tuple(files), opts.sample_options(), str(out_dir), build_id)
    workers = max(1, opts.workers)
    result = BuildResult(job_index, num_jobs, workers)
    with WorkerPool(workers, ctx) as pool:
        size_gb = sum(os.path.getsize(f) for f in files) / 1e9
        log.info("scanning %d annotation file(s), %.2f GB, with %d process(es)", len(files), size_gb, workers)
        table = scan_inputs(files, tuple(h.name for h in holdouts), map_fn=pool.map)
        if len(table) == 0:
            raise BuildConfigError(f"no narratives in {', '.join(files)}")
        plan = make_plan(table, opts.samples_per_shard, holdouts, opts.prefix)
        write_manifest(out_dir, opts, identity, build_id, plan, num_jobs)
        mine = plan.tasks_for_job(job_index, num_jobs)
        todo = []
        for task in mine:
            stats = finished_stats(ShardPaths.of(out_dir, task.stem, task.index), build_id)
            if stats is not None:
                result.add(stats, built=False)
            else:
                todo.append(task)
        log.info("%d lines (%d valid, %d duplicates, %d blank skipped); job %d/%d: %d shard(s), %d already done",
                 len(table), int(table.valid.sum()), int((plan.duplicate_of >= 0).sum()), table.blank_lines,
                 job_index + 1, num_jobs, len(mine), len(mine) - len(todo))
        csv_rows = load_csv_rows(opts.open_images_csv, plan, todo)
        jobs = [make_job(plan, task, csv_rows) for task in todo]
        run_jobs(jobs, ctx, pool, result, opts.progress)
    if num_jobs == 1:
        merge_index(out_dir, opts.prefix)
        result.index_written = True
    result.seconds = time.time() - started
    return result


def check_inputs(opts: BuildOptions) -> list[str]:
    files = expand_annotations(opts.annotations)
    roots = opts.sample_options().image_roots
    for root in (*roots, *([opts.audio_root] if opts.audio_root else [])):
        if not os.path.isdir(root):
            raise BuildConfigError(f"{root!r} is not a directory (check --images / --audio)")
    if opts.open_images_csv and not os.path.isfile(opts.open_images_csv):
        raise BuildConfigError(f"--open-images-csv {opts.open_images_csv!r} does not exist")
    if opts.audio_format not in AUDIO_FORMATS:
        raise BuildConfigError(f"--audio-format must be one of {AUDIO_FORMATS}")
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", opts.prefix):
        raise BuildConfigError(f"--prefix {opts.prefix!r}: use letters, digits, '_', '-', '.'")
    if opts.samples_per_shard <= 0 or opts.image_short_side <= 0 or not 1 <= opts.jpeg_quality <= 100:
        raise BuildConfigError("--samples-per-shard and --image-short-side must be positive, --jpeg-quality 1..100")
    return files


def prepare_out_dir(out_dir: Path, opts: BuildOptions, build_id: str, num_jobs: int) -> None:
    """Refuse to mix builds in one directory; ``--overwrite`` clears a previous one."""
    others = [p.name for p in out_dir.glob("*-build.json") if p.name != manifest_path(out_dir, opts.prefix).name]
    if others:
        raise BuildConfigError(f"{out_dir} holds another build ({', '.join(others)}); one build per directory, "
                               "since failures.jsonl is shared")
    old = read_manifest(out_dir, opts.prefix)
    if old is None or old["build_id"] == build_id:
        return
    if not opts.overwrite:
        raise BuildConfigError(
            f"{out_dir} holds a build of {opts.prefix!r} with other inputs or options (build id {old['build_id']}, "
            f"now {build_id}). Use a new --out, or --overwrite to delete it (single job only).")
    if num_jobs > 1:
        raise BuildConfigError("--overwrite with a job array would let jobs delete each other's shards; "
                               "clear the directory before submitting the array")
    manifest = manifest_path(out_dir, opts.prefix)
    doomed = [p for p in out_dir.iterdir() if p.name == "failures.jsonl" or p.name.startswith(manifest.name)]
    for split in old["splits"]:  # held-out splits lie in subdirectories (planning.make_plan)
        folder, stem = (out_dir / split["stem"]).parent, Path(split["stem"]).name
        pattern = re.compile("^" + re.escape(stem) +
                             r"(-\d{6}\.(tar|stats\.json|failures\.jsonl)|-index\.json)(\.tmp-.*)?$")
        doomed += [p for p in folder.iterdir() if pattern.match(p.name)] if folder.is_dir() else []
    for p in sorted(doomed, key=lambda p: p == manifest):  # the manifest last: a killed --overwrite can be redone
        p.unlink()
    log.warning("--overwrite: deleted %d file(s) of the previous build %s", len(doomed), old["build_id"])


def write_manifest(out_dir: Path, opts: BuildOptions, identity: dict, build_id: str, plan: BuildPlan,
                   num_jobs: int) -> None:
    """Every job writes the same bytes here (atomically), so jobs may race on it harmlessly."""
    t = plan.table
    manifest = {
        "kind": MANIFEST_KIND, "build_id": build_id, "prefix": opts.prefix, "identity": identity,
        "lines": {"total": len(t), "valid": int(t.valid.sum()), "duplicates": int((plan.duplicate_of >= 0).sum()),
                  "blank_skipped": t.blank_lines},
        "splits": plan.split_summary(),
    }
    data = json.dumps(manifest, indent=1, sort_keys=True).encode()
    path = manifest_path(out_dir, opts.prefix)
    if num_jobs == 1:  # alone in the directory: a killed run's temporary is stale (never another job's)
        remove_stale_temps(path)
    if not path.exists() or path.read_bytes() != data:
        atomic_write_bytes(path, data)


def load_csv_rows(csv_path: str | None, plan: BuildPlan, tasks: list[ShardTask]) -> dict[int, dict] | None:
    """Open Images CSV rows for this job's images, keyed by image-id digest."""
    if not csv_path or not tasks:
        return None if not csv_path else {}
    rows = np.concatenate([t.rows for t in tasks])
    digests = plan.table.image_digest[rows[plan.table.valid[rows]]]
    wanted = np.unique(digests)
    started = time.time()
    by_id = load_rows(csv_path, wanted.tolist())
    log.info("Open Images CSV: %d of %d image(s) found in %.1f s", len(by_id), len(wanted), time.time() - started)
    by_digest: dict[int, dict] = {}
    for image_id, row in by_id.items():  # ids sharing a 64-bit digest keep both rows
        by_digest.setdefault(digest64(image_id), {})[image_id] = row
    return by_digest


def make_job(plan: BuildPlan, task: ShardTask, csv_rows: dict[int, dict] | None) -> ShardJob:
    lines = tuple(plan.line_ref(int(r)) for r in task.rows)
    rows_for_task = None
    if csv_rows is not None:
        rows_for_task = {}
        for digest in set(plan.table.image_digest[task.rows].tolist()):
            rows_for_task.update(csv_rows.get(digest, {}))
    return ShardJob(task.split, task.stem, task.index, lines, rows_for_task)


class WorkerPool:
    """A spawn-context process pool, or nothing for one worker (then we build in-process)."""

    def __init__(self, workers: int, ctx: WorkerContext):
        self.workers, self.ctx = workers, ctx
        context = mp.get_context("spawn")  # no fork: safe with threads, the same on every OS
        self.counter = context.Value("q", 0)  # input records done, summed over workers (progress bar)
        self.executor: ProcessPoolExecutor | None = None
        if workers > 1:
            self.executor = ProcessPoolExecutor(workers, mp_context=context, initializer=init_worker,
                                                initargs=(ctx, self.counter, os.getpid()))

    def map(self, fn, items):
        return self.executor.map(fn, items) if self.executor is not None else map(fn, items)

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=exc_type is None, cancel_futures=exc_type is not None)


def run_jobs(jobs: list[ShardJob], ctx: WorkerContext, pool: "WorkerPool", result: BuildResult,
             progress: bool) -> None:
    from tqdm import tqdm
    total = sum(len(j.lines) for j in jobs)
    tty = sys.stderr.isatty()
    bar = tqdm(total=total, desc=f"job {result.job_index + 1}/{result.num_jobs}", unit="sample",
               disable=not progress or total == 0, mininterval=0.5 if tty else 30, dynamic_ncols=True,
               smoothing=0.05)
    try:
        if pool.executor is None:
            for job in jobs:
                result.add(build_shard(job, ctx, on_record=lambda: bar.update(1)), built=True)
            return
        pending = {pool.executor.submit(build_shard_in_worker, job) for job in jobs}
        shown = 0
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            bar.update(pool.counter.value - shown)
            shown = pool.counter.value
            for fut in done:
                result.add(fut.result(), built=True)  # a worker's crash stops the build (a rerun resumes)
    finally:
        bar.close()
