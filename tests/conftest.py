"""Shared fixtures: a small demo data set, its shards and tokenizer, built
once per test session from data the project generates itself."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

# The Triton interpreter must be chosen before triton is first imported, and
# DeepSpeed's accelerator before deepspeed is: both decide at import time.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
# DeepSpeed JIT-builds a CPU communication op at start-up, cached by default in
# one directory shared by every virtualenv of the user; one cache per venv
# builds it once per test run instead of once per venv switch.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(sys.prefix, "torch_extensions"))

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def demo_raw(tmp_path_factory) -> Path:
    from opt_scale.data_prep.demo_data import write_demo_data
    out = tmp_path_factory.mktemp("demo_raw")
    write_demo_data(out, n=48, seed=1, workers=2, progress=False)
    return out


@pytest.fixture(scope="session")
def demo_shards(demo_raw, tmp_path_factory) -> Path:
    """Three shards of 16 samples (and their wids index)."""
    from opt_scale.data_prep.build import BuildOptions, build
    out = tmp_path_factory.mktemp("demo_shards")
    build(BuildOptions(annotations=[str(demo_raw / "annotations" / "*.jsonl")], image_root=str(demo_raw / "images"),
                       audio_root=str(demo_raw / "recordings"), out_dir=str(out), prefix="demo",
                       samples_per_shard=16, image_short_side=96))
    return out


@pytest.fixture(scope="session")
def mixed_shards(demo_raw, tmp_path_factory) -> Path:
    """Narratives, image-text pairs (a COCO captions JSON and an open_clip-style
    CSV) and audio-text pairs (a Clotho CSV) made from the demo data with
    `opt-shards pairs`, built into one shard set (mix-index.json, 102 samples)."""
    tmp = tmp_path_factory.mktemp("pairs")
    ann, coco, clotho, table = pair_corpora(demo_raw, tmp)
    for src, fmt, extra in ((coco, "coco", []), (clotho, "clotho", []),
                            (table, "csv", ["--image-key", "filepath", "--caption-key", "title"])):
        proc = run_cli(["opt-shards", "pairs", str(src), "--format", fmt, "--out", str(tmp / f"{fmt}.jsonl"), *extra])
        assert f"{fmt} pairs" in proc.stdout
    shards = tmp / "shards"
    pairs = [str(tmp / f"{f}.jsonl") for f in ("coco", "clotho", "csv")]
    run_cli(["opt-shards", "build", "--annotations", str(ann), *pairs,
             "--images", str(demo_raw / "images"), "--audio", str(demo_raw / "recordings"), "--out", str(shards),
             "--prefix", "mix", "--samples-per-shard", "32", "--image-short-side", "96", "--no-progress"], timeout=300)
    return shards


def pair_corpora(demo_raw, tmp_path) -> tuple:
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


@pytest.fixture(scope="session")
def demo_tokenizer(demo_shards, tmp_path_factory) -> Path:
    from opt_scale.data_prep.tokenizer_training import train_tokenizer
    out = tmp_path_factory.mktemp("tok") / "sp.model"
    return Path(train_tokenizer(str(demo_shards / "demo-index.json"), 128, str(out), model_type="bpe"))


@pytest.fixture(scope="session")
def demo_vq(demo_shards, demo_tokenizer, tmp_path_factory) -> Path:
    """A VQ tokenizer trained by `opt-train --task vq` (briefly) on the demo shards."""
    out = tmp_path_factory.mktemp("vq")
    run_cli(["opt-train", "--task", "vq", "--config", "tiny", "--set",
             f"data.train_shards={demo_shards / 'demo-index.json'}", f"data.tokenizer={demo_tokenizer}",
             f"train.out_dir={out}", "train.steps=6", "train.micro_batch_size=8", "data.num_workers=0",
             "train.log_every=2"], timeout=300)
    return out / "vq.safetensors"


@pytest.fixture(scope="session")
def trained_run(demo_shards, demo_tokenizer, demo_vq, tmp_path_factory) -> Path:
    """A 2-rank ZeRO-3 pre-training run (4 steps) shared by the tests that
    only read its outputs (checkpoint, TensorBoard, export, evaluation)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    overrides = [f"data.train_shards={demo_shards / 'demo-index.json'}", f"data.tokenizer={demo_tokenizer}",
                 f"model.vq.checkpoint={demo_vq}", f"train.out_dir={run}",
                 "train.log_every=1", "data.num_workers=1", "train.micro_batch_size=4", "train.checkpoint_every=0",
                 "train.steps=4", f"data.eval_shards={demo_shards / 'demo-index.json'}", "train.eval_every=4",
                 "train.eval_samples=8", "train.report_to=tensorboard,wandb,mlflow"]
    proc = run_cli(torchrun_args(2) + ["--config", "tiny", "--set", *overrides], timeout=600, env=OFFLINE_TRACKING)
    (run / "stdout.txt").write_text(proc.stdout)
    return run


# W&B without a network or an account (its files stay in the run directory);
# MLflow needs nothing: its file store in the run directory is the default.
OFFLINE_TRACKING = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}


def run_cli(args: list[str], timeout: float = 600, env: dict | None = None, check: bool = True,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run one of our console scripts (or python -m) from the test venv."""
    full_env = {**os.environ, **(env or {})}
    exe = args[0]
    if (BIN / exe).exists():
        args = [str(BIN / exe), *args[1:]]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=cwd or REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def sigterm_group_after_steps(args: list[str], run: Path, steps: int = 2, timeout: float = 400) -> tuple[str, int]:
    """Start ``args`` in a session of its own, wait until ``run``'s rank-0 sample log (train.log_samples)
    has ``steps`` steps, send SIGTERM to the whole process group, as scancel or a time limit does; its
    output (stdout and stderr) and exit code."""
    import signal
    import time
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        sample_log = run / "samples" / "rank0.jsonl"
        deadline = time.monotonic() + timeout
        while not (sample_log.exists() and len(sample_log.read_text().splitlines()) >= steps):
            assert proc.poll() is None, "the run ended before it could be signalled:\n" + proc.communicate()[0][-4000:]
            assert time.monotonic() < deadline, "the run did not reach its first steps"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return out, proc.returncode


def torchrun_args(nproc: int) -> list[str]:
    return [str(BIN / "torchrun"), "--standalone", f"--nproc_per_node={nproc}", str(BIN / "opt-train")]


@pytest.fixture
def tiny_overrides(demo_shards, demo_tokenizer, demo_vq, tmp_path) -> list[str]:
    return [f"data.train_shards={demo_shards / 'demo-index.json'}", f"data.tokenizer={demo_tokenizer}",
            f"model.vq.checkpoint={demo_vq}",
            f"train.out_dir={tmp_path / 'run'}", "train.log_every=1", "data.num_workers=1",
            "train.micro_batch_size=4", "train.checkpoint_every=0"]


def have(cmd: str) -> bool:
    return shutil.which(cmd) is not None


# ---- data_prep: a raw set with real photos, real speech and every kind of bad input, and its reference build

PREP_BUILD_ARGS = ["--samples-per-shard", "8", "--image-short-side", "64", "--max-audio-seconds", "6",
                   "--holdout", "heldout:6", "--max-failure-rate", "0.6", "--no-progress"]


@pytest.fixture(scope="session")
def prep_raw(tmp_path_factory) -> Path:
    """24 synthetic + real-media narratives (scikit-image photos, freedesktop/espeak speech) + bad inputs + CSV."""
    from opt_scale.data_prep.demo_data import write_demo_data
    from opt_scale.data_prep.demo_inputs import write_extras
    out = tmp_path_factory.mktemp("prep_raw")
    write_demo_data(out, n=24, seed=3, workers=2, progress=False)
    write_extras(out, real_media=8, bad_inputs=True, open_images_csv=True, seed=3)
    return out


def prep_build_args(raw: Path, out: Path, *extra: str) -> list[str]:
    from opt_scale.data_prep.demo_inputs import CSV_FILE
    return ["opt-shards", "build", "--annotations", str(raw / "annotations" / "*.jsonl"), "--images",
            str(raw / "images"), "--audio", str(raw / "recordings"), "--open-images-csv",
            str(raw / "annotations" / CSV_FILE), "--out", str(out), *PREP_BUILD_ARGS, *extra]


@pytest.fixture(scope="session")
def prep_reference(prep_raw, tmp_path_factory):
    """The uninterrupted single-process build every other build is compared with."""
    from types import SimpleNamespace
    out = tmp_path_factory.mktemp("prep_reference") / "shards"
    proc = run_cli(prep_build_args(prep_raw, out, "--workers", "1"))
    return SimpleNamespace(dir=out, stdout=proc.stdout, stderr=proc.stderr)


def build_outputs(out_dir: Path) -> dict[str, bytes]:
    """Every output file's bytes (held-out splits' subdirectories included),
    sidecars without their timing/host fields."""
    import json
    files = {}
    for p in sorted(out_dir.rglob("*")):
        name = str(p.relative_to(out_dir))
        if p.is_dir():
            files[name + "/"] = b""
        elif p.name.endswith(".stats.json"):
            stats = json.loads(p.read_text())
            for volatile in ("seconds", "cpu_seconds", "host"):
                stats.pop(volatile)
            files[name] = json.dumps(stats, sort_keys=True).encode()
        else:
            files[name] = p.read_bytes()
    return files
