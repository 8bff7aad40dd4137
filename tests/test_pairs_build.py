"""Image-text and audio-text corpora end to end: `opt-shards pairs` (COCO
captions JSON, CSV, Clotho CSV) -> `opt-shards build` together with
narratives -> `verify` -> two ranks of ZeRO-3 training on batches that mix
triplets and pairs."""

import json

from .conftest import run_cli, torchrun_args


def test_pairs_build_verify_and_train_on_two_ranks(mixed_shards, demo_shards, demo_tokenizer, demo_vq, tmp_path):
    pairs = mixed_shards.parent
    coco_lines = [json.loads(x) for x in (pairs / "coco.jsonl").read_text().splitlines()]
    assert len(coco_lines) == 24 and all(x["voice_recording"] is None for x in coco_lines)
    assert len({(x["image_id"], x["annotator_id"]) for x in coco_lines}) == 24  # two captions per image, both kept
    clotho_lines = [json.loads(x) for x in (pairs / "clotho.jsonl").read_text().splitlines()]
    assert len(clotho_lines) == 24 and all(x["has_image"] is False for x in clotho_lines)

    shards = mixed_shards
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


def test_audiocaps_csv_becomes_audio_text_pairs(tmp_path):
    """AudioCaps' own columns; every caption of a clip shares its id, the file name follows --audio-name."""
    table = tmp_path / "train.csv"
    table.write_text("audiocap_id,youtube_id,start_time,caption\n"
                     "91139,r1nicOVtvkQ,130,A woman talks nearby as water pours\n"
                     "58146,UDGBjjwyaqE,20,Multiple clanging and clanking sounds\n"
                     "11542,r1nicOVtvkQ,130,Water pours while a woman speaks\n")
    out = tmp_path / "ac.jsonl"
    run_cli(["opt-shards", "pairs", str(table), "--format", "audiocaps", "--out", str(out)])
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["voice_recording"] for x in lines] == ["r1nicOVtvkQ_130.wav", "UDGBjjwyaqE_20.wav", "r1nicOVtvkQ_130.wav"]
    assert all(x["has_image"] is False and x["dataset_id"] == "audiocaps" for x in lines)
    assert lines[0]["image_id"] == lines[2]["image_id"] != lines[1]["image_id"]
    assert [x["annotator_id"] for x in lines] == [0, 0, 1]
    run_cli(["opt-shards", "pairs", str(table), "--format", "audiocaps", "--audio-name", "{audiocap_id}.flac",
             "--out", str(out)])
    assert json.loads(out.read_text().splitlines()[1])["voice_recording"] == "58146.flac"
    proc = run_cli(["opt-shards", "pairs", str(table), "--format", "audiocaps", "--audio-name", "{ytid}.wav",
                    "--out", str(out)], check=False)
    assert proc.returncode == 2 and "names column 'ytid'" in proc.stderr
