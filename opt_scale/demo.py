"""The built-in demo data set and its derived assets, made on demand.

``python -m opt_scale.demo prepare --dir runs/demo`` writes (or reuses):
demo data in the Localized Narratives layout, shards, a SentencePiece
tokenizer and a VQ image tokenizer. ``make demo`` and ``opt-bench learning``
build on it. Each step is skipped when its output is already complete.
"""

from __future__ import annotations

import argparse
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
        return self.root / "shards" / "demo-heldout-index.json"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer.model"

    @property
    def vq(self) -> Path:
        return self.root / "vq" / "vq.safetensors"

    def overrides(self) -> list[str]:
        """Config overrides that point a run at these assets."""
        return [f"data.train_shards={self.shards}", f"data.tokenizer={self.tokenizer}",
                f"model.vq.checkpoint={self.vq}"]


def _say(msg: str) -> None:
    print(f"== {msg}", flush=True)


def prepare(root: str | Path, n: int = 512, vq_steps: int = 300, seed: int = 0) -> DemoAssets:
    from opt_scale.data_prep.build import BuildOptions, build
    from opt_scale.data_prep.demo_data import write_demo_data
    from opt_scale.data_prep.tokenizer_training import train_tokenizer

    assets = DemoAssets(Path(root))
    ann = assets.root / ANNOTATIONS
    if not ann.is_file() or sum(1 for _ in open(ann)) != n:
        _say(f"demo data: {n} image-text-audio triplets -> {assets.root / 'raw'}")
        for stale in ("raw", "shards", "vq"):
            subprocess.run(["rm", "-rf", str(assets.root / stale)], check=True)
        assets.tokenizer.unlink(missing_ok=True)
        write_demo_data(assets.root / "raw", n, seed=seed)
    else:
        _say(f"demo data: reusing {assets.root / 'raw'}")
    _say(f"shards -> {assets.shards.parent}")
    result = build(BuildOptions(annotations=[str(ann)], image_root=str(assets.root / "raw/images"),
                                audio_root=str(assets.root / "raw/recordings"), out_dir=str(assets.shards.parent),
                                prefix="demo", samples_per_shard=64, image_short_side=128, workers=2,
                                holdouts=["heldout:64"], progress=False))
    splits = ", ".join(f"{name} {c['samples']}" for name, c in sorted(result.per_split.items()))
    print(f"   samples: {splits} ({result.shards_skipped} of {result.shards_built + result.shards_skipped} "
          f"shards were already built)")
    if not assets.tokenizer.is_file():
        _say(f"SentencePiece tokenizer -> {assets.tokenizer}")
        # BPE: on 448 near-identical captions unigram stops at ~55 character-like
        # pieces, and tiny's 40 tokens would cut every caption short.
        train_tokenizer(str(assets.shards), 128, str(assets.tokenizer), model_type="bpe")
    # Reused only when trained for the steps asked for (its final checkpoint
    # names the step), so a changed --vq-steps retrains it.
    if not (assets.vq.is_file() and (assets.vq.parent / "checkpoints" / f"step_{vq_steps:08d}").is_dir()):
        _say(f"VQ image tokenizer (the MVM/DIR targets): {vq_steps} steps -> {assets.vq.parent}")
        subprocess.run(["rm", "-rf", str(assets.vq.parent)], check=True)
        cmd = [sys.executable, "-m", "opt_scale.cli.train", "--task", "vq", "--config", "tiny", "--set",
               f"data.train_shards={assets.shards}", f"data.tokenizer={assets.tokenizer}",
               f"train.out_dir={assets.vq.parent}", f"train.steps={vq_steps}", "train.micro_batch_size=32",
               "train.lr=2e-3", "train.warmup_steps=10", "train.log_every=20", "data.num_workers=1"]
        subprocess.run(cmd, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    else:
        _say(f"VQ image tokenizer: reusing {assets.vq}")
    return assets


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m opt_scale.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    pp = sub.add_parser("prepare", help="make (or reuse) the demo data, shards, tokenizer and VQ tokenizer")
    pp.add_argument("--dir", default="runs/demo", help="where the demo assets live (default: runs/demo)")
    pp.add_argument("--n", type=int, default=512, help="number of triplets (default: 512)")
    pp.add_argument("--vq-steps", type=int, default=300,
                    help="VQ tokenizer training steps (default: 300; fewer leave its reconstructions grey)")
    args = p.parse_args(argv)
    assets = prepare(args.dir, args.n, args.vq_steps)
    print("overrides: " + " ".join(assets.overrides()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
