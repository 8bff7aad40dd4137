"""The Localized Narratives record: parsing and validation of one JSONL line.

Schema (https://google.github.io/localized-narratives/): ``dataset_id``,
``image_id``, ``annotator_id`` (int), ``caption``, ``timed_caption`` (list of
``{utterance, start_time, end_time}``), ``traces`` (list of lists of
``{x, y, t}``), ``voice_recording`` (path relative to the recordings root).

Pairs from image-text and audio-text corpora (``opt-shards pairs`` writes
them) use the same schema with one modality left out: ``voice_recording``
null (image-text; a missing field stays an error, as in a narrative), or ``has_image`` false (audio-text; its
``image_id`` then names the clip, for keys and held-out splits). An optional
``image_path`` names the image file relative to an image root, for corpora
whose file names are not ``<image_id>.jpg``.

The same :func:`parse_line` runs in the planning pre-pass and in the shard
builder, so a line's verdict (and its sample key) is decided identically in
both places.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath

IMAGE_ID_RE = re.compile(r"^[0-9a-f]{16}$")
# Other Localized Narratives subsets (COCO, Flickr30k, ADE20k) use other id
# shapes; anything that is a safe single path component is accepted there, if
# it does not start with "_" (WebDataset reads "_*" members as metadata).
SAFE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,127}$")


class RecordError(ValueError):
    """A narrative line that cannot become a sample; ``reason`` is a short tag."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Narrative:
    dataset_id: str
    image_id: str
    annotator_id: int
    caption: str
    voice_recording: str              # "" for an image-text pair
    timed_caption: list = field(default_factory=list)
    traces: list = field(default_factory=list)
    has_image: bool = True            # False for an audio-text pair
    image_path: str = ""              # relative to an image root; "" = <image_id>.jpg/.jpeg/.png
    # Downstream targets (``opt-shards pairs --format vqa|classes|imagefolder``,
    # see :mod:`.labelled`): {label: soft score}, VQA's ten answers, the
    # group the sample's score is reported under. Empty for narratives.
    labels: dict = field(default_factory=dict)
    answers: tuple = ()
    label_type: str = ""

    @property
    def targets(self) -> dict | None:
        """What the shard's .json records of the targets (None: a narrative or pair has none)."""
        if not self.labels:
            return None
        return {"labels": self.labels, "answers": list(self.answers), "label_type": self.label_type}

    @property
    def key(self) -> str:
        """WebDataset sample key: unique per (image, annotator), no dots."""
        return f"{self.image_id}_{self.annotator_id}"


def parse_line(line: bytes | str) -> Narrative:
    """Parse one JSONL line into a validated :class:`Narrative`.

    Raises :class:`RecordError` with a stable ``reason`` tag on bad input.
    Bytes must be UTF-8 (as JSON requires); they are never decoded leniently,
    so a mangled caption cannot slip into the shards. A UTF-8 byte-order mark
    (which some editors write before a file's first line) is accepted.
    """
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise RecordError("invalid_json", f"line is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    line = line.removeprefix("\ufeff")
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise RecordError("invalid_json", str(exc)) from None
    if not isinstance(obj, dict):
        raise RecordError("invalid_json", f"line is a JSON {type(obj).__name__}, not an object")

    def get(name: str, kind: type | tuple):
        if name not in obj:
            raise RecordError("missing_field", f"field '{name}' is missing")
        value = obj[name]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise RecordError("bad_field_type", f"field '{name}' is {type(value).__name__}")
        return value

    dataset_id = get("dataset_id", str)
    image_id = str(get("image_id", (str, int)))  # COCO's ids are ints in some releases
    annotator_id = get("annotator_id", int)
    caption = get("caption", str).strip()
    # Required, as in the release; null (not absent) marks an image-text pair.
    voice_recording = "" if obj.get("voice_recording", "") is None else get("voice_recording", str)
    has_image = obj.get("has_image", True)
    image_path = obj.get("image_path") or ""
    if not isinstance(has_image, bool) or not isinstance(image_path, str):
        raise RecordError("bad_field_type", "field 'has_image' must be a boolean and 'image_path' a string")
    if not has_image and not voice_recording:
        raise RecordError("missing_field", "a record needs an image, a voice_recording or both")
    timed_caption = obj.get("timed_caption", [])
    traces = obj.get("traces", [])
    if not isinstance(timed_caption, list):
        raise RecordError("bad_field_type", "field 'timed_caption' is not a list")
    if not isinstance(traces, list):
        raise RecordError("bad_field_type", "field 'traces' is not a list")
    labels, answers, label_type = parse_targets(obj)
    check_image_id(image_id, dataset_id)
    if voice_recording:
        check_relative_path(voice_recording, "voice_recording")
    if image_path:
        check_relative_path(image_path, "image_path")
    if not caption and not labels:  # a classification sample has labels and no text
        raise RecordError("empty_caption", "caption is empty")
    return Narrative(dataset_id, image_id, annotator_id, caption, voice_recording, timed_caption, traces,
                     has_image, image_path if has_image else "", labels, answers, label_type)


def parse_targets(obj: dict) -> tuple[dict, tuple, str]:
    """A labelled record's ``labels`` / ``answers`` / ``label_type`` (all optional)."""
    labels = obj.get("labels") or {}
    answers = obj.get("answers") or []
    label_type = obj.get("label_type") or ""
    if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1
            for k, v in labels.items()):
        raise RecordError("bad_field_type", "field 'labels' must map label strings to scores in [0, 1]")
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise RecordError("bad_field_type", "field 'answers' must be a list of strings")
    if not isinstance(label_type, str):
        raise RecordError("bad_field_type", "field 'label_type' must be a string")
    return labels, tuple(answers), label_type


def check_image_id(image_id: str, dataset_id: str) -> None:
    """The image id becomes a file name under the image root: it must stay a single safe component."""
    if "/" in image_id or "\\" in image_id or ".." in image_id or "\x00" in image_id:
        raise RecordError("unsafe_path", f"image_id {image_id!r} would escape the image root")
    pattern = IMAGE_ID_RE if dataset_id.startswith("open_images") else SAFE_ID_RE
    if not pattern.match(image_id):
        raise RecordError("bad_image_id", f"image_id {image_id!r} is not a valid id for {dataset_id!r}")


def check_relative_path(path: str, name: str) -> None:
    """Refuse paths that could escape their root (absolute, ``..``, empty)."""
    p = PurePosixPath(path)
    if not path or p.is_absolute() or ".." in p.parts or "\\" in path or "\x00" in path:
        raise RecordError("unsafe_path", f"{name} {path!r} would escape its root")
