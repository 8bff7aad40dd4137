import io
import json
import re

import numpy as np
import soundfile as sf
from PIL import Image

from opt_scale.data.shard_reader import iter_samples
from opt_scale.data_prep.demo_data import COLORS, SHAPES


def _records(demo_raw):
    (ann,) = (demo_raw / "annotations").glob("*.jsonl")
    return [json.loads(line) for line in ann.read_text().splitlines()]


def test_annotations_follow_localized_narratives_schema(demo_raw):
    records = _records(demo_raw)
    assert len(records) == 48
    for r in records:
        assert set(r) == {"dataset_id", "image_id", "annotator_id", "caption", "timed_caption", "traces",
                          "voice_recording"}
        assert re.fullmatch(r"[0-9a-f]{16}", r["image_id"])
        assert isinstance(r["annotator_id"], int)
        assert all(set(u) == {"utterance", "start_time", "end_time"} and u["start_time"] <= u["end_time"]
                   for u in r["timed_caption"])
        assert " ".join(u["utterance"] for u in r["timed_caption"]) == r["caption"]
        assert all(set(p) == {"x", "y", "t"} for trace in r["traces"] for p in trace)
        assert not r["voice_recording"].startswith("/") and r["voice_recording"].endswith(".ogg")
        assert (demo_raw / "images" / f"{r['image_id']}.jpg").is_file()


def test_recordings_are_ogg_vorbis_with_varied_rates(demo_raw):
    rates = set()
    for r in _records(demo_raw)[:12]:
        info = sf.info(str(demo_raw / "recordings" / r["voice_recording"]))
        assert info.format == "OGG" and info.subtype == "VORBIS"
        assert 1.0 < info.duration < 8.0
        rates.add((info.samplerate, info.channels))
    assert len(rates) > 1  # the resampler and downmix get exercised


def test_image_text_and_audio_share_content(demo_raw):
    """The caption names the colour of the shape that the image shows."""
    for r in _records(demo_raw)[:12]:
        color = next(c for c in COLORS if f" {c} " in r["caption"])
        assert any(f" {s} " in r["caption"] for s in SHAPES)
        img = np.asarray(Image.open(demo_raw / "images" / f"{r['image_id']}.jpg").convert("RGB")).reshape(-1, 3)
        dist = np.abs(img.astype(int) - np.array(COLORS[color])).sum(1)
        assert (dist < 60).mean() > 0.01  # a visible region of the named colour


def test_shards_hold_16k_flac_and_resized_jpeg(demo_shards):
    index = json.loads((demo_shards / "demo-index.json").read_text())
    assert index["__kind__"] == "wids-shard-index-v1"
    assert [s["nsamples"] for s in index["shardlist"]] == [16, 16, 16]
    sample = next(iter_samples(str(demo_shards / index["shardlist"][0]["url"])))
    assert {"jpg", "flac", "txt", "json"} <= set(sample)
    assert "." not in sample["__key__"]
    wave, rate = sf.read(io.BytesIO(sample["flac"]))
    assert rate == 16000 and wave.ndim == 1
    assert min(Image.open(io.BytesIO(sample["jpg"])).size) == 96
    meta = json.loads(sample["json"])
    assert meta["audio"]["original_rate"] in (22050, 48000)


def test_demo_captions_fit_the_tiny_text_length_whole(demo_tokenizer, demo_raw):
    """No demo caption is cut short by the tokenizer (truncated training text
    would teach the decoder to stop mid-word)."""
    from opt_scale.data.tokenizer import Tokenizer
    from opt_scale.presets import tiny
    tok = Tokenizer(str(demo_tokenizer))
    limit = tiny().model.text.max_len
    for r in _records(demo_raw):
        assert len(tok.sp.encode(r["caption"].lower())) + 2 <= limit


def test_demo_input_must_be_in_the_localized_narratives_layout(tmp_path):
    import pytest

    from opt_scale.demo import RawInput
    with pytest.raises(SystemExit, match="no annotations.jsonl"):
        RawInput.from_dir(tmp_path)
    (tmp_path / "annotations.jsonl").write_text("{}\n")
    with pytest.raises(SystemExit, match="no images/ directory"):
        RawInput.from_dir(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "audio").mkdir()
    raw = RawInput.from_dir(tmp_path)
    assert raw.annotations == [str(tmp_path / "annotations.jsonl")] and raw.audio == tmp_path / "audio"


def test_lengths_are_sized_to_the_data(demo_shards, demo_tokenizer):
    from opt_scale.demo import size_from_data
    sized = size_from_data(demo_shards / "demo-index.json", demo_tokenizer)
    assert sized["model.text.max_len"] % 8 == 0 and 16 <= sized["model.text.max_len"] <= 128
    assert 1.0 <= sized["model.audio.max_seconds"] <= 15.0 and (2 * sized["model.audio.max_seconds"]) % 1 == 0
