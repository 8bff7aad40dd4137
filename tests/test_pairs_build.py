"""Image-text and audio-text corpora end to end: `opt-shards pairs` (COCO
captions JSON, CSV, Clotho CSV) -> `opt-shards build` together with
narratives -> `verify` -> two ranks of ZeRO-3 training on batches that mix
triplets and pairs."""

import csv
import json

from .conftest import run_cli, torchrun_args


def corpora(demo_raw, tmp_path) -> tuple:
    """The demo narratives' images and recordings, captioned as other corpora would be."""
    (ann,) = (demo_raw / "annotations").glob("*.jsonl")
    lines = [json.loads(line) for line in ann.read_text().splitlines()]
    coco = {"images": [{"id": 1000 + i, "file_name": f"{r['image_id']}.jpg"} for i, r in enumerate(lines[:12])],
            "annotations": [{"id": k, "image_id": 1000 + i, "caption": f"{r['caption']} {extra}"}
                            for k, (i, r, extra) in enumerate((i, r, extra) for i, r in enumerate(lines[:12])
                                                              for extra in ("", "Seen again."))]}
    coco_path = tmp_path / "captions_train.json"
    coco_path.write_text(json.dumps(coco))
    clotho_path = tmp_path / "clotho_captions.csv"
    with clotho_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file_name", "caption_1", "caption_2"])
        for r in lines[12:24]:
            w.writerow([r["voice_recording"], r["caption"], r["caption"].lower()])
    csv_path = tmp_path / "pairs.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filepath", "title"])
        for r in lines[24:30]:
            w.writerow([f"{r['image_id']}.jpg", r["caption"]])
    return ann, coco_path, clotho_path, csv_path


def test_pairs_build_verify_and_train_on_two_ranks(demo_raw, demo_shards, demo_tokenizer, demo_vq, tmp_path):
    ann, coco, clotho, table = corpora(demo_raw, tmp_path)
    for src, fmt, extra in ((coco, "coco", []), (clotho, "clotho", []),
                            (table, "csv", ["--image-key", "filepath", "--caption-key", "title"])):
        proc = run_cli(["opt-shards", "pairs", str(src), "--format", fmt, "--out", str(tmp_path / f"{fmt}.jsonl"),
                        *extra])
        assert f"{fmt} pairs" in proc.stdout
    coco_lines = [json.loads(x) for x in (tmp_path / "coco.jsonl").read_text().splitlines()]
    assert len(coco_lines) == 24 and all(x["voice_recording"] is None for x in coco_lines)
    assert len({(x["image_id"], x["annotator_id"]) for x in coco_lines}) == 24  # two captions per image, both kept
    clotho_lines = [json.loads(x) for x in (tmp_path / "clotho.jsonl").read_text().splitlines()]
    assert len(clotho_lines) == 24 and all(x["has_image"] is False for x in clotho_lines)

    shards = tmp_path / "shards"
    run_cli(["opt-shards", "build", "--annotations", str(ann), *(str(tmp_path / f"{f}.jsonl")
                                                               for f in ("coco", "clotho", "csv")),
             "--images", str(demo_raw / "images"), "--audio", str(demo_raw / "recordings"), "--out", str(shards),
             "--prefix", "mix", "--samples-per-shard", "32", "--image-short-side", "96", "--no-progress"],
            timeout=300)
    stats = [json.loads(p.read_text()) for p in shards.glob("mix-*.stats.json")]
    assert sum(s["nsamples"] for s in stats) == 48 + 24 + 24 + 6 and sum(s["nfailed"] for s in stats) == 0
    run_cli(["opt-shards", "verify", str(shards / "mix-index.json")], timeout=300)

    from opt_scale.data.shard_reader import iter_samples
    from opt_scale.data.sources import resolve_shards
    kinds = {}
    for shard in resolve_shards(str(shards / "mix-index.json")):
        for raw in iter_samples(shard.url):
            kinds[raw["__key__"]] = ("jpg" in raw, "flac" in raw)
    assert set(kinds.values()) == {(True, True), (True, False), (False, True)}

    run = tmp_path / "run"
    # The pairs' shard set and the narratives' as a weighted mixture: 1 part pairs to 2 parts narratives.
    mixture = f"{shards / 'mix-index.json'},{demo_shards / 'demo-index.json'}"
    proc = run_cli(torchrun_args(2) + ["--config", "tiny", "--set", f"data.train_shards={mixture}",
                                       "data.train_weights=1,2", f"data.tokenizer={demo_tokenizer}",
                                       f"model.vq.checkpoint={demo_vq}", f"train.out_dir={run}", "train.steps=4",
                                       "train.micro_batch_size=6", "train.log_every=1", "data.num_workers=0",
                                       "train.checkpoint_every=0"], timeout=600)
    out = proc.stdout + proc.stderr
    assert "step 4/4" in out and out.count("data mixture:") == 2


def test_pairs_refuses_bad_input_in_one_line(tmp_path):
    bad = tmp_path / "captions.json"
    bad.write_text('{"images": []}')
    proc = run_cli(["opt-shards", "pairs", str(bad), "--format", "coco", "--out", str(tmp_path / "x.jsonl")],
                   check=False)
    assert proc.returncode == 2 and "not a COCO captions JSON" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.jsonl").exists()
    table = tmp_path / "t.csv"
    table.write_text("path,text\na.jpg,a cat\n")
    proc = run_cli(["opt-shards", "pairs", str(table), "--format", "csv", "--out", str(tmp_path / "y.jsonl")],
                   check=False)
    assert proc.returncode == 2 and "no column 'image'" in proc.stderr
