"""Merge per-shard sidecars into the dataset indexes and one ``failures.jsonl``.

Run once after every shard is built: at the end of a single-job build, or as
``opt-shards index`` after all jobs of an array (jobs never write these
shared files, so they cannot race on them). The build manifest
(``PREFIX-build.json``) says which splits and how many shards to expect; a
missing or stale shard is an error, never a silently shorter index.

Index format: wids (``{"__kind__": "wids-shard-index-v1", "wids_version": 1,
"shardlist": [{"url", "nsamples", "filesize", ...}]}``), urls
relative to the index, plus our own fields (sha256, inputs, failures).
Everything in it is deterministic: the same input gives the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

from .shard_build import ShardPaths, finished_stats
from .shard_writer import atomic_write_bytes, remove_stale_temps

MANIFEST_KIND = "opt-shards-build-v1"
FAILURES_FILE = "failures.jsonl"


class IncompleteBuildError(RuntimeError):
    def __init__(self, missing: list[str]):
        shown = ", ".join(missing[:10]) + (f" ... ({len(missing)} in all)" if len(missing) > 10 else "")
        super().__init__(f"{len(missing)} shard(s) not finished: {shown}. Rerun the build (or the failed "
                         "array tasks) to finish them; finished shards are skipped.")
        self.missing = missing


def manifest_path(out_dir: str | Path, prefix: str) -> Path:
    return Path(out_dir) / f"{prefix}-build.json"


def index_path(out_dir: str | Path, stem: str) -> Path:
    return Path(out_dir) / f"{stem}-index.json"


def read_manifest(out_dir: str | Path, prefix: str) -> dict | None:
    path = manifest_path(out_dir, prefix)
    if not path.exists():
        return None
    manifest = json.loads(path.read_text())
    if manifest.get("kind") != MANIFEST_KIND:
        raise ValueError(f"{path} is not an opt-shards build manifest")
    return manifest


def merge_index(out_dir: str | Path, prefix: str, allow_incomplete: bool = False) -> dict[str, dict]:
    """Write ``STEM-index.json`` per split and ``failures.jsonl``; return split -> index."""
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir, prefix)
    if manifest is None:
        # Refuse before anything is written: merging "nothing" would replace a
        # real failures.jsonl (the build's only record of rejected inputs).
        found = sorted(p.name[: -len("-build.json")] for p in out_dir.glob("*-build.json")) if out_dir.is_dir() else []
        raise FileNotFoundError(f"{manifest_path(out_dir, prefix)}: no build with --prefix {prefix!r} here "
                                f"(builds found: {', '.join(found) or 'none'}); pass the --prefix the build used")
    splits, build_id = manifest["splits"], manifest["build_id"]
    indexes, failure_texts, missing = {}, [], []
    for split in splits:
        stem = split["stem"]
        shardlist = []
        for i in range(split["num_shards"]):
            paths = ShardPaths.of(out_dir, stem, i)
            stats = finished_stats(paths, build_id)
            if stats is None:
                missing.append(paths.tar.name)
                continue
            shardlist.append({"url": paths.tar.name, "nsamples": stats["nsamples"], "filesize": stats["filesize"],
                              "sha256": stats["sha256"],
                              "ninput": stats["ninput"], "failures": stats["failures"]})
            if paths.failures.exists():
                failure_texts.append(paths.failures.read_text())
        indexes[split["name"]] = {
            "__kind__": "wids-shard-index-v1",
            "wids_version": 1,
            "name": stem,
            "split": split["name"],
            "build_id": build_id,
            "nsamples": sum(s["nsamples"] for s in shardlist),
            "ninput": sum(s["ninput"] for s in shardlist),
            "failures": _sum_failures(shardlist),
            "shardlist": shardlist,
        }
    if missing and not allow_incomplete:
        raise IncompleteBuildError(missing)
    # The merge runs alone (after every job): temporaries of the shared files are a killed run's.
    for path in [index_path(out_dir, s["stem"]) for s in splits] + [out_dir / FAILURES_FILE,
                                                                     manifest_path(out_dir, prefix)]:
        remove_stale_temps(path)
    for split in splits:
        index = indexes[split["name"]]
        atomic_write_bytes(index_path(out_dir, split["stem"]), json.dumps(index, indent=1).encode())
    atomic_write_bytes(out_dir / FAILURES_FILE, "".join(failure_texts).encode())
    return indexes


def _sum_failures(shardlist: list[dict]) -> dict[str, int]:
    total: dict[str, int] = {}
    for s in shardlist:
        for reason, n in s["failures"].items():
            total[reason] = total.get(reason, 0) + n
    return dict(sorted(total.items()))
