"""The built-in demo data set and its derived assets, made on demand.

``python -m opt_scale.demo prepare --dir runs/demo`` writes (or reuses):
demo data in the Localized Narratives layout, shards, a SentencePiece
tokenizer and a VQ image tokenizer. ``make demo`` and ``opt-bench learning``
build on it. Each step is skipped when its output is already complete.

``--input DIR`` runs the same recipe on any data in the Localized Narratives
layout instead of the generated demo data: ``DIR/annotations.jsonl`` (or
several ``*.jsonl`` under ``DIR/annotations/``), images under ``DIR/images``
and recordings under ``DIR/audio`` (what ``voice_recording`` is relative to).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ANNOTATIONS = "raw/annotations/open_images_demo_localized_narratives-00000-of-00001.jsonl"


@dataclass(frozen=True)
class DemoAssets:
    root: Path

    @property
    def shards(self) -> Path:
        return self.root / "shards" / "demo-index.json"

    @property
    def heldout(self) -> Path:
        """Samples of 64 images never trained on (``--holdout heldout:64``)."""
        return self.root / "shards" / "heldout" / "demo-heldout-index.json"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer.model"

    @property
    def vq(self) -> Path:
        return self.root / "vq" / "vq.safetensors"

    @property
    def lengths(self) -> Path:
        """Text and audio lengths sized from the data (see :func:`size_from_data`)."""
        return self.root / "lengths.json"

    def overrides(self) -> list[str]:
        """Config overrides that point a run at these assets and size it to their data."""
        sized = json.loads(self.lengths.read_text()) if self.lengths.is_file() else {}
        return [f"data.train_shards={self.shards}", f"data.tokenizer={self.tokenizer}",
                f"model.vq.checkpoint={self.vq}", *(f"{k}={v}" for k, v in sized.items())]


def _say(msg: str) -> None:
    print(f"== {msg}", flush=True)


@dataclass(frozen=True)
class RawInput:
    """Narratives in the Localized Narratives layout: annotation files, image and recording roots."""
    annotations: list[str]
    images: Path
    audio: Path

    @classmethod
    def from_dir(cls, directory: str | Path) -> "RawInput":
        d = Path(directory)
        files = [d / "annotations.jsonl"] if (d / "annotations.jsonl").is_file() else sorted(
            (d / "annotations").glob("*.jsonl"))
        if not files:
            raise SystemExit(f"--input {d}: no annotations.jsonl (nor annotations/*.jsonl) in it")
        for sub in ("images", "audio"):
            if not (d / sub).is_dir():
                raise SystemExit(f"--input {d}: no {sub}/ directory in it")
        return cls([str(f) for f in files], d / "images", d / "audio")


def _demo_input(assets: DemoAssets, n: int, seed: int) -> RawInput:
    """The generated demo data (written once, reused while it has ``n`` narratives)."""
    from opt_scale.data_prep.demo_data import write_demo_data
    ann = assets.root / ANNOTATIONS
    if not ann.is_file() or sum(1 for _ in open(ann)) != n:
        _say(f"demo data: {n} image-text-audio triplets -> {assets.root / 'raw'}")
        for stale in ("raw", "shards", "vq"):
            subprocess.run(["rm", "-rf", str(assets.root / stale)], check=True)
        assets.tokenizer.unlink(missing_ok=True)
        write_demo_data(assets.root / "raw", n, seed=seed)
    else:
        _say(f"demo data: reusing {assets.root / 'raw'}")
    return RawInput([str(ann)], assets.root / "raw/images", assets.root / "raw/recordings")


def prepare(root: str | Path, n: int = 512, vq_steps: int = 300, seed: int = 0, input_dir: str | None = None,
            holdout: int = 64) -> DemoAssets:
    """Make (or reuse) the demo's assets under ``root``. Two callers at once
    (two `opt-bench learning` runs, a demo beside a benchmark) take turns on
    a lock in ``root``: run together, both rebuilt the shards and one failed
    renaming the other's temporary file."""
    import fcntl
    Path(root).mkdir(parents=True, exist_ok=True)
    with open(Path(root) / ".prepare.lock", "w") as lock:
        try:
            fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            _say(f"waiting for another process preparing {root}")
            fcntl.lockf(lock, fcntl.LOCK_EX)
        return _prepare(root, n, vq_steps, seed, input_dir, holdout)


def _prepare(root: str | Path, n: int, vq_steps: int, seed: int, input_dir: str | None,
             holdout: int) -> DemoAssets:
    from opt_scale.data_prep.build import BuildOptions, build
    from opt_scale.data_prep.tokenizer_training import train_tokenizer

    assets = DemoAssets(Path(root))
    raw = RawInput.from_dir(input_dir) if input_dir else _demo_input(assets, n, seed)
    _say(f"shards -> {assets.shards.parent}")
    result = build(BuildOptions(annotations=raw.annotations, image_root=str(raw.images),
                                audio_root=str(raw.audio), out_dir=str(assets.shards.parent),
                                prefix="demo", samples_per_shard=64, image_short_side=128, workers=2,
                                holdouts=[f"heldout:{holdout}"], progress=False,
                                overwrite=True))  # the demo's own directory: another input replaces the shards
    splits = ", ".join(f"{name} {c['samples']}" for name, c in sorted(result.per_split.items()))
    print(f"   samples: {splits} ({result.shards_skipped} of {result.shards_built + result.shards_skipped} "
          f"shards were already built)")
    build_id = json.loads(assets.shards.read_text())["build_id"]
    # The tokenizer and the VQ tokenizer are retrained when the shards they
    # were made from change (another --input, --n or --holdout): each keeps
    # the build id of its shards beside it.
    if not _made_from(assets.tokenizer, build_id):
        _say(f"SentencePiece tokenizer -> {assets.tokenizer}")
        # BPE: on a few hundred near-identical captions unigram stops at ~55
        # character-like pieces. BPE runs out of merges before 1000 pieces on
        # such a corpus: every word becomes one piece (128 pieces split the
        # words of another scene set into letters).
        train_tokenizer(str(assets.shards), 1000, str(assets.tokenizer), model_type="bpe")
        _stamp(assets.tokenizer, build_id)
        assets.lengths.unlink(missing_ok=True)
    else:
        _say(f"SentencePiece tokenizer: reusing {assets.tokenizer}")
    if not assets.lengths.is_file():
        sized = size_from_data(assets.shards, assets.tokenizer)
        assets.lengths.write_text(json.dumps(sized, indent=1) + "\n")
        _say("sized to the data (99% of captions and recordings fit): "
             + ", ".join(f"{k}={v}" for k, v in sized.items()))
    # Also retrained when trained for other steps (its final checkpoint names the step).
    if not (_made_from(assets.vq, build_id) and (assets.vq.parent / "checkpoints" / f"step_{vq_steps:08d}").is_dir()):
        _say(f"VQ image tokenizer (the MVM/DIR targets): {vq_steps} steps -> {assets.vq.parent}")
        subprocess.run(["rm", "-rf", str(assets.vq.parent)], check=True)
        cmd = [sys.executable, "-m", "opt_scale.cli.train", "--task", "vq", "--config", "tiny", "--set",
               f"data.train_shards={assets.shards}", f"data.tokenizer={assets.tokenizer}",
               f"data.eval_shards={assets.heldout}", f"train.out_dir={assets.vq.parent}", f"train.steps={vq_steps}",
               "train.micro_batch_size=32", "train.lr=2e-3", "train.warmup_steps=10", "train.log_every=20",
               "data.num_workers=1",
               # No gradient clipping: clipped at norm 1 the tokenizer reached 19.5 dB held-out
               # PSNR in 300 steps, 21.1 dB without.
               "train.grad_clip=0"]
        subprocess.run(cmd, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        _stamp(assets.vq, build_id)
    else:
        _say(f"VQ image tokenizer: reusing {assets.vq}")
    return assets


def size_from_data(shards: Path, tokenizer: Path, quantile: float = 0.99) -> dict:
    """``model.text.max_len`` and ``model.audio.max_seconds`` that fit
    ``quantile`` of the training captions and recordings: a caption cut
    short, or a recording cropped, loses exactly the words at its end (the
    demo's position and background; another data set's second object).
    Text in steps of 8 tokens (at least 16, at most 128), audio in half
    seconds (at most 15 s)."""
    import numpy as np

    from opt_scale.data.shard_reader import iter_samples
    from opt_scale.data.sources import resolve_shards
    from opt_scale.data.tokenizer import Tokenizer
    tok = Tokenizer(str(tokenizer))
    tokens, seconds = [], []
    for shard in resolve_shards(str(shards)):
        for sample in iter_samples(shard.url, extensions={"txt", "json"}):
            tokens.append(len(tok.encode(sample["txt"].decode("utf-8").strip(), 10_000)))
            seconds.append(float(json.loads(sample["json"]).get("audio", {}).get("seconds", 0.0)))
    text = int(min(128, max(16, 8 * np.ceil(np.quantile(tokens, quantile) / 8))))
    audio = float(min(15.0, max(1.0, np.ceil(2 * np.quantile(seconds, quantile)) / 2)))
    return {"model.text.max_len": text, "model.audio.max_seconds": audio}


def _stamp_path(asset: Path) -> Path:
    return asset.with_name(asset.name + ".shards-build")


def _made_from(asset: Path, build_id: str) -> bool:
    stamp = _stamp_path(asset)
    return asset.is_file() and stamp.is_file() and stamp.read_text().strip() == build_id


def _stamp(asset: Path, build_id: str) -> None:
    _stamp_path(asset).write_text(build_id + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m opt_scale.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    pp = sub.add_parser("prepare", help="make (or reuse) the demo data, shards, tokenizer and VQ tokenizer")
    pp.add_argument("--dir", default="runs/demo", help="where the demo assets live (default: runs/demo)")
    pp.add_argument("--n", type=int, default=512, help="number of triplets (default: 512)")
    pp.add_argument("--vq-steps", type=int, default=300,
                    help="VQ tokenizer training steps (default: 300; fewer leave its reconstructions grey)")
    pp.add_argument("--input", default=None, metavar="DIR",
                    help="use these narratives instead of generating the demo data: DIR/annotations.jsonl, "
                         "DIR/images/, DIR/audio/ (the Localized Narratives layout)")
    pp.add_argument("--holdout", type=int, default=64,
                    help="narratives held out for evaluation, by the builder's image hash (default: 64)")
    po = sub.add_parser("overrides", help="print, one per line, the config overrides that point a run at the "
                                          "prepared assets and size it to their data")
    po.add_argument("--dir", default="runs/demo", help="where the demo assets live (default: runs/demo)")
    args = p.parse_args(argv)
    if args.command == "overrides":
        assets = DemoAssets(Path(args.dir))
        if not assets.shards.is_file():
            print(f"no prepared assets in {args.dir}: run 'python -m opt_scale.demo prepare --dir {args.dir}' first",
                  file=sys.stderr)
            return 2
        print("\n".join(assets.overrides()))
        return 0
    assets = prepare(args.dir, args.n, args.vq_steps, input_dir=args.input, holdout=args.holdout)
    print("overrides: " + " ".join(assets.overrides()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
