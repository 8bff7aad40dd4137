"""The build plan: which input line goes to which shard of which split.

Everything here is a pure function of the scanned input and the content
options (``samples_per_shard``, held-out splits): workers and jobs only decide
*who* builds a shard, never *what* is in it.

* Duplicates: of the lines (in file, then line order) with a given
  (image_id, annotator_id), the first one that *builds* becomes the sample;
  later ones are rejected as ``duplicate``. Invalid lines claim nothing, so a
  broken first copy does not cost the sample its good second copy. Whether a
  valid copy builds (its media may fail) is only known by building it, so the
  plan gives each later copy the places of the valid copies before it, and its
  builder tries those first (:mod:`.shard_build`): a pure function of the
  input, whatever shard, worker or job builds which copy.
* Held-out splits (``--holdout NAME:COUNT``): whole images are taken in the
  order of a hash of (NAME, image_id) until COUNT narratives are held out,
  so all narratives of one image land on the same side and the choice depends
  on nothing but the input. Several splits are taken in the order given, each
  from the images the previous ones left. Each goes to its own directory,
  ``OUT/NAME/PREFIX-NAME-*.tar`` with its index beside them, so that no glob
  over the training shards (``OUT/PREFIX-*.tar``) can take held-out samples in.
* Shards: each split's lines, in input order, cut into runs of
  ``samples_per_shard``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .input_scan import LineTable

TRAIN = "train"
HOLDOUT_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
RESERVED_NAMES = {TRAIN, "index", "build", "failures"}


@dataclass(frozen=True)
class HoldoutSpec:
    name: str
    count: int

    @classmethod
    def parse(cls, text: str) -> "HoldoutSpec":
        name, sep, count = text.partition(":")
        if not sep or not count.strip().isdigit() or int(count) <= 0:
            raise ValueError(f"--holdout {text!r}: expected NAME:COUNT, e.g. openimage5k:5000")
        if not HOLDOUT_NAME_RE.match(name) or name.lower() in RESERVED_NAMES:
            raise ValueError(f"--holdout {text!r}: NAME must be a letter then letters, digits or '_' "
                             f"(and not one of {sorted(RESERVED_NAMES)})")
        return cls(name, int(count))


@dataclass(frozen=True)
class LineRef:
    """What a shard builder needs to find, read and report one input line."""
    file_index: int
    line_no: int
    offset: int
    length: int
    earlier_copies: tuple["LineRef", ...] = ()  # valid lines with the same key before this one, in input order


@dataclass(frozen=True)
class ShardTask:
    split: str          # "train" or a held-out split's name
    stem: str           # file name stem: PREFIX or PREFIX-NAME
    index: int          # shard number within its split
    rows: np.ndarray    # line-table rows, in input order

    @property
    def name(self) -> str:
        return f"{self.stem}-{self.index:06d}"


@dataclass
class BuildPlan:
    table: LineTable
    duplicate_of: np.ndarray               # int64 per line: row of the first valid copy of its key, -1 if none
    previous_copy: np.ndarray              # int64 per line: row of the valid copy just before it, -1 if none
    split_of: np.ndarray                   # int16 per line: 0 = train, k = k-th held-out split
    splits: list[str]                      # ["train", holdout names...]
    stems: list[str]
    tasks: list[ShardTask]                 # every shard of every split, in a fixed order
    held_images: dict[str, int]            # split -> number of images held out

    def split_summary(self) -> list[dict]:
        out = []
        for k, (split, stem) in enumerate(zip(self.splits, self.stems)):
            out.append({"name": split, "stem": stem, "ninput": int((self.split_of == k).sum()),
                        "num_shards": sum(1 for t in self.tasks if t.split == split),
                        **({"images": self.held_images[split]} if split in self.held_images else {})})
        return out

    def line_ref(self, row: int) -> LineRef:
        t = self.table
        earlier = []
        prev = int(self.previous_copy[row])
        while prev >= 0:
            earlier.append(LineRef(int(t.file_index[prev]), int(t.line_no[prev]), int(t.offset[prev]),
                                   int(t.length[prev])))
            prev = int(self.previous_copy[prev])
        return LineRef(int(t.file_index[row]), int(t.line_no[row]), int(t.offset[row]), int(t.length[row]),
                       tuple(reversed(earlier)))

    def tasks_for_job(self, job_index: int, num_jobs: int) -> list[ShardTask]:
        """Round-robin over all shards of all splits: disjoint, and balanced across jobs."""
        return [t for i, t in enumerate(self.tasks) if i % num_jobs == job_index]


def find_duplicates(table: LineTable) -> tuple[np.ndarray, np.ndarray]:
    """Per line, the row of the first and of the previous valid line with the same key (-1: none)."""
    duplicate_of = np.full(len(table), -1, dtype=np.int64)
    previous_copy = duplicate_of.copy()
    rows = np.flatnonzero(table.valid)
    if len(rows) < 2:
        return duplicate_of, previous_copy
    keys = table.key_digest[rows]
    order = np.lexsort((rows, keys[:, 1], keys[:, 0]))  # by key, then input order
    sorted_keys, sorted_rows = keys[order], rows[order]
    same = np.r_[False, (sorted_keys[1:] == sorted_keys[:-1]).all(axis=1)]
    group_first = np.maximum.accumulate(np.where(~same, np.arange(len(order)), 0))
    duplicate_of[sorted_rows[same]] = sorted_rows[group_first[same]]
    previous_copy[sorted_rows[same]] = sorted_rows[:-1][same[1:]]
    return duplicate_of, previous_copy


def choose_holdouts(table: LineTable, duplicate_of: np.ndarray,
                    holdouts: list[HoldoutSpec]) -> tuple[np.ndarray, dict[str, int]]:
    """Split id per line (0: train) and images held out per split."""
    split_of = np.zeros(len(table), dtype=np.int16)
    held_images: dict[str, int] = {}
    counts = (table.valid & (duplicate_of < 0)).astype(np.int64)  # lines that can become samples
    for k, spec in enumerate(holdouts, start=1):
        eligible = np.flatnonzero(table.valid & (split_of == 0))
        ranks = table.holdout_rank[eligible, k - 1]
        images, inverse = np.unique(ranks, return_inverse=True)  # sorted by rank
        per_image = np.bincount(inverse, weights=counts[eligible], minlength=len(images))
        reached = np.flatnonzero(np.cumsum(per_image) >= spec.count)
        if len(reached) == 0:
            raise ValueError(f"--holdout {spec.name}:{spec.count}: the input has only "
                             f"{int(per_image.sum())} usable narratives left to hold out")
        take = images[: reached[0] + 1]
        split_of[eligible[np.isin(ranks, take)]] = k
        held_images[spec.name] = len(take)
    return split_of, held_images


def make_plan(table: LineTable, samples_per_shard: int, holdouts: list[HoldoutSpec], prefix: str) -> BuildPlan:
    if samples_per_shard <= 0:
        raise ValueError("--samples-per-shard must be positive")
    if len({h.name for h in holdouts}) != len(holdouts):
        raise ValueError("--holdout names must be distinct")
    duplicate_of, previous_copy = find_duplicates(table)
    split_of, held_images = choose_holdouts(table, duplicate_of, holdouts)
    splits = [TRAIN] + [h.name for h in holdouts]
    stems = [prefix] + [f"{h.name}/{prefix}-{h.name}" for h in holdouts]  # see the module doc
    tasks = []
    for k, (split, stem) in enumerate(zip(splits, stems)):
        rows = np.flatnonzero(split_of == k)
        for i, start in enumerate(range(0, len(rows), samples_per_shard)):
            tasks.append(ShardTask(split, stem, i, rows[start:start + samples_per_shard]))
    return BuildPlan(table, duplicate_of, previous_copy, split_of, splits, stems, tasks, held_images)
