"""opt-shards build on real photos, real speech and every kind of bad input."""

import hashlib
import io
import json
import shutil
from collections import Counter

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from opt_scale.data.shard_reader import count_samples, iter_samples
from opt_scale.data_prep.cli import build_parser
from opt_scale.data_prep.demo_inputs import BAD_FILE

from .conftest import prep_build_args, run_cli


def _samples(index_path):
    index = json.loads(index_path.read_text())
    for shard in index["shardlist"]:
        yield from iter_samples(str(index_path.parent / shard["url"]))


def _all_samples(out):
    return {s["__key__"]: s for idx in ("shard-index.json", "heldout/shard-heldout-index.json")
            for s in _samples(out / idx)}


def _raw_lines(raw):
    lines = []
    for path in sorted((raw / "annotations").glob("*.jsonl")):
        lines += [line for line in path.read_bytes().splitlines() if line.strip()]
    return lines


def test_every_bad_input_is_rejected_with_its_reason_and_the_rest_is_kept(prep_raw, prep_reference):
    out = prep_reference.dir
    expected = json.loads((prep_raw / "extras" / "expected_failures.json").read_text())
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert Counter(f["reason"] for f in failures) == expected["reasons"]
    assert len(expected["reasons"]) >= 12  # every kind the issue lists (and a few more)
    for f in failures:
        assert {"file", "line", "reason", "detail", "split", "shard"} <= set(f)
        assert f["file"].endswith(".jsonl") and isinstance(f["line"], int) and f["line"] >= 1
        if f["reason"] in ("missing_image", "missing_audio", "bad_image", "bad_audio", "duplicate"):
            assert "image_id" in f and "annotator_id" in f
    bad_file_lines = {f["line"] for f in failures if f["file"].endswith(BAD_FILE)}
    assert len(bad_file_lines) == sum(expected["reasons"].values())
    dup = next(f for f in failures if f["reason"] == "duplicate")
    assert dup["detail"].endswith("-00000-of-00001.jsonl:1")  # the first copy wins

    samples = _all_samples(out)
    lines = _raw_lines(prep_raw)
    assert len(samples) == len(lines) - len(failures)
    # The valid copy of a key whose first line was invalid (empty caption) becomes a sample.
    empty = next(f for f in failures if f["reason"] == "empty_caption")
    assert f"{empty['image_id']}_{empty['annotator_id']}" in samples
    manifest = json.loads((out / "shard-build.json").read_text())
    assert manifest["lines"]["blank_skipped"] == 1 and manifest["lines"]["total"] == len(lines)


def test_summary_names_samples_failures_gigabytes_and_speed(prep_raw, prep_reference):
    text = prep_reference.stdout
    expected = json.loads((prep_raw / "extras" / "expected_failures.json").read_text())["reasons"]
    assert "failures by reason:" in text and "samples/s/core" in text and "GB" in text
    for reason, n in expected.items():
        assert any(line.split() == [reason, str(n)] for line in text.splitlines()), reason
    assert "recordings cropped to --max-audio-seconds: " in text


def test_index_counts_sizes_and_checksums_match_the_shards(prep_reference):
    out = prep_reference.dir
    for name in ("shard-index.json", "heldout/shard-heldout-index.json"):
        index = json.loads((out / name).read_text())
        assert index["__kind__"] == "wids-shard-index-v1" and index["wids_version"] == 1
        assert index["nsamples"] == sum(s["nsamples"] for s in index["shardlist"]) > 0
        folder = (out / name).parent  # urls are relative to their index; held-out ones lie in heldout/
        for shard in index["shardlist"]:
            path = folder / shard["url"]
            assert "/" not in shard["url"] and path.is_file()
            assert count_samples(str(path)) == shard["nsamples"]
            assert path.stat().st_size == shard["filesize"]
            assert hashlib.sha256(path.read_bytes()).hexdigest() == shard["sha256"]
            stats = json.loads((folder / shard["url"].replace(".tar", ".stats.json")).read_text())
            assert stats["ninput"] == stats["nsamples"] + stats["nfailed"] and stats["seconds"] >= 0


def test_index_with_a_prefix_no_build_used_is_refused_and_writes_nothing(prep_reference):
    out = prep_reference.dir
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".json", ".jsonl")}
    proc = run_cli(["opt-shards", "index", str(out), "--prefix", "oi-ln"], check=False)
    assert proc.returncode == 2 and "builds found: shard" in proc.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".json", ".jsonl")} == before


def _real_media(raw, reference):
    """(description written by demo-data --real-media, built sample, its metadata) per real narrative."""
    real = json.loads((raw / "extras" / "real_media.json").read_text())
    samples = _all_samples(reference.dir)
    return [(desc, samples[key], json.loads(samples[key]["json"])) for key, desc in real.items()]


def _mean_abs_error(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b.resize(a.size), np.float32)).mean())


def test_real_photos_come_out_upright_rgb_and_resized_with_their_metadata(prep_raw, prep_reference):
    from skimage import data
    variants = set()
    for desc, sample, meta in _real_media(prep_raw, prep_reference):
        out = Image.open(io.BytesIO(sample["jpg"]))
        assert out.format == "JPEG" and out.mode == "RGB" and min(out.size) == 64
        upright = Image.fromarray(getattr(data, desc["photo"])()).convert("RGB")
        w, h = desc["upright_size"]
        assert out.size[0] / out.size[1] == pytest.approx(w / h, rel=0.05)
        errors = {t: _mean_abs_error(out, upright.transpose(t)) for t in
                  (Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)}
        assert _mean_abs_error(out, upright) < min(errors.values()) / 2, desc["image_variant"]
        assert meta["image"]["rotation_applied"] == {"exif6": "exif:6", "csv90": "csv:90"}.get(
            desc["image_variant"], "none")
        assert meta["image"]["size"] == list(out.size)
        source = prep_raw / "images" / desc["image_file"]
        assert meta["image"]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
        assert meta["open_images"]["license"] == "https://creativecommons.org/licenses/by/2.0/"
        assert meta["open_images"]["author"] == "scikit-image sample data"
        variants.add(desc["image_variant"])
    assert variants == {"jpeg", "exif6", "png_rgba", "gray_jpeg", "csv90", "large_jpeg", "cmyk_jpeg"}


def test_audio_is_16k_mono_flac_capped_and_described(prep_raw, prep_reference):
    real = _real_media(prep_raw, prep_reference)
    seen_rates = set()
    for desc, sample, meta in real:
        meta = meta["audio"]
        wave, rate = sf.read(io.BytesIO(sample["flac"]), always_2d=True)
        assert rate == 16_000 and wave.shape[1] == 1
        assert np.abs(wave).max() > 0.05  # speech, not silence
        assert meta["original_seconds"] == pytest.approx(desc["audio_seconds"], abs=0.01)
        cropped = desc["audio_seconds"] > 6.0
        assert meta["cropped"] is cropped
        assert wave.shape[0] / 16_000 == pytest.approx(6.0 if cropped else desc["audio_seconds"], abs=0.01)
        assert meta["seconds"] == pytest.approx(wave.shape[0] / 16_000, abs=1e-3)
        seen_rates.add((meta["original_rate"], meta["original_channels"]))
    assert {(48000, 1), (8000, 1), (44100, 2)} <= seen_rates
    assert any(desc["audio_seconds"] > 6.0 for desc, _, _ in real)


def test_held_out_split_takes_whole_images_disjoint_from_training(prep_reference):
    out = prep_reference.dir
    held = {k for s in _samples(out / "heldout" / "shard-heldout-index.json") for k in [s["__key__"]]}
    train = {s["__key__"] for s in _samples(out / "shard-index.json")}
    assert held and not held & train
    image = lambda key: key.rsplit("_", 1)[0]  # noqa: E731
    assert not {image(k) for k in held} & {image(k) for k in train}
    index = json.loads((out / "heldout" / "shard-heldout-index.json").read_text())
    assert index["split"] == "heldout" and index["ninput"] >= 6
    assert all(s["url"].startswith("shard-heldout-") for s in index["shardlist"])


def test_verify_passes_then_names_the_shard_and_key_of_a_corrupted_sample(prep_reference, tmp_path):
    proc = run_cli(["opt-shards", "verify", str(prep_reference.dir), "--workers", "2"])
    assert proc.stdout.strip().splitlines()[-1].startswith("OK:")
    broken = tmp_path / "broken"
    shutil.copytree(prep_reference.dir, broken)
    shard = broken / "shard-000001.tar"
    data = bytearray(shard.read_bytes())
    import tarfile
    with tarfile.open(shard) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".jpg"))
    data[member.offset_data:member.offset_data + member.size] = bytes(member.size)  # same size, garbage JPEG
    shard.write_bytes(bytes(data))
    proc = run_cli(["opt-shards", "verify", str(broken / "shard-index.json")], check=False)
    assert proc.returncode == 1
    key = member.name.split(".")[0]
    assert f"shard shard-000001.tar key {key}: image does not decode" in proc.stdout
    assert "shard shard-000001.tar: sha256 mismatch" in proc.stdout


def test_failure_rate_over_the_limit_exits_nonzero_and_keeps_the_shards(prep_raw, tmp_path):
    out = tmp_path / "strict"
    proc = run_cli(prep_build_args(prep_raw, out, "--max-failure-rate", "0.1"), check=False)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "EXCEEDS --max-failure-rate" in proc.stdout
    assert json.loads((out / "shard-index.json").read_text())["nsamples"] > 0


def test_a_directory_holding_another_build_is_refused_unless_overwritten(prep_raw, prep_reference, tmp_path):
    out = tmp_path / "reused"
    shutil.copytree(prep_reference.dir, out)
    proc = run_cli(prep_build_args(prep_raw, out, "--samples-per-shard", "5"), check=False)
    assert proc.returncode == 2 and "--overwrite" in proc.stderr
    run_cli(prep_build_args(prep_raw, out, "--samples-per-shard", "5", "--overwrite"))
    index = json.loads((out / "shard-index.json").read_text())
    assert all(s["ninput"] <= 5 for s in index["shardlist"])
    numbers = sorted(int(p.name[6:12]) for p in out.glob("shard-0*.tar"))
    assert numbers == list(range(len(index["shardlist"])))  # no stale shard of the old numbering left
    held = json.loads((out / "heldout" / "shard-heldout-index.json").read_text())  # nor in the held-out directory
    assert sorted(p.name for p in (out / "heldout").glob("*.tar")) == sorted(s["url"] for s in held["shardlist"])


def test_inspect_writes_png_wav_caption_and_a_contact_sheet(prep_reference, tmp_path):
    run_cli(["opt-shards", "inspect", str(prep_reference.dir / "shard-000000.tar"), "--n", "3", "--out",
             str(tmp_path / "look")])
    look = tmp_path / "look"
    pngs = sorted(look.glob("*.png"))
    assert len(pngs) == 4 and (look / "contact_sheet.png").exists()
    # One playable WAV, caption and picture per sample (a glob over nothing would pass vacuously).
    keys = sorted(p.stem for p in pngs if p.name != "contact_sheet.png")
    assert sorted(p.stem for p in look.glob("*.wav")) == keys == sorted(p.stem for p in look.glob("*.txt"))
    for sample in iter_samples(str(prep_reference.dir / "shard-000000.tar"), limit=3):
        stored = sf.info(io.BytesIO(sample["flac"] if "flac" in sample else sample["wav"]))
        info = sf.info(str(look / f"{sample['__key__']}.wav"))
        assert info.samplerate == 16_000 and info.channels == 1 and info.frames == stored.frames > 0
    sheet = Image.open(tmp_path / "look" / "contact_sheet.png")
    assert sheet.size[0] >= 3 * 256


def test_every_option_of_every_subcommand_is_documented():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert set(sub.choices) == {"demo-data", "download", "build", "pairs", "index", "verify", "inspect",
                                "train-tokenizer"}
    for name, sp in sub.choices.items():
        assert sp.description, name
        for action in sp._actions:
            if action.dest != "help":
                assert action.help and action.help.strip(), f"{name} {action.option_strings or action.dest}"
    text = run_cli(["opt-shards", "build", "--help"]).stdout
    for flag in ("--holdout", "--num-jobs", "--job-index", "--max-failure-rate", "--open-images-csv", "--workers"):
        assert flag in text
