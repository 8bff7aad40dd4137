"""Downstream data for the demo: VQA questions and shape classes from the known scenes.

``python -m opt_scale.demo_tasks --dir runs/demo`` reads the demo's shards
(training and held-out, so no held-out image is ever trained on) and writes,
under ``DIR/downstream/``:

* ``images/<image_id>.jpg``: each image once, as the shards hold it;
* ``vqa/{train,heldout}_{questions,annotations}.json``: VQA v2's layout,
  three questions per single-object image, asked from its caption's words
  ("what colour is the circle?", "what shape is the red object?", "where
  is the red circle?"), ten identical human answers, the answer type the
  attribute asked about (colour, shape, position);
* ``classes/{train,heldout}.csv``: ``image,label`` with the shape as the
  label (the linear probe of the frozen image tower).

Only captions naming exactly one colour and one shape of the demo's
vocabulary (:mod:`opt_scale.eval.attributes`) become questions: scenes in
other words give none, and the command says so.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from opt_scale.data.shard_reader import iter_samples
from opt_scale.data.sources import resolve_shards
from opt_scale.demo import DemoAssets
from opt_scale.eval.attributes import named


def scenes(index: Path) -> dict[str, tuple[bytes, dict[str, str]]]:
    """image_id -> (JPEG, {attribute: value}) of the single-object images in the shards."""
    found = {}
    for shard in resolve_shards(str(index), key="--dir"):
        for raw in iter_samples(shard.url, extensions={"jpg", "txt", "json"}):
            if "jpg" not in raw:
                continue
            image_id = json.loads(raw["json"])["image_id"]
            words = named(raw["txt"].decode("utf-8"))
            if image_id in found or len(words["colour"]) != 1 or len(words["shape"]) != 1 \
                    or len(words["position"]) != 1:
                continue
            found[image_id] = (raw["jpg"], {k: next(iter(v)) for k, v in words.items() if len(v) == 1})
    return found


def questions_of(attrs: dict[str, str]) -> list[tuple[str, str, str]]:
    """(question, answer, answer type) about one scene."""
    colour, shape, position = attrs["colour"], attrs["shape"], attrs["position"]
    return [(f"what colour is the {shape}?", colour, "colour"),
            (f"what shape is the {colour} object?", shape, "shape"),
            (f"where is the {colour} {shape}?", position, "position")]


def write_vqa(found: dict, out: Path, split: str) -> int:
    questions, annotations = [], []
    for image_id, (_, attrs) in sorted(found.items()):
        for k, (question, answer, kind) in enumerate(questions_of(attrs)):
            qid = f"{image_id}{k}"
            questions.append({"image_id": image_id, "question": question, "question_id": qid})
            annotations.append({"question_id": qid, "image_id": image_id, "answer_type": kind,
                                "question_type": question.split(" the ")[0], "multiple_choice_answer": answer,
                                "answers": [{"answer": answer, "answer_confidence": "yes", "answer_id": i + 1}
                                            for i in range(10)]})
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{split}_questions.json").write_text(json.dumps({"data_subtype": split, "questions": questions}))
    (out / f"{split}_annotations.json").write_text(json.dumps({"annotations": annotations}))
    return len(questions)


def write_classes(found: dict, out: Path, split: str) -> int:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"{split}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "label"])
        for image_id, (_, attrs) in sorted(found.items()):
            w.writerow([f"{image_id}.jpg", attrs["shape"]])
    return len(found)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m opt_scale.demo_tasks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default="runs/demo", help="the demo directory (default: runs/demo)")
    args = p.parse_args(argv)
    assets = DemoAssets(Path(args.dir))
    out = Path(args.dir) / "downstream"
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    for split, index in (("train", assets.shards), ("heldout", assets.heldout)):
        if not index.is_file():
            print(f"no {split} shards at {index}: run 'make demo' first", file=sys.stderr)
            return 2
        found = scenes(index)
        if not found:
            print(f"{index}: no caption names one colour, shape and position of the demo's words: no questions",
                  file=sys.stderr)
            return 2
        for image_id, (jpeg, _) in found.items():
            (images / f"{image_id}.jpg").write_bytes(jpeg)
        n = write_vqa(found, out / "vqa", split)
        write_classes(found, out / "classes", split)
        print(f"{split}: {len(found)} images, {n} questions -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
