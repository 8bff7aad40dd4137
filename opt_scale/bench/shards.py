"""Shard building throughput: ``opt-shards build`` end to end, in samples/s per core.

Generates realistic inputs once (cached under ``--work-dir``): JPEG photos of at
least 1024x768 (scikit-image's photos, upscaled and textured; synthetic scenes
when scikit-image is absent) and 30 s Ogg Vorbis voice recordings at 48 kHz
(espeak-ng speech plus room noise; tone words without espeak-ng), in the real
Localized Narratives layout. Then runs ``opt-shards build`` as a subprocess for
each ``--workers`` value and reports, end to end (startup and the input
pre-pass included):

* samples/s/core by CPU time: samples / CPU seconds of the build and all its
  workers. On a machine shared with other jobs this is the figure that
  does not depend on the neighbours, and the one compared with the target;
* samples/s and samples/s/core by wall clock (the latter = samples/s / workers).

``--stages`` adds a per-stage CPU cost breakdown (in-process) and a resampler
speed/quality comparison. ``--command`` runs another build command (e.g. an
older version) on the same inputs, for before/after comparisons.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .report import plot_lines, print_table

DISTINCT_MEDIA = 16  # distinct images/recordings; samples reuse them as separate files


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--samples", type=int, default=384, help="narratives (samples) in the generated input")
    p.add_argument("--workers", default="1,2", help="comma-separated --workers values to measure")
    p.add_argument("--samples-per-shard", type=int, default=32, help="passed to opt-shards build")
    p.add_argument("--image-short-side", type=int, default=384, help="passed to opt-shards build")
    p.add_argument("--audio-seconds", type=float, default=30.0, help="length of each generated recording")
    p.add_argument("--image-size", default="1024x768", help="WxH of the generated JPEGs (portrait ones are HxW)")
    p.add_argument("--work-dir", default="runs/bench/shards", help="inputs are cached here, outputs written here")
    p.add_argument("--extra-args", default="", help="extra arguments for opt-shards build (one string)")
    p.add_argument("--stages", action="store_true", help="also time each stage in-process and compare resamplers")
    p.add_argument("--target", type=float, default=25.0, help="samples/s/core goal, reported as met or missed")
    p.add_argument("--scan-lines", type=int, default=0, metavar="N",
                   help="also time the planning pre-pass on an N-line JSONL of realistic narratives (no media)")
    p.add_argument("--scan-line-kb", type=float, default=8.0, help="average size of those lines (mostly traces)")
    p.add_argument("--command", default="",
                   help="build command to time instead of this venv's `opt-shards` "
                   "(e.g. \"env -C /tmp PYTHONPATH=OLD_TREE python -m opt_scale.data_prep.cli\": not run "
                   "from the repository, whose opt_scale/ would shadow PYTHONPATH)")


def run(args: argparse.Namespace) -> dict:
    work = Path(args.work_dir).resolve()  # absolute: --command may run elsewhere
    width, height = (int(v) for v in args.image_size.lower().split("x"))
    inputs = ensure_inputs(work / f"inputs-{args.samples}-{args.image_size}-{args.audio_seconds:g}s",
                           args.samples, args.audio_seconds, (width, height))
    rows = []
    for workers in [int(w) for w in args.workers.split(",") if w.strip()]:
        rows.append(time_build(inputs, work / f"out-w{workers}", workers, args))
    print_table(rows, ["workers", "samples", "wall_s", "cpu_s", "samples_per_cpu_s", "shard_cpu_ms_per_sample",
                       "samples_per_s", "samples_per_s_per_core", "gb_written"],
                title=f"opt-shards build, {args.samples} x ({args.image_size} JPEG + "
                      f"{args.audio_seconds:g} s 48 kHz Vorbis)")
    best = max(r["samples_per_cpu_s"] for r in rows)
    verdict = "met" if best >= args.target else "MISSED"
    print(f"best samples/s/core (CPU time): {best:.1f} (target {args.target:g}: {verdict})")
    result = {"bench": "shards", "rows": rows, "target_samples_per_s_per_core": args.target,
              "best_samples_per_s_per_core": best, "config": vars(args) | {"module": None}}
    if args.scan_lines:
        result["scan"] = [scan_scaling(work / "scan", args.scan_lines, args.scan_line_kb, w)
                          for w in [int(w) for w in args.workers.split(",") if w.strip()]]
        print_table(result["scan"], ["workers", "lines", "gb", "wall_s", "cpu_s", "mb_per_cpu_s", "mb_per_s",
                                     "peak_rss_mb", "table_bytes_per_line"],
                    title="planning pre-pass (scan + duplicates + held-out split + shard plan), one job")
    if args.stages:
        result["stages"] = stage_costs(inputs)
        result["resamplers"] = compare_resamplers()
    if args.plot:
        plot_lines({"samples/s/core": ([r["workers"] for r in rows], [r["samples_per_s_per_core"] for r in rows])},
                   "workers", "samples/s/core", "opt-shards build throughput", args.plot,
                   targets={f"goal: {args.target:g}": args.target})
    return result


def time_build(inputs: Path, out: Path, workers: int, args: argparse.Namespace) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    program = shlex.split(args.command) if args.command else [_console_script("opt-shards")]
    cmd = [*program, "build", "--annotations", str(inputs / "annotations" / "*.jsonl"),
           "--images", str(inputs / "images"), "--audio", str(inputs / "recordings"), "--out", str(out),
           "--prefix", "bench", "--samples-per-shard", str(args.samples_per_shard),
           "--image-short-side", str(args.image_short_side)]
    if workers != 1:
        cmd += ["--workers", str(workers)]
    cmd += args.extra_args.split()
    cpu_before = _children_cpu()
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    cpu = _children_cpu() - cpu_before  # the build and its (waited-for) worker processes
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    index = json.loads((out / "bench-index.json").read_text())
    samples = sum(s["nsamples"] for s in index["shardlist"])
    # Steady state, from the sidecars: CPU spent inside shard building (no startup, no pre-pass).
    sidecars = [json.loads(p.read_text()) for p in out.glob("bench-*.stats.json")]
    shard_cpu = sum(s.get("cpu_seconds", 0.0) for s in sidecars)
    cores = min(workers, os.cpu_count() or 1)
    return {"workers": workers, "samples": samples, "wall_s": round(seconds, 2), "cpu_s": round(cpu, 2),
            "samples_per_cpu_s": round(samples / cpu, 2),
            "shard_cpu_ms_per_sample": round(shard_cpu / samples * 1000, 2) if shard_cpu else None,
            "samples_per_s": round(samples / seconds, 2),
            "samples_per_s_per_core": round(samples / seconds / cores, 2),
            "gb_written": round(sum(s["filesize"] for s in index["shardlist"]) / 1e9, 4)}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _console_script(name: str) -> str:
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


# ---------------------------------------------------------------- inputs

def ensure_inputs(root: Path, n: int, audio_seconds: float, size: tuple[int, int]) -> Path:
    """Write (once) ``n`` narratives with realistic media; reuse them when present."""
    stamp = root / "inputs.json"
    want = {"n": n, "audio_seconds": audio_seconds, "size": list(size), "version": 1}
    if stamp.exists() and json.loads(stamp.read_text()) == want:
        return root
    shutil.rmtree(root, ignore_errors=True)
    for sub in ("annotations", "images", "recordings/open_images_train"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    print(f"generating {n} benchmark inputs under {root} ...", flush=True)
    rng = np.random.default_rng(0)
    jpegs = [make_photo_jpeg(i, size, rng) for i in range(DISTINCT_MEDIA)]
    oggs = [make_recording_ogg(i, audio_seconds, rng) for i in range(DISTINCT_MEDIA)]
    lines = []
    for i in range(n):
        image_id = f"{rng.integers(1 << 63):016x}"
        annotator = int(rng.integers(1, 200))
        rel = f"open_images_train/open_images_train_{image_id}_{annotator}.ogg"
        (root / "images" / f"{image_id}.jpg").write_bytes(jpegs[i % DISTINCT_MEDIA])
        (root / "recordings" / rel).write_bytes(oggs[i % DISTINCT_MEDIA])
        caption = CAPTION
        words = caption.split()
        timed = [{"utterance": w, "start_time": round(k * audio_seconds / len(words), 3),
                  "end_time": round((k + 0.8) * audio_seconds / len(words), 3)} for k, w in enumerate(words)]
        trace = [{"x": round(float(x), 4), "y": round(float(y), 4), "t": round(float(t), 3)}
                 for x, y, t in rng.random((400, 3)) * [1, 1, audio_seconds]]
        lines.append(json.dumps({"dataset_id": "open_images", "image_id": image_id, "annotator_id": annotator,
                                 "caption": caption, "timed_caption": timed, "traces": [trace],
                                 "voice_recording": rel}))
    (root / "annotations" / "open_images_train_localized_narratives-00000-of-00001.jsonl").write_text(
        "\n".join(lines) + "\n")
    stamp.write_text(json.dumps(want))
    return root


CAPTION = ("In this image I can see a cup of coffee on a saucer and a spoon beside it. In the background I can "
           "see a wooden table, a window and a few plants. On the left there is a person holding a camera, and "
           "on the right I can see a red chair and some books on a shelf.")


def make_photo_jpeg(i: int, size: tuple[int, int], rng: np.random.Generator) -> bytes:
    from PIL import Image
    width, height = size if i % 4 else size[::-1]  # every fourth photo is portrait
    try:
        from skimage import data
        photo = [data.astronaut, data.coffee, data.chelsea, data.rocket][i % 4]()
        img = Image.fromarray(photo).resize((width, height), Image.Resampling.BICUBIC)
    except ImportError:
        from opt_scale.data_prep.demo_data import draw_specs, render_image
        img = render_image(draw_specs(i + 1, i)[-1], width, height)[0]
    # Camera-like sensor noise: upscaled photos are too smooth and compress too well.
    pixels = np.asarray(img, dtype=np.float32) + rng.normal(0, 4, (height, width, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def make_recording_ogg(i: int, seconds: float, rng: np.random.Generator, rate: int = 48_000) -> bytes:
    import soundfile as sf
    from scipy.signal import resample_poly
    speech, speech_rate = _speech(CAPTION, i)
    speech = resample_poly(speech, rate, speech_rate).astype(np.float32)
    total = int(seconds * rate)
    wave = np.resize(np.concatenate([speech, np.zeros(rate // 2, np.float32)]), total)  # repeat to length
    wave = 0.7 * wave + rng.normal(0, 0.005, total).astype(np.float32)  # room noise
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format="OGG", subtype="VORBIS")
    return buf.getvalue()


def _speech(text: str, i: int) -> tuple[np.ndarray, int]:
    import soundfile as sf
    if shutil.which("espeak-ng"):
        voice = ["en-us", "en-gb", "en-us+f3", "en-gb+m3"][i % 4]
        with subprocess.Popen(["espeak-ng", "-v", voice, "--stdout", text], stdout=subprocess.PIPE) as proc:
            raw = proc.stdout.read()
        wave, rate = sf.read(io.BytesIO(raw), dtype="float32")
        return wave, rate
    from opt_scale.data_prep.demo_data import tone_words
    return tone_words(text, np.random.default_rng(i)), 22050


# ---------------------------------------------------------------- stages

def stage_costs(inputs: Path, repeats: int = 8) -> list[dict]:
    """Milliseconds per sample for each build stage, measured in this process."""
    import hashlib

    import soundfile as sf

    from opt_scale.data_prep import media
    (ann,) = (inputs / "annotations").glob("*.jsonl")
    records = [json.loads(line) for line in ann.read_text().splitlines()[:repeats]]
    jpegs = [(inputs / "images" / f"{r['image_id']}.jpg").read_bytes() for r in records]
    oggs = [(inputs / "recordings" / r["voice_recording"]).read_bytes() for r in records]
    waves = [sf.read(io.BytesIO(o), dtype="float32")[0] for o in oggs]
    resampled = [media.resample_to_16k(w, 48_000) for w in waves]

    def per_sample(fn, items) -> float:  # CPU ms: robust to other jobs on the machine
        fn(items[0])
        started = time.process_time()
        for item in items:
            fn(item)
        return round((time.process_time() - started) / len(items) * 1000, 2)

    rows = [
        {"stage": "read JSON line + parse", "ms": per_sample(json.loads, ann.read_text().splitlines()[:repeats])},
        {"stage": "sha256 of sources", "ms": per_sample(lambda b: hashlib.sha256(b).hexdigest(),
                                                         [j + o for j, o in zip(jpegs, oggs)])},
        {"stage": "image: decode+rotate+resize+encode", "ms": per_sample(
            lambda raw: media.process_image(raw, short_side=384, quality=90), jpegs)},
        {"stage": "audio: Vorbis decode", "ms": per_sample(
            lambda raw: sf.read(io.BytesIO(raw), dtype="float32"), oggs)},
        {"stage": "audio: resample 48k->16k", "ms": per_sample(lambda w: media.resample_to_16k(w, 48_000), waves)},
        {"stage": "audio: FLAC encode", "ms": per_sample(
            lambda w: sf.write(io.BytesIO(), w, 16_000, format="FLAC", subtype="PCM_16"), resampled)},
        {"stage": "audio: whole process_audio", "ms": per_sample(
            lambda raw: media.process_audio(raw, max_seconds=60.0), oggs)},
    ]
    print_table(rows, ["stage", "ms"], title="CPU ms per sample, one core (in-process)")
    return rows


def compare_resamplers(seconds: float = 30.0, rate: int = 48_000) -> list[dict]:
    """Speed and quality of 48 kHz -> 16 kHz resampling: scipy polyphase vs soxr.

    Quality: a 1 kHz tone must come through unchanged (SNR against the exact
    16 kHz tone, edges excluded); tones above the new 8 kHz Nyquist must be
    removed, not folded back (alias level relative to a full-scale input).
    """
    from scipy.signal import resample_poly
    t_in = np.arange(int(seconds * rate)) / rate
    t_out = np.arange(int(seconds * 16_000)) / 16_000
    edge = 1600

    def tone(f, t):
        return (0.5 * np.sin(2 * np.pi * f * t)).astype(np.float32)

    candidates = {"scipy resample_poly (float32)": lambda x: resample_poly(x, 1, 3).astype(np.float32)}
    try:
        import soxr
        for q in ("HQ", "VHQ"):
            candidates[f"soxr {q}"] = lambda x, q=q: soxr.resample(x, rate, 16_000, quality=q)
    except ImportError:
        pass
    rows = []
    for name, fn in candidates.items():
        x = tone(1000, t_in)
        fn(x)
        started = time.process_time()
        for _ in range(3):
            y = fn(x)
        ms = (time.process_time() - started) / 3 * 1000
        ref = tone(1000, t_out[:len(y)])
        err = (y - ref)[edge:-edge]
        snr = 10 * np.log10(np.sum(ref[edge:-edge] ** 2) / max(np.sum(err ** 2), 1e-30))
        passband = 20 * np.log10(np.std(fn(tone(7000, t_in))[edge:-edge]) / np.std(tone(7000, t_out)))
        def alias_db(freqs) -> float:  # level of what folds back, relative to the full-scale tone
            return max(20 * np.log10(np.std(fn(tone(f, t_in))[edge:-edge]) * np.sqrt(2) / 0.5 + 1e-12) for f in freqs)
        rows.append({"resampler": name, "cpu_ms_per_30s": round(ms, 2), "snr_1khz_db": round(float(snr), 1),
                     "gain_7khz_db": round(float(passband), 2), "alias_8k5_db": round(float(alias_db([8_500])), 1),
                     "alias_10k_20k_db": round(float(alias_db([10_000, 15_000, 20_000])), 1)})
    print_table(rows, ["resampler", "cpu_ms_per_30s", "snr_1khz_db", "gain_7khz_db", "alias_8k5_db",
                       "alias_10k_20k_db"],
                title=f"resampling {seconds:g} s, {rate} Hz -> 16 kHz, float32")
    return rows


# ---------------------------------------------------------------- pre-pass scaling

def scan_scaling(root: Path, n: int, line_kb: float, workers: int) -> dict:
    """Time the pre-pass in a fresh process (so its peak RSS is the pre-pass's own)."""
    path = root / f"narratives-{n}-{line_kb:g}kb.jsonl"
    if not path.exists():
        root.mkdir(parents=True, exist_ok=True)
        print(f"writing {n} narratives to {path} ...", flush=True)
        rng = np.random.default_rng(1)
        points = max(1, int(line_kb * 1024 / 44))  # one {"x", "y", "t"} point is ~44 bytes of JSON
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            for i in range(n):
                image_id = f"{int(rng.integers(1 << 63)):016x}" if i % 5 else f"{(i // 5) * 7919:016x}"
                xyt = rng.random((points, 3))
                trace = [{"x": round(x, 4), "y": round(y, 4), "t": round(40 * t, 3)} for x, y, t in xyt.tolist()]
                f.write(json.dumps({"dataset_id": "open_images", "image_id": image_id, "annotator_id": i % 7,
                                    "caption": CAPTION, "timed_caption": [], "traces": [trace],
                                    "voice_recording": f"open_images_train/open_images_train_{image_id}_{i % 7}.ogg"})
                        + "\n")
        tmp.rename(path)
    code = f"from opt_scale.bench.shards import scan_child; scan_child({str(path)!r}, {workers})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    gb = path.stat().st_size / 1e9
    return {"workers": workers, "lines": got["lines"], "gb": round(gb, 3), "wall_s": round(got["seconds"], 2),
            "cpu_s": round(got["cpu"], 2), "mb_per_cpu_s": round(gb * 1000 / got["cpu"], 1),
            "mb_per_s": round(gb * 1000 / got["seconds"], 1),
            "peak_rss_mb": round(got["rss_mb"]), "table_bytes_per_line": round(got["bytes_per_line"], 1)}


def scan_child(path: str, workers: int) -> None:
    """Run in a fresh process by :func:`scan_scaling`: pre-pass one file, print figures as JSON."""
    from concurrent.futures import ProcessPoolExecutor

    from opt_scale.data_prep.input_scan import scan_inputs
    from opt_scale.data_prep.planning import HoldoutSpec, make_plan
    started = time.perf_counter()
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            table = scan_inputs([path], ("openimage5k",), map_fn=pool.map)
    else:
        table = scan_inputs([path], ("openimage5k",))
    plan = make_plan(table, 1000, [HoldoutSpec("openimage5k", 5000)], "p")
    seconds = time.perf_counter() - started
    cpu = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for f in ("ru_utime", "ru_stime"))
    arrays = [table.file_index, table.line_no, table.offset, table.length, table.valid, table.key_digest,
              table.image_digest, table.holdout_rank, plan.duplicate_of, plan.split_of]
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, i.e. it would report the (torch-sized) parent's.
    with open("/proc/self/status") as f:
        peak_kb = int(f.read().split("VmHWM:")[1].split()[0])
    print(json.dumps({"lines": len(table), "seconds": seconds, "cpu": cpu, "rss_mb": peak_kb / 1024,
                      "bytes_per_line": sum(a.nbytes for a in arrays) / len(table)}))
