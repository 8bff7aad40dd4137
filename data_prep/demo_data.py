"""``opt-shards demo-data``: a small, learnable data set in the real layout.

Each sample is a coloured shape on a background. The caption names the size,
colour, shape, position and background; the voice recording says the same
words (espeak-ng speech when installed, otherwise one distinct tone chord per
word), so image, text and audio share content and a model that learns shows
it. Files follow the Localized Narratives release exactly: one JSON Lines
annotation file with the real schema, ``<image_id>.jpg`` images, and Ogg
Vorbis recordings at the relative path the ``voice_recording`` field names.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image, ImageDraw

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
          "yellow": (235, 210, 40), "purple": (140, 60, 180), "orange": (245, 140, 30)}
BACKGROUNDS = {"gray": (128, 128, 128), "white": (245, 245, 245), "black": (20, 20, 20)}
SHAPES = ("circle", "square", "triangle", "diamond")
POSITIONS = {"left": (0.27, 0.5), "right": (0.73, 0.5), "top": (0.5, 0.27), "bottom": (0.5, 0.73),
             "middle": (0.5, 0.5)}
SIZES = {"small": 0.16, "large": 0.3}
DATASET_ID = "open_images"
RECORDING_DIR = "open_images_demo"
ANNOTATION_FILE = "open_images_demo_localized_narratives-00000-of-00001.jsonl"


@dataclass(frozen=True)
class DemoSpec:
    index: int
    image_id: str
    annotator_id: int
    size: str
    color: str
    shape: str
    position: str
    background: str
    voice_seed: int

    @property
    def caption(self) -> str:
        return (f"In this image I can see a {self.size} {self.color} {self.shape} "
                f"on the {self.position} of a {self.background} background.")


def draw_specs(n: int, seed: int) -> list[DemoSpec]:
    rng = np.random.default_rng(seed)
    specs = []
    for i in range(n):
        specs.append(DemoSpec(
            index=i,
            image_id="".join(rng.choice(list("0123456789abcdef"), 16)),
            annotator_id=int(rng.integers(1, 120)),
            size=str(rng.choice(list(SIZES))),
            color=str(rng.choice(list(COLORS))),
            shape=str(rng.choice(SHAPES)),
            position=str(rng.choice(list(POSITIONS))),
            background=str(rng.choice(list(BACKGROUNDS))),
            voice_seed=int(rng.integers(1 << 31)),
        ))
    return specs


def render_image(spec: DemoSpec, width: int = 320, height: int = 240) -> tuple[Image.Image, list[tuple[float, float]]]:
    """Draw the shape; return the image and its outline (normalised x, y)."""
    rng = np.random.default_rng(spec.voice_seed)
    bg = np.array(BACKGROUNDS[spec.background], dtype=np.float32)
    noise = rng.normal(0, 6, size=(height, width, 3))
    img = Image.fromarray(np.clip(bg + noise, 0, 255).astype(np.uint8))
    cx, cy = POSITIONS[spec.position]
    cx += rng.uniform(-0.05, 0.05)
    cy += rng.uniform(-0.05, 0.05)
    r = SIZES[spec.size] * min(width, height) * rng.uniform(0.9, 1.1)
    x, y = cx * width, cy * height
    if spec.shape == "circle":
        angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        outline = [(x + r * np.cos(a), y + r * np.sin(a)) for a in angles]
    elif spec.shape == "square":
        outline = [(x - r, y - r), (x + r, y - r), (x + r, y + r), (x - r, y + r)]
    elif spec.shape == "triangle":
        outline = [(x, y - r), (x + r, y + r * 0.8), (x - r, y + r * 0.8)]
    else:  # diamond
        outline = [(x, y - r), (x + r, y), (x, y + r), (x - r, y)]
    draw = ImageDraw.Draw(img)
    if spec.shape == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=COLORS[spec.color])
    else:
        draw.polygon(outline, fill=COLORS[spec.color])
    return img, [(px / width, py / height) for px, py in outline]


def speak(spec: DemoSpec) -> tuple[np.ndarray, int]:
    """Speech from espeak-ng when installed, else one tone chord per word."""
    rng = np.random.default_rng(spec.voice_seed)
    if shutil.which("espeak-ng"):
        voice = str(rng.choice(["en-us", "en-gb", "en-us+f3", "en-gb+m3", "en-us+f2"]))
        speed, pitch = int(rng.integers(160, 200)), int(rng.integers(30, 70))
        with tempfile.TemporaryDirectory() as tmp:
            wav = os.path.join(tmp, "speech.wav")
            subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", wav,
                            spec.caption], check=True, capture_output=True)
            wave, rate = sf.read(wav, dtype="float32")
        return wave, rate
    return tone_words(spec.caption, rng), 22050


def tone_words(caption: str, rng: np.random.Generator, rate: int = 22050) -> np.ndarray:
    """Fallback voice: each word is a chord whose pitches are a hash of the word."""
    parts = []
    for word in caption.lower().strip(".").split():
        h = int.from_bytes(word.encode()[:8].ljust(8, b"_"), "little")
        freqs = [220 * 2 ** (((h >> (5 * k)) % 24) / 12) for k in range(3)]
        t = np.arange(int(0.22 * rate)) / rate
        chord = sum(np.sin(2 * np.pi * f * t) for f in freqs) / 3
        env = np.minimum(1, np.minimum(t, t[::-1]) / 0.02)
        parts += [0.5 * chord * env, np.zeros(int(0.06 * rate))]
    wave = np.concatenate(parts).astype(np.float32)
    return wave + rng.normal(0, 0.003, len(wave)).astype(np.float32)


def timed_caption(caption: str, wave: np.ndarray, rate: int) -> list[dict]:
    """Spread words over the voiced span in proportion to their length."""
    energy = np.abs(wave)
    voiced = np.flatnonzero(energy > 0.02 * (energy.max() + 1e-9))
    start, end = (voiced[0] / rate, voiced[-1] / rate) if len(voiced) else (0.0, len(wave) / rate)
    words = caption.split()
    weights = np.array([len(w) + 1 for w in words], dtype=np.float64)
    edges = start + (end - start) * np.concatenate([[0], np.cumsum(weights) / weights.sum()])
    return [{"utterance": w, "start_time": round(float(a), 3), "end_time": round(float(b), 3)}
            for w, a, b in zip(words, edges[:-1], edges[1:])]


def make_one(args: tuple[DemoSpec, str]) -> str:
    spec, out = args
    out_dir = Path(out)
    img, outline = render_image(spec)
    img.save(out_dir / "images" / f"{spec.image_id}.jpg", quality=92)
    wave, rate = speak(spec)
    rng = np.random.default_rng(spec.voice_seed + 1)
    # Real recordings vary in rate and channel count: exercise the resampler
    # and the downmix by storing some as 48 kHz stereo.
    if rng.random() < 0.5:
        from scipy.signal import resample_poly
        wave = resample_poly(wave, 160, 147).astype(np.float32)  # 22.05 -> 24 kHz
        wave = resample_poly(wave, 2, 1).astype(np.float32)      # -> 48 kHz
        rate = 48000
        wave = np.stack([wave, 0.8 * wave], axis=1)
    mono = wave if wave.ndim == 1 else wave.mean(axis=1)
    rel = f"{RECORDING_DIR}/{RECORDING_DIR}_{spec.image_id}_{spec.annotator_id}.ogg"
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format="OGG", subtype="VORBIS")
    (out_dir / "recordings" / rel).write_bytes(buf.getvalue())
    t_caption = timed_caption(spec.caption, mono, rate)
    t_shape = next((u for u in t_caption if u["utterance"] == spec.shape), t_caption[-1])
    times = np.linspace(t_shape["start_time"], t_shape["end_time"], len(outline) + 1)
    trace = [{"x": round(x, 4), "y": round(y, 4), "t": round(float(t), 3)}
             for (x, y), t in zip(outline + outline[:1], times)]
    record = {"dataset_id": DATASET_ID, "image_id": spec.image_id, "annotator_id": spec.annotator_id,
              "caption": spec.caption, "timed_caption": t_caption, "traces": [trace],
              "voice_recording": rel}
    return json.dumps(record)


def write_demo_data(out: str | os.PathLike, n: int, seed: int = 0, workers: int | None = None,
                    progress: bool = True) -> Path:
    """Write ``n`` triplets under ``out``; return the annotation file path."""
    out_dir = Path(out)
    for sub in ("annotations", "images", f"recordings/{RECORDING_DIR}"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    specs = draw_specs(n, seed)
    workers = workers or min(4, os.cpu_count() or 1)
    jobs = [(s, str(out_dir)) for s in specs]
    from tqdm import tqdm
    with ProcessPoolExecutor(workers) as pool:
        lines = list(tqdm(pool.map(make_one, jobs, chunksize=8), total=n, desc="demo data",
                          unit="sample", disable=not progress))
    ann = out_dir / "annotations" / ANNOTATION_FILE
    tmp = ann.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in lines))
    os.replace(tmp, ann)
    return ann
