"""Unit behaviour of the data_prep parts: records, jobs, media, tar writing."""

import io
import tarfile

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from opt_scale.data_prep.build import BuildConfigError, resolve_job
from opt_scale.data_prep.demo_inputs import png_header_only
from opt_scale.data_prep.media import MediaError, parse_rotation, process_audio, process_image
from opt_scale.data_prep.narratives import RecordError, parse_line
from opt_scale.data_prep.planning import HoldoutSpec
from opt_scale.data_prep.shard_writer import ShardWriter

GOOD = ('{"dataset_id": "open_images", "image_id": "0123456789abcdef", "annotator_id": 7, '
        '"caption": "a cat", "timed_caption": [], "traces": [], "voice_recording": "d/a.ogg"}')


@pytest.mark.parametrize("line, reason", [
    (b'{"dataset_id": "open_images", "image_id"', "invalid_json"),
    (GOOD.replace("a cat", "caf\u00e9").encode("latin-1"), "invalid_json"),
    ("[1, 2]", "invalid_json"),
    (GOOD.replace('"caption": "a cat", ', ""), "missing_field"),
    (GOOD.replace('"annotator_id": 7', '"annotator_id": "7"'), "bad_field_type"),
    (GOOD.replace('"annotator_id": 7', '"annotator_id": true'), "bad_field_type"),
    (GOOD.replace('"timed_caption": []', '"timed_caption": {}'), "bad_field_type"),
    (GOOD.replace("a cat", "  "), "empty_caption"),
    (GOOD.replace("d/a.ogg", "../x.ogg"), "unsafe_path"),
    (GOOD.replace("d/a.ogg", "/etc/passwd"), "unsafe_path"),
    (GOOD.replace("d/a.ogg", "d\\\\..\\\\x.ogg"), "unsafe_path"),
    (GOOD.replace("0123456789abcdef", "../0123456789ab"), "unsafe_path"),
    (GOOD.replace("0123456789abcdef", "0123456789ABCDEF"), "bad_image_id"),
    (GOOD.replace('"open_images"', '"ade20k"').replace("0123456789abcdef", "_meta"), "bad_image_id"),
])
def test_bad_records_get_their_reason(line, reason):
    with pytest.raises(RecordError) as err:
        parse_line(line)
    assert err.value.reason == reason


def test_good_record_parses_to_a_dot_free_key():
    rec = parse_line(GOOD.encode())
    assert rec.key == "0123456789abcdef_7" and rec.voice_recording == "d/a.ogg"
    coco = parse_line(GOOD.replace('"open_images"', '"coco_val"').replace('"0123456789abcdef"', "137576"))
    assert coco.key == "137576_7"


def test_slurm_array_ids_need_not_start_at_zero():
    env = {"SLURM_ARRAY_TASK_ID": "12", "SLURM_ARRAY_TASK_MIN": "10", "SLURM_ARRAY_TASK_COUNT": "4"}
    assert resolve_job(None, None, env) == (4, 2)
    stepped = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_STEP": "2",
               "SLURM_ARRAY_TASK_COUNT": "5"}
    assert resolve_job(None, None, stepped) == (5, 3)
    assert resolve_job(3, 1, env) == (3, 1)      # explicit flags win
    assert resolve_job(None, None, {}) == (1, 0)
    assert resolve_job(1, None, env) == (1, 0)   # a whole build inside one array task
    with pytest.raises(BuildConfigError, match="--job-index"):
        resolve_job(16, None, env)  # a partial resubmission: the array cannot say which of the 16 this is
    with pytest.raises(BuildConfigError):
        resolve_job(4, None, {})
    with pytest.raises(BuildConfigError):
        resolve_job(None, None, {**env, "SLURM_ARRAY_TASK_ID": "15"})  # ids not contiguous


def test_holdout_spec_parsing():
    assert HoldoutSpec.parse("openimage5k:5000") == HoldoutSpec("openimage5k", 5000)
    for bad in ("openimage5k", "x:0", "x:-1", "5k:10", "train:10", "a-b:3"):
        with pytest.raises(ValueError):
            HoldoutSpec.parse(bad)


def test_open_images_rotation_cells():
    assert [parse_rotation(v) for v in ("0.0", "90.0", "270", "", "nan", None, "45")] == [0, 90, 270, None, None,
                                                                                       None, None]


def _tone_ogg(freqs_by_channel, rate, seconds=2.0) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    wave = np.stack([0.4 * np.sin(2 * np.pi * f * t) for f in freqs_by_channel], axis=1).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format="FLAC")  # lossless input, so only our resampler is measured
    return buf.getvalue()


def _level_db(wave, rate, freq) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    bin_ = int(round(freq * len(wave) / rate))
    return 20 * np.log10(spectrum[bin_ - 2:bin_ + 3].max() / spectrum.max() + 1e-12)


def test_audio_is_downmixed_and_resampled_without_aliasing():
    # 44.1 kHz stereo: 1 kHz on the left, 12 kHz on the right. 12 kHz is above
    # the new 8 kHz Nyquist: a resampler without an anti-aliasing filter folds
    # it back to 16 - 12 = 4 kHz.
    result = process_audio(_tone_ogg([1000, 12000], 44100), max_seconds=0)
    wave, rate = sf.read(io.BytesIO(result.data))
    assert rate == 16000 and wave.ndim == 1 and result.original_channels == 2 and result.original_rate == 44100
    assert len(wave) == pytest.approx(2.0 * 16000, abs=2)
    assert _level_db(wave, rate, 1000) > -1
    assert _level_db(wave, rate, 4000) < -70


def test_audio_cap_crops_and_says_so():
    result = process_audio(_tone_ogg([440], 48000, seconds=3.0), max_seconds=1.25)
    wave, _ = sf.read(io.BytesIO(result.data))
    assert result.cropped and len(wave) == 20000 and result.seconds == 1.25
    assert result.original_seconds == pytest.approx(3.0)
    assert not process_audio(_tone_ogg([440], 48000, seconds=1.0), max_seconds=1.25).cropped


def test_bad_audio_and_bomb_images_are_media_errors_without_memory_addresses():
    with pytest.raises(MediaError) as err:
        process_audio(b"not audio at all" * 10, max_seconds=10)
    assert err.value.reason == "bad_audio" and " at 0x" not in err.value.detail
    with pytest.raises(MediaError) as err:
        process_image(png_header_only(20_000, 20_000), short_side=64, quality=90, max_pixels=10_000_000)
    assert err.value.reason == "image_too_large"


def test_image_is_shrunk_to_the_short_side_never_enlarged():
    buf = io.BytesIO()
    Image.new("RGB", (1000, 600), (10, 200, 30)).save(buf, format="JPEG")
    big = process_image(buf.getvalue(), short_side=150, quality=85)
    assert big.size == (250, 150) and big.original_size == (1000, 600)
    small = process_image(buf.getvalue(), short_side=2000, quality=85)
    assert small.size == (1000, 600)


def test_shard_writer_is_deterministic_contiguous_and_refuses_bad_keys(tmp_path):
    def write(path):
        with ShardWriter(path) as w:
            w.write("k1", {"txt": b"a", "jpg": b"xx"})
            w.write("k2", {"json": b"{}", "txt": b"b"})
            w.commit()
        return path.read_bytes()
    assert write(tmp_path / "a.tar") == write(tmp_path / "b.tar")
    with tarfile.open(tmp_path / "a.tar") as tar:
        infos = tar.getmembers()
    assert [i.name for i in infos] == ["k1.jpg", "k1.txt", "k2.json", "k2.txt"]
    assert {(i.mtime, i.uid, i.gid, i.uname) for i in infos} == {(0, 0, 0, "")}
    with ShardWriter(tmp_path / "c.tar") as w:
        for bad in ("a.b", "", "_meta", "x/y"):
            with pytest.raises(ValueError):
                w.write(bad, {"txt": b""})
        w.abort()
    assert list(tmp_path.glob("c.tar*")) == []


def test_oversized_media_files_are_failures_not_memory_blowups(tmp_path, monkeypatch):
    from opt_scale.data_prep import samples
    (tmp_path / "a.ogg").write_bytes(b"\0" * 4096)
    (tmp_path / "0123456789abcdef.jpg").write_bytes(b"\0" * 4096)
    monkeypatch.setattr(samples, "MAX_AUDIO_FILE_BYTES", 1024)
    monkeypatch.setattr(samples, "MAX_IMAGE_FILE_BYTES", 1024)
    with pytest.raises(RecordError) as err:
        samples.read_audio(str(tmp_path), "a.ogg")
    assert err.value.reason == "bad_audio"
    with pytest.raises(RecordError) as err:
        samples.read_image((str(tmp_path),), "0123456789abcdef")
    assert err.value.reason == "image_too_large"


def test_media_reads_only_regular_files_and_never_more_than_the_cap(tmp_path, monkeypatch):
    """st_size is no cap: a symlink to /dev/zero (size 0, endless) or a FIFO (blocks on open) must be
    refused, and a regular file whose size lies (procfs reports 0) read at most cap + 1 bytes."""
    import os
    from opt_scale.data_prep import samples
    image_id = "0123456789abcdef"
    os.symlink("/dev/zero", tmp_path / "zero.ogg")
    os.mkfifo(tmp_path / "fifo.ogg")
    os.symlink("/proc/self/status", tmp_path / "status.ogg")  # regular, st_size 0, ~1 KB of content
    monkeypatch.setattr(samples, "MAX_AUDIO_FILE_BYTES", 64)
    monkeypatch.setattr(samples, "MAX_IMAGE_FILE_BYTES", 64)
    for name, reason in (("zero.ogg", "bad_audio"), ("fifo.ogg", "bad_audio"), ("status.ogg", "bad_audio")):
        with pytest.raises(RecordError) as err:
            samples.read_audio(str(tmp_path), name)
        assert err.value.reason == reason, name
        assert ("not a regular file" in err.value.detail) == (name != "status.ogg"), err.value.detail
    os.symlink("/dev/zero", tmp_path / f"{image_id}.jpg")
    with pytest.raises(RecordError) as err:
        samples.read_image((str(tmp_path),), image_id)
    assert err.value.reason == "bad_image" and "not a regular file" in err.value.detail
    os.unlink(tmp_path / f"{image_id}.jpg")
    os.symlink("/proc/self/status", tmp_path / f"{image_id}.jpg")
    with pytest.raises(RecordError) as err:
        samples.read_image((str(tmp_path),), image_id)
    assert err.value.reason == "image_too_large"
    (tmp_path / "ok.ogg").write_bytes(b"x" * 64)               # exactly the cap: fine
    assert samples.read_audio(str(tmp_path), "ok.ogg") == b"x" * 64
    (tmp_path / "dir.jpg").mkdir()                             # a directory is no image: look further
    with pytest.raises(RecordError) as err:
        samples.read_image((str(tmp_path),), "dir")
    assert err.value.reason == "missing_image"


def _wav(wave, rate, subtype="PCM_16"):
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def test_audio_that_resamples_to_nothing_is_rejected_not_written_empty():
    one_frame = _wav(np.zeros(1, np.float32), 48_000)  # 1/48000 s: no 16 kHz sample left
    with pytest.raises(MediaError) as err:
        process_audio(one_frame, max_seconds=6)
    assert err.value.reason == "bad_audio" and "16 kHz" in err.value.detail
    assert process_audio(_wav(np.zeros(3, np.float32), 48_000), max_seconds=6).seconds > 0  # one sample is enough


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_audio_is_rejected_not_silenced(bad):
    wave = np.full(16_000, 0.25, np.float32)
    wave[100:200] = bad
    with pytest.raises(MediaError) as err:
        process_audio(_wav(wave, 16_000, "FLOAT"), max_seconds=6)
    assert err.value.reason == "bad_audio" and "100 non-finite" in err.value.detail


def test_a_utf8_bom_before_the_first_line_is_accepted():
    rec = parse_line(b"\xef\xbb\xbf" + GOOD.encode())
    assert rec.key == "0123456789abcdef_7"
    assert parse_line("\ufeff" + GOOD).key == rec.key
