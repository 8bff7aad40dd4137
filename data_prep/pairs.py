"""``opt-shards pairs``: image-text and audio-text corpora -> records ``build`` reads.

OPT also pre-trains on image-text corpora (Conceptual Captions, Visual
Genome, COCO) and could use audio-text ones (AudioCaps, Clotho). Each caption
becomes one line in the Localized Narratives schema with the missing
modality left out (see :mod:`.narratives`), so ``opt-shards build`` plans,
holds out, builds and verifies them exactly as it does narratives, and the
loader trains on them with that modality absent.

Formats (``--format``):

* ``coco``: a COCO captions JSON (``images`` with ``id`` / ``file_name``,
  ``annotations`` with ``image_id`` / ``caption``), the file names relative
  to the ``--images`` root given to ``build``;
* ``karpathy``: the Karpathy-split JSON of COCO or Flickr30k
  (``dataset_coco.json``, ``dataset_flickr30k.json``: ``images`` with
  ``filepath`` / ``filename`` / ``split`` / ``sentences``), one ``--split``
  (``train`` takes ``restval`` too, as is usual);
* ``csv`` / ``jsonl``: one image path (relative to an image root) and one
  caption per row, columns ``--image-key`` / ``--caption-key`` (open_clip's
  ``filepath`` / ``title`` work as well as the default ``image`` / ``caption``);
* ``audiocaps``: AudioCaps' CSV (``audiocap_id, youtube_id, start_time,
  caption``), the clip's file named by ``--audio-name`` (default
  ``{youtube_id}_{start_time}.wav``, relative to ``build``'s ``--audio``);
* ``clotho``: Clotho's captions CSV (``file_name, caption_1 .. caption_5``).

All captions of one image (or clip) share its id: they are held out together
and are never each other's contrastive negatives. Every caption of an image
gets its own ``annotator_id`` (its index among them), so keys stay unique.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import PurePosixPath

FORMATS = ("coco", "karpathy", "csv", "jsonl", "audiocaps", "clotho")
SAFE = re.compile(r"[^A-Za-z0-9_\-]")


class PairsError(ValueError):
    """An input that cannot be read as the format it was given as."""


def pair_id(name: str) -> str:
    """A safe sample id from a file name or path: its readable stem plus a
    short hash of the whole path, so ``a/x.jpg`` and ``b/x.jpg`` differ."""
    stem = SAFE.sub("_", PurePosixPath(name).stem)[:80].strip("_-") or "x"
    return f"{stem}-{hashlib.blake2b(name.encode(), digest_size=4).hexdigest()}"


def image_record(dataset: str, image_id: str, image_path: str, caption: str, index: int) -> dict:
    return {"dataset_id": dataset, "image_id": image_id, "annotator_id": index, "caption": caption.strip(),
            "image_path": image_path, "voice_recording": None}


def audio_record(dataset: str, clip_id: str, recording: str, caption: str, index: int) -> dict:
    return {"dataset_id": dataset, "image_id": clip_id, "annotator_id": index, "caption": caption.strip(),
            "has_image": False, "voice_recording": recording}


def coco_records(path: str) -> Iterator[dict]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        files = {img["id"]: img["file_name"] for img in data["images"]}
        annotations = data["annotations"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise PairsError(f"{path}: not a COCO captions JSON ({type(exc).__name__}: {exc})") from None
    seen: dict = defaultdict(int)
    for ann in sorted(annotations, key=lambda a: (a["image_id"], a.get("id", 0))):
        if ann["image_id"] not in files:
            raise PairsError(f"{path}: annotation {ann.get('id')} names image {ann['image_id']}, not in 'images'")
        index = seen[ann["image_id"]]
        seen[ann["image_id"]] += 1
        yield image_record("coco", SAFE.sub("_", str(ann["image_id"])), files[ann["image_id"]], ann["caption"], index)


def karpathy_records(path: str, split: str) -> Iterator[dict]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        images, dataset = data["images"], str(data.get("dataset", "karpathy"))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise PairsError(f"{path}: not a Karpathy-split JSON ({type(exc).__name__}: {exc})") from None
    wanted = {"train", "restval"} if split == "train" else {split}
    for img in images:
        if img.get("split") not in wanted:
            continue
        image_path = str(PurePosixPath(img["filepath"]) / img["filename"]) if img.get("filepath") else img["filename"]
        image_id = SAFE.sub("_", str(img.get("cocoid", img.get("imgid", pair_id(image_path)))))
        for index, sentence in enumerate(img.get("sentences", [])):
            yield image_record(dataset, image_id, image_path, sentence["raw"], index)


def table_rows(path: str, fmt: str) -> Iterator[dict]:
    if fmt == "jsonl":
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise PairsError(f"{path}:{n}: not JSON ({exc})") from None
        return
    with open(path, encoding="utf-8", newline="") as f:
        sample = f.read(4096)
        f.seek(0)
        dialect = csv.Sniffer().sniff(sample, delimiters=",\t;") if sample else csv.excel
        yield from csv.DictReader(f, dialect=dialect)


def column(row: dict, key: str, path: str) -> str:
    if key not in row or row[key] is None:
        raise PairsError(f"{path}: no column {key!r} (columns: {', '.join(map(str, row))})")
    return str(row[key])


def image_text_records(path: str, fmt: str, image_key: str, caption_key: str) -> Iterator[dict]:
    seen: dict = defaultdict(int)
    for row in table_rows(path, fmt):
        image = column(row, image_key, path)
        index = seen[image]
        seen[image] += 1
        yield image_record(f"pairs_{fmt}", pair_id(image), image, column(row, caption_key, path), index)


def audiocaps_records(path: str, audio_name: str) -> Iterator[dict]:
    seen: dict = defaultdict(int)
    for row in table_rows(path, "csv"):
        try:
            recording = audio_name.format(**row)
        except KeyError as exc:
            raise PairsError(f"{path}: --audio-name {audio_name!r} names column {exc}, which the CSV lacks") from None
        index = seen[recording]
        seen[recording] += 1
        yield audio_record("audiocaps", pair_id(recording), recording, column(row, "caption", path), index)


def clotho_records(path: str) -> Iterator[dict]:
    for row in table_rows(path, "csv"):
        name = column(row, "file_name", path)
        captions = [row[k] for k in sorted(row, key=str) if str(k).startswith("caption") and row[k]]
        if not captions:
            raise PairsError(f"{path}: {name} has no caption_N column")
        for index, caption in enumerate(captions):
            yield audio_record("clotho", pair_id(name), name, caption, index)


def records(path: str, fmt: str, image_key: str = "image", caption_key: str = "caption",
            audio_name: str = "{youtube_id}_{start_time}.wav", split: str = "train") -> Iterable[dict]:
    if fmt not in FORMATS:
        raise PairsError(f"--format must be one of {', '.join(FORMATS)}")
    if not os.path.isfile(path):
        raise PairsError(f"{path}: no such file")
    if fmt == "coco":
        return coco_records(path)
    if fmt == "karpathy":
        return karpathy_records(path, split)
    if fmt in ("csv", "jsonl"):
        return image_text_records(path, fmt, image_key, caption_key)
    if fmt == "audiocaps":
        return audiocaps_records(path, audio_name)
    return clotho_records(path)


def write_pairs(path: str, fmt: str, out: str, **keys) -> int:
    """Write ``path``'s pairs to ``out`` (JSON Lines, atomically); return how many."""
    tmp = f"{out}.tmp-{os.getpid()}"
    n = 0
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for rec in records(path, fmt, **keys):
                if rec["caption"]:
                    f.write(json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n")
                    n += 1
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return n
