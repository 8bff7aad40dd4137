"""Optional extras for ``opt-shards demo-data``: real media, bad inputs, an Open Images CSV.

* ``--real-media N``: narratives whose images are real photos (scikit-image's
  astronaut, coffee, chelsea, rocket) stored the ways real files come:
  baseline JPEG, EXIF-rotated, RGBA PNG, greyscale, CMYK, rotated per the
  CSV, large; and whose recordings are real speech (Debian's
  sound-theme-freedesktop, 48 kHz mono Vorbis) or espeak-ng speech at 8 kHz
  mono, 44.1 kHz stereo, or long enough to be cropped.
* ``--bad-inputs``: one narrative per kind of bad input the builder must
  reject with a reason (and never crash on), plus a blank line.
* ``--open-images-csv``: the Open Images image CSV for every image written.

Each extra writes its own annotation file next to the default one, and a
JSON description under ``extras/`` (what the tests compare against). The
default ``demo-data`` output is unchanged.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from .demo_data import ANNOTATION_FILE, DATASET_ID, RECORDING_DIR, timed_caption, tone_words

REAL_FILE = "open_images_demo_localized_narratives-real-media.jsonl"
BAD_FILE = "open_images_demo_localized_narratives-bad-inputs.jsonl"  # sorts after the default file
CSV_FILE = "open_images_demo-images-with-rotation.csv"
FREEDESKTOP = Path("/usr/share/sounds/freedesktop/stereo")
SPEECH_SOUNDS = ("audio-channel-front-left", "audio-channel-front-right", "audio-channel-front-center",
                 "audio-channel-rear-left", "audio-channel-rear-right", "audio-channel-side-left")
PHOTOS = {
    "astronaut": "In this image I can see a woman in a white space suit smiling, holding a helmet, with a flag "
                 "and a space shuttle model behind her.",
    "coffee": "In this picture I can see a cup of coffee with a spoon on a saucer on a red table.",
    "chelsea": "In this image I can see an orange cat with stripes looking to the side.",
    "rocket": "In this picture I can see a rocket standing on a launch pad under a clear blue sky.",
}
IMAGE_VARIANTS = ("jpeg", "exif6", "png_rgba", "gray_jpeg", "csv90", "large_jpeg", "cmyk_jpeg")
AUDIO_VARIANTS = ("freedesktop", "espeak_8k_mono", "espeak_44k_stereo", "espeak_long")


def write_extras(out: str | Path, real_media: int = 0, bad_inputs: bool = False, open_images_csv: bool = False,
                 seed: int = 0) -> dict[str, Path]:
    out = Path(out)
    (out / "extras").mkdir(exist_ok=True)
    written: dict[str, Path] = {}
    rng = np.random.default_rng([seed, 0xE7])
    real: dict[str, dict] = {}
    if real_media:
        real = write_real_media(out, real_media, rng)
        written["real media annotations"] = out / "annotations" / REAL_FILE
    if bad_inputs:
        expected = write_bad_inputs(out, rng)
        written["bad input annotations"] = out / "annotations" / BAD_FILE
        written["expected failures"] = out / "extras" / "expected_failures.json"
        (out / "extras" / "expected_failures.json").write_text(json.dumps(expected, indent=1, sort_keys=True))
    if open_images_csv:
        written["Open Images CSV"] = write_open_images_csv(out, real)
    return written


# ------------------------------------------------------------------ real media

def _new_id(rng: np.random.Generator) -> str:
    return f"{int(rng.integers(1 << 63)):016x}"


def _photo(name: str) -> Image.Image:
    try:
        from skimage import data
    except ImportError as exc:
        raise RuntimeError("--real-media needs scikit-image (pip install 'opt-scale[dev]')") from exc
    return Image.fromarray(getattr(data, name)()).convert("RGB")


def store_image(upright: Image.Image, variant: str, path_stem: Path) -> tuple[str, int | None]:
    """Write the photo as ``variant``; return (file name, CSV rotation in degrees ccw or None)."""
    if variant == "exif6":
        # EXIF 6 = "rotate 90 degrees clockwise to display": store the pixels turned counterclockwise.
        exif = Image.Exif()
        exif[0x0112] = 6
        upright.transpose(Image.Transpose.ROTATE_90).save(path_stem.with_suffix(".jpg"), quality=92, exif=exif)
        return path_stem.name + ".jpg", 270  # the CSV agrees; the builder must not rotate twice
    if variant == "png_rgba":
        rgba = upright.convert("RGBA")
        rgba.putalpha(255)
        rgba.save(path_stem.with_suffix(".png"))
        return path_stem.name + ".png", 0
    if variant == "gray_jpeg":
        upright.convert("L").save(path_stem.with_suffix(".jpg"), quality=92)
    elif variant == "csv90":
        # Open Images: Rotation = degrees counterclockwise to make the image upright.
        upright.transpose(Image.Transpose.ROTATE_270).save(path_stem.with_suffix(".jpg"), quality=92)
        return path_stem.name + ".jpg", 90
    elif variant == "large_jpeg":
        w, h = upright.size
        scale = 1024 / min(w, h)
        upright.resize((round(w * scale), round(h * scale)), Image.Resampling.BICUBIC).save(
            path_stem.with_suffix(".jpg"), quality=92)
    elif variant == "cmyk_jpeg":
        upright.convert("CMYK").save(path_stem.with_suffix(".jpg"), quality=92)
    else:
        upright.save(path_stem.with_suffix(".jpg"), quality=92)
    return path_stem.name + ".jpg", 0


def espeak(text: str, voice: str = "en-us") -> tuple[np.ndarray, int]:
    if shutil.which("espeak-ng"):
        proc = subprocess.run(["espeak-ng", "-v", voice, "--stdout", text], capture_output=True, check=True)
        wave, rate = sf.read(io.BytesIO(proc.stdout), dtype="float32")
        return wave, rate
    return tone_words(text, np.random.default_rng(len(text))), 22050


def make_recording(variant: str, caption: str, i: int) -> tuple[bytes, float]:
    """Ogg Vorbis bytes for one real-media narrative, and its duration."""
    from scipy.signal import resample_poly
    sounds = [FREEDESKTOP / f"{name}.oga" for name in SPEECH_SOUNDS]
    if variant == "freedesktop" and all(p.exists() for p in sounds):
        data = sounds[i % len(sounds)].read_bytes()
        return data, sf.info(io.BytesIO(data)).duration
    wave, rate = espeak(caption if variant != "espeak_long" else " ".join([caption] * 3))
    if variant == "espeak_8k_mono":
        wave, rate = resample_poly(wave, 8000, rate).astype(np.float32), 8000
    elif variant == "espeak_44k_stereo":
        wave = resample_poly(wave, 44100, rate).astype(np.float32)
        wave, rate = np.stack([wave, 0.6 * wave], axis=1), 44100
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format="OGG", subtype="VORBIS")
    return buf.getvalue(), len(wave) / rate


def write_real_media(out: Path, n: int, rng: np.random.Generator) -> dict[str, dict]:
    """``n`` images; every third also gets a second narrative (another annotator), as in the release."""
    (out / "recordings" / RECORDING_DIR).mkdir(parents=True, exist_ok=True)
    described: dict[str, dict] = {}
    lines = []
    names = list(PHOTOS)
    narratives = [(i, 0) for i in range(n)] + [(i, 1) for i in range(0, n, 3)]
    images: dict[int, tuple[str, str, int | None]] = {}
    for i, second in narratives:
        photo, image_variant = names[i % 4], IMAGE_VARIANTS[i % 7]
        audio_variant = AUDIO_VARIANTS[(i + second) % 4]
        annotator = int(rng.integers(1, 200)) + 200 * second  # distinct from the first narrative's
        upright = _photo(photo)
        if i not in images:
            image_id = _new_id(rng)
            images[i] = (image_id, *store_image(upright, image_variant, out / "images" / image_id))
        image_id, file_name, csv_rotation = images[i]
        caption = PHOTOS[photo]
        audio, seconds = make_recording(audio_variant, caption, i)
        rel = f"{RECORDING_DIR}/{RECORDING_DIR}_{image_id}_{annotator}.ogg"
        (out / "recordings" / rel).write_bytes(audio)
        wave, rate = sf.read(io.BytesIO(audio), dtype="float32")
        record = {"dataset_id": DATASET_ID, "image_id": image_id, "annotator_id": annotator, "caption": caption,
                  "timed_caption": timed_caption(caption, wave if wave.ndim == 1 else wave.mean(1), rate),
                  "traces": [[{"x": 0.5, "y": 0.5, "t": 0.0}]], "voice_recording": rel}
        lines.append(json.dumps(record))
        described[f"{image_id}_{annotator}"] = {
            "image_id": image_id, "photo": photo, "image_variant": image_variant, "image_file": file_name,
            "csv_rotation": csv_rotation, "upright_size": list(upright.size), "audio_variant": audio_variant,
            "audio_seconds": round(seconds, 3)}
    (out / "annotations" / REAL_FILE).write_text("\n".join(lines) + "\n")
    (out / "extras" / "real_media.json").write_text(json.dumps(described, indent=1, sort_keys=True))
    return described


# ------------------------------------------------------------------ bad inputs

def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that claims to be ``width`` x ``height``: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def write_bad_inputs(out: Path, rng: np.random.Generator) -> dict:
    """Append one line per bad-input kind; return {"reasons": {reason: count}, "cases": [...]}."""
    good_jpeg = io.BytesIO()
    _photo("coffee").save(good_jpeg, format="JPEG", quality=90)
    good_jpeg = good_jpeg.getvalue()
    good_ogg, _ = make_recording("espeak_8k_mono", "a good recording", 0)
    default_lines = (out / "annotations" / ANNOTATION_FILE).read_text().splitlines()
    cases: list[tuple[str, str, bytes]] = []  # (case, expected reason or "kept", line bytes)

    def record(image_id: str | None = None, image: bytes | None = good_jpeg, image_name: str | None = None,
               audio: bytes | None = good_ogg, **overrides) -> dict:
        image_id = image_id or _new_id(rng)
        annotator = int(rng.integers(1, 200))
        rel = f"{RECORDING_DIR}/{RECORDING_DIR}_{image_id}_{annotator}.ogg"
        if image is not None:
            (out / "images" / (image_name or f"{image_id}.jpg")).write_bytes(image)
        if audio is not None:
            (out / "recordings" / rel).write_bytes(audio)
        rec = {"dataset_id": DATASET_ID, "image_id": image_id, "annotator_id": annotator,
               "caption": "In this picture I can see a cup of coffee.", "timed_caption": [], "traces": [],
               "voice_recording": rel}
        rec.update(overrides)
        return rec

    def add(case: str, reason: str, rec_or_line) -> None:
        line = rec_or_line if isinstance(rec_or_line, bytes) else json.dumps(rec_or_line).encode()
        cases.append((case, reason, line))

    add("missing image", "missing_image", record(image=None))
    add("missing audio", "missing_audio", record(audio=None))
    add("truncated JPEG", "bad_image", record(image=good_jpeg[: len(good_jpeg) * 2 // 5]))
    add("not an image, named .jpg", "bad_image", record(image=b"<html>this is not a JPEG</html>\n" * 20))
    add("zero-byte OGG", "bad_audio", record(audio=b""))
    add("not audio, named .ogg", "bad_audio", record(audio=good_jpeg))
    bomb_id = _new_id(rng)
    add("decompression-bomb PNG", "image_too_large",
        record(image_id=bomb_id, image=png_header_only(40_000, 40_000), image_name=f"{bomb_id}.png"))
    add("truncated JSON", "invalid_json", json.dumps(record())[:57].encode())
    add("not UTF-8", "invalid_json", json.dumps(record()).encode().replace(b"coffee", b"caf\xe9"))
    add("JSON array, not object", "invalid_json", b'["open_images", "0123456789abcdef", 1]')
    add("missing field", "missing_field", {k: v for k, v in record().items() if k != "voice_recording"})
    add("annotator_id as string", "bad_field_type", record(annotator_id="17"))
    add("caption as number", "bad_field_type", record(caption=42))
    add("timed_caption not a list", "bad_field_type", record(timed_caption="In this picture"))
    add("image_id not hex", "bad_image_id", record(image_id="NOT-A-HEX-ID"))
    add("voice_recording with ..", "unsafe_path", record(voice_recording="../../../etc/passwd"))
    add("voice_recording absolute", "unsafe_path", record(voice_recording="/etc/passwd"))
    add("image_id with ../", "unsafe_path", record(image_id="../images/0123456789abcdef", image=None, audio=None))
    empty = record(caption="   ")
    add("empty caption", "empty_caption", empty)
    # A valid copy of the key whose first line was invalid: the valid one is kept.
    add("valid line after an invalid one with its key", "kept",
        {**empty, "caption": "In this picture I can see a cup of coffee on a table."})
    add("duplicate of a default demo line", "duplicate", default_lines[0].encode())
    # Audio whose samples the builder must not turn into a silent or empty track.
    add("one frame at 48 kHz: nothing left at 16 kHz", "bad_audio", record(audio=_wav(np.zeros(1), 48_000)))
    nan_wave = np.full(8000, 0.25)
    nan_wave[1000:1100] = np.nan
    add("NaN audio samples", "bad_audio", record(audio=_wav(nan_wave, 16_000, "FLOAT")))
    # A key whose first valid line fails on its media (no recording): its later line builds and is kept.
    broken_first = record(audio=None)
    later = {**broken_first, "voice_recording": broken_first["voice_recording"].replace(".ogg", "-again.ogg")}
    (out / "recordings" / later["voice_recording"]).write_bytes(good_ogg)
    first_line = ("valid line whose media fail, before a copy that builds", "missing_audio",
                  json.dumps(broken_first).encode())
    cases.insert(1, first_line)  # far from its copy: another shard
    add("a copy after one that failed on its media", "kept", later)
    # Editors may start a file with a UTF-8 byte-order mark: its first line is kept.
    bom = ("first line after a UTF-8 byte-order mark", "kept", b"\xef\xbb\xbf" + json.dumps(record()).encode())
    lines = [line for _, _, line in cases]
    lines.insert(len(lines) // 2, b"   ")  # a blank line: skipped, not a failure
    lines.insert(0, bom[2])
    cases.insert(0, bom)
    (out / "annotations" / BAD_FILE).write_bytes(b"\n".join(lines) + b"\n")
    reasons: dict[str, int] = {}
    for _, reason, _ in cases:
        if reason != "kept":
            reasons[reason] = reasons.get(reason, 0) + 1
    return {"reasons": reasons, "kept": sum(r == "kept" for _, r, _ in cases),
            "cases": [{"case": c, "reason": r} for c, r, _ in cases]}


def _wav(wave: np.ndarray, rate: int, subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave.astype(np.float32), rate, format="WAV", subtype=subtype)
    return buf.getvalue()


# ------------------------------------------------------------------ Open Images CSV

def write_open_images_csv(out: Path, real: dict[str, dict]) -> Path:
    """One row per image under images/, with the 12 columns of the real release."""
    rotation_by_id = {d["image_id"]: d["csv_rotation"] for d in real.values()}
    path = out / "annotations" / CSV_FILE
    from .open_images_csv import COLUMNS
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for image in sorted((out / "images").iterdir()):
            image_id = image.stem
            data = image.read_bytes()
            # Real CSVs leave Rotation empty where it could not be recovered.
            rotation = rotation_by_id.get(image_id, None if image_id[0] in "01" else 0)
            writer.writerow([image_id, "train", f"https://example.org/photos/{image_id}_o.jpg",
                             f"https://example.org/photos/{image_id}",
                             "https://creativecommons.org/licenses/by/2.0/",
                             "https://example.org/people/opt-scale-demo/",
                             "scikit-image sample data" if image_id in rotation_by_id else "opt-scale demo",
                             f"Demo image, \"{image_id[:4]}\"", len(data),
                             base64.b64encode(hashlib.md5(data).digest()).decode(), "",
                             f"{float(rotation):.1f}" if rotation is not None else ""])
    return path
