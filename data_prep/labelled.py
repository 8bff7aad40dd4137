"""Labelled corpora for the downstream tasks -> records ``build`` reads.

``opt-shards pairs --format vqa|classes|imagefolder`` writes, like the other
pair formats, one line per sample in the Localized Narratives schema (see
:mod:`.narratives`), plus the sample's targets:

* ``labels``: ``{label: score}``, soft scores in [0, 1];
* ``answers``: VQA's ten human answers (normalised), what VQA accuracy counts;
* ``label_type``: the group a score is reported under (VQA's ``answer_type``).

and, beside the JSON Lines file, ``<out>.labels.json``: the label vocabulary
(``data.labels`` of a ``vqa`` or ``classify`` run), most frequent first.

Formats:

* ``vqa``: VQA v2's questions JSON (``questions`` with ``image_id`` /
  ``question`` / ``question_id``) with ``--annotations`` (``annotations``
  with ``question_id`` / ``answers`` / ``multiple_choice_answer`` /
  ``answer_type``); the question is the caption, the image file named by
  ``--image-name`` (COCO's ``COCO_{data_subtype}_{image_id:012d}.jpg`` by
  default). Scores follow the public OPT/UNITER code: an answer given by
  1, 2, 3, 4+ of the ten annotators scores 0.3, 0.6, 0.9, 1. The vocabulary
  is the answers chosen (``multiple_choice_answer``) at least
  ``--min-label-count`` times, at most ``--max-labels`` of them (the usual
  3129 from 9 occurrences on VQA v2 train+val).
* ``classes``: a CSV or JSONL with a file column (``--image-key`` and/or
  ``--audio-key``) and a ``--label-key`` column; several labels of one
  sample (multi-label) separated by ``--label-sep``.
* ``imagefolder``: ``ROOT/<class>/<image>`` (torchvision's ImageFolder); the
  image paths are relative to ROOT, which is ``build``'s ``--images``.

A classification sample has no caption: its text is empty, and the
``classify`` task never shows the text tower anything.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

from .pairs import PairsError, column, pair_id, table_rows

FORMATS = ("vqa", "classes", "imagefolder")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
DEFAULT_VQA_IMAGE_NAME = "COCO_{data_subtype}_{image_id:012d}.jpg"

# -- VQA answer normalisation, as the official evaluation (vqaEval.py) does it --

_CONTRACTIONS = {"dont": "don't", "doesnt": "doesn't", "isnt": "isn't", "arent": "aren't", "cant": "can't",
                 "wont": "won't", "wasnt": "wasn't", "werent": "weren't", "shouldnt": "shouldn't",
                 "couldnt": "couldn't", "wouldnt": "wouldn't", "hasnt": "hasn't", "havent": "haven't",
                 "didnt": "didn't", "im": "i'm", "ive": "i've", "youre": "you're", "theyre": "they're",
                 "thats": "that's", "whats": "what's", "wheres": "where's", "hes": "he's", "shes": "she's",
                 "lets": "let's", "its": "it's"}
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
            "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
                ",", "?", "!"]
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def normalise_answer(answer: str) -> str:
    """The official VQA evaluation's answer processing: punctuation, digits
    for number words, no articles, contractions restored."""
    text = answer.replace("\n", " ").replace("\t", " ").strip().lower()
    for p in _PUNCTUATION:
        if (p + " " in text or " " + p in text) or _COMMA_STRIP.search(text) is not None:
            text = text.replace(p, "")
        else:
            text = text.replace(p, " ")
    text = _PERIOD_STRIP.sub("", text)
    words = []
    for word in text.split():
        word = _NUMBERS.get(word, word)
        if word not in _ARTICLES:
            words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def answer_score(count: int) -> float:
    """Soft target of an answer given by ``count`` of the ten annotators (the public OPT/UNITER code)."""
    return min(1.0, 0.3 * count) if count < 4 else 1.0


def _load_json(path: str, what: str, key: str) -> tuple[dict, list]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data, data[key]
    except FileNotFoundError:
        raise PairsError(f"{path}: no such file") from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise PairsError(f"{path}: not a {what} ({type(exc).__name__}: {exc})") from None


def vqa_records(questions_path: str, annotations_path: str, image_name: str) -> Iterator[dict]:
    if not annotations_path:
        raise PairsError("--format vqa needs --annotations (the VQA v2 annotations JSON beside the questions)")
    qdata, questions = _load_json(questions_path, "VQA v2 questions JSON", "questions")
    _, annotations = _load_json(annotations_path, "VQA v2 annotations JSON", "annotations")
    by_question = {a["question_id"]: a for a in annotations}
    subtype = qdata.get("data_subtype", "")
    seen: dict = defaultdict(int)
    for q in sorted(questions, key=lambda q: (str(q["image_id"]), q["question_id"])):
        ann = by_question.get(q["question_id"])
        if ann is None:
            raise PairsError(f"{annotations_path}: no annotation for question {q['question_id']}")
        answers = [normalise_answer(a["answer"]) for a in ann["answers"]]
        try:
            file_name = image_name.format(image_id=q["image_id"], data_subtype=subtype)
        except (KeyError, ValueError) as exc:
            raise PairsError(f"--image-name {image_name!r} does not fit image id {q['image_id']!r} ({exc})") from None
        image_id = re.sub(r"[^A-Za-z0-9_\-]", "_", str(q["image_id"]))
        index = seen[image_id]
        seen[image_id] += 1
        yield {"dataset_id": "vqa", "image_id": image_id, "annotator_id": index, "caption": q["question"].strip(),
               "image_path": file_name, "voice_recording": None,
               "labels": {a: answer_score(c) for a, c in sorted(Counter(answers).items())},
               "answers": answers, "label_type": str(ann.get("answer_type", "")),
               "chosen": normalise_answer(ann.get("multiple_choice_answer", "")) or Counter(answers).most_common(1)[0][0],
               "question_id": q["question_id"]}


def class_records(path: str, image_key: str, audio_key: str, label_key: str,
                  label_sep: str) -> Iterator[dict]:
    seen: dict = defaultdict(int)
    for row in table_rows(path, "jsonl" if path.endswith(".jsonl") else "csv"):
        image = row.get(image_key) if image_key else None
        audio = row.get(audio_key) if audio_key else None
        if not image and not audio:
            raise PairsError(f"{path}: a row has neither --image-key {image_key!r} nor --audio-key {audio_key!r} "
                             f"(columns: {', '.join(map(str, row))})")
        labels = [x.strip() for x in column(row, label_key, path).split(label_sep) if x.strip()]
        if not labels:
            raise PairsError(f"{path}: {image or audio} has an empty {label_key!r}")
        sample_id = pair_id(image or audio)
        index = seen[sample_id]
        seen[sample_id] += 1
        rec = {"dataset_id": "classes", "image_id": sample_id, "annotator_id": index, "caption": "",
               "voice_recording": audio or None, "labels": {x: 1.0 for x in labels}, "chosen": labels[0]}
        if image:
            rec["image_path"] = image
        else:
            rec["has_image"] = False
        yield rec


def imagefolder_records(root: str) -> Iterator[dict]:
    base = Path(root)
    if not base.is_dir():
        raise PairsError(f"{root}: not a directory (imagefolder: ROOT/<class>/<image>)")
    classes = sorted(d.name for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise PairsError(f"{root}: no class directories (imagefolder: ROOT/<class>/<image>)")
    for label in classes:
        for image in sorted((base / label).rglob("*")):
            if image.suffix.lower() in IMAGE_SUFFIXES and image.is_file():
                rel = image.relative_to(base).as_posix()
                yield {"dataset_id": "imagefolder", "image_id": pair_id(rel), "annotator_id": 0, "caption": "",
                       "image_path": rel, "voice_recording": None, "labels": {label: 1.0}, "chosen": label}


def label_vocabulary(records: list[dict], min_count: int, max_labels: int) -> list[str]:
    """Labels chosen at least ``min_count`` times, most frequent first (ties by name), at most ``max_labels``."""
    counts = Counter(r["chosen"] for r in records)
    ranked = sorted((label for label, c in counts.items() if c >= min_count), key=lambda a: (-counts[a], a))
    return ranked[:max_labels] if max_labels else ranked


def labels_path(out: str) -> str:
    """Where the vocabulary of the records in ``out`` goes."""
    return f"{os.path.splitext(out)[0]}.labels.json"


def write_labelled(path: str, fmt: str, out: str, annotations: str = "", image_name: str = DEFAULT_VQA_IMAGE_NAME,
                   image_key: str = "image", audio_key: str = "", label_key: str = "label", label_sep: str = "|",
                   min_label_count: int = 1, max_labels: int = 0) -> tuple[int, int]:
    """Write the records and their vocabulary (both atomically); (records, labels)."""
    try:
        if fmt == "vqa":
            recs = list(vqa_records(path, annotations, image_name))
        elif fmt == "classes":
            if not os.path.isfile(path):
                raise PairsError(f"{path}: no such file")
            recs = list(class_records(path, image_key, audio_key, label_key, label_sep))
        else:
            recs = list(imagefolder_records(path))
    except (KeyError, TypeError, AttributeError) as exc:  # an entry without a field its format requires
        raise PairsError(f"{path}: not a valid --format {fmt} input ({type(exc).__name__}: {exc})") from None
    vocab = label_vocabulary(recs, min_label_count, max_labels)
    for rec in recs:
        rec.pop("chosen")
    _atomic_write(out, "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in recs))
    _atomic_write(labels_path(out), json.dumps(vocab, ensure_ascii=False, indent=0) + "\n")
    return len(recs), len(vocab)


def _atomic_write(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
