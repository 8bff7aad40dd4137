"""``opt-shards inspect``: look at a few samples as a person would.

Writes, per sample, ``<key>.png`` (the image), ``<key>.wav`` (the 16 kHz
audio) and ``<key>.txt`` (caption and metadata), plus ``contact_sheet.png``:
the images in a grid, each with its key, audio length and caption.
"""

from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path

import soundfile as sf
from PIL import Image, ImageDraw, ImageFont

from opt_scale.data.shard_reader import iter_samples

THUMB = 256
CAPTION_LINES = 5


def inspect_shard(shard: str, n: int, out: str | Path) -> list[Path]:
    """Export the first ``n`` samples of ``shard`` into ``out``; return the files written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    tiles: list[tuple[Image.Image, str]] = []
    for sample in iter_samples(shard, limit=n):
        key = sample["__key__"]
        audio_ext = next((e for e in ("flac", "wav", "ogg") if e in sample), None)
        if "txt" not in sample or ("jpg" not in sample and audio_ext is None):
            raise ValueError(f"{shard}: sample {key!r} lacks a txt member or both jpg and flac/wav/ogg: "
                             "not an opt-shards shard?")
        image = Image.new("RGB", (THUMB, THUMB), "lightgray")  # an audio-text pair's tile
        if "jpg" in sample:
            image = Image.open(io.BytesIO(sample["jpg"])).convert("RGB")
            image.save(out / f"{key}.png")
            written.append(out / f"{key}.png")
        seconds = "no audio"
        if audio_ext is not None:
            wave, rate = sf.read(io.BytesIO(sample[audio_ext]), dtype="int16")
            sf.write(out / f"{key}.wav", wave, rate, subtype="PCM_16")
            written.append(out / f"{key}.wav")
            seconds = f"{len(wave) / rate:.1f} s"
        caption = sample["txt"].decode("utf-8")
        meta = json.loads(sample["json"]) if "json" in sample else {}
        (out / f"{key}.txt").write_text(caption + "\n\n" + json.dumps(meta, indent=1, sort_keys=True) + "\n")
        written.append(out / f"{key}.txt")
        tiles.append((image, f"{key}  {seconds}\n{caption}"))
    if tiles:
        sheet = contact_sheet(tiles)
        sheet.save(out / "contact_sheet.png")
        written.append(out / "contact_sheet.png")
    return written


def contact_sheet(tiles: list[tuple[Image.Image, str]], columns: int = 4) -> Image.Image:
    font = ImageFont.load_default()
    line_h = 12
    text_h = line_h * (CAPTION_LINES + 1) + 6
    rows = (len(tiles) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * (THUMB + 8) + 8, rows * (THUMB + text_h + 8) + 8), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (image, text) in enumerate(tiles):
        x = 8 + (i % columns) * (THUMB + 8)
        y = 8 + (i // columns) * (THUMB + text_h + 8)
        scale = THUMB / max(image.size)  # small shard images are enlarged too, to be legible
        thumb = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.BICUBIC)
        sheet.paste(thumb, (x + (THUMB - thumb.width) // 2, y + (THUMB - thumb.height) // 2))
        head, _, caption = text.partition("\n")
        lines = [head] + textwrap.wrap(caption, width=THUMB // 6)[:CAPTION_LINES]
        for j, line in enumerate(lines):
            draw.text((x, y + THUMB + 4 + j * line_h), line, fill="black", font=font)
    return sheet
