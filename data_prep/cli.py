"""``opt-shards``: build, index and inspect WebDataset shards for OPT."""

from __future__ import annotations

import argparse
import logging
import sys


def _demo_data(args: argparse.Namespace) -> int:
    from .demo_data import write_demo_data
    ann = write_demo_data(args.out, args.n, seed=args.seed, workers=args.workers)
    print(f"wrote {args.n} samples; annotations: {ann}; images: {args.out}/images; "
          f"recordings: {args.out}/recordings")
    return 0


def _build(args: argparse.Namespace) -> int:
    from .build import BuildOptions, build
    opts = BuildOptions(annotations=args.annotations, image_root=args.images, audio_root=args.audio,
                        out_dir=args.out, prefix=args.prefix, samples_per_shard=args.samples_per_shard,
                        image_short_side=args.image_short_side, jpeg_quality=args.jpeg_quality,
                        max_audio_seconds=args.max_audio_seconds, audio_format=args.audio_format)
    totals = build(opts)
    failed = sum(v for k, v in totals.items() if k.startswith("failed:"))
    print(f"samples written: {totals.get('samples', 0)}  failures: {failed}  index: {args.out}/{args.prefix}-index.json")
    for k, v in sorted(totals.items()):
        if k.startswith("failed:"):
            print(f"  {k[7:]:<20} {v}")
    return 0


def _index(args: argparse.Namespace) -> int:
    from .build import write_index
    index = write_index(args.dir, args.prefix, name=args.name)
    n = sum(s["nsamples"] for s in index["shardlist"])
    print(f"{len(index['shardlist'])} shards, {n} samples -> {args.dir}/{args.prefix}-index.json")
    return 0


def _train_tokenizer(args: argparse.Namespace) -> int:
    from .tokenizer_training import train_tokenizer
    path = train_tokenizer(args.shards, args.vocab_size, args.out, seed=args.seed)
    print(f"tokenizer: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="opt-shards", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo-data", help="write a small learnable data set in the Localized Narratives layout",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d.add_argument("--out", required=True, help="output directory (annotations/, images/, recordings/)")
    d.add_argument("--n", type=int, default=512, help="number of image-text-audio triplets")
    d.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same data")
    d.add_argument("--workers", type=int, default=None, help="processes used (default: up to 4)")
    d.set_defaults(func=_demo_data)

    b = sub.add_parser("build", help="build WebDataset shards from narratives, images and recordings",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    b.add_argument("--annotations", nargs="+", required=True,
                   help="Localized Narratives JSONL files or globs (quote globs)")
    b.add_argument("--images", required=True, help="image root holding <ImageID>.jpg (or .jpeg/.png)")
    b.add_argument("--audio", required=True, help="recordings root that the voice_recording field is relative to")
    b.add_argument("--out", required=True, help="output directory for shards, sidecars and the index")
    b.add_argument("--prefix", default="shard", help="shard name prefix: PREFIX-000000.tar")
    b.add_argument("--samples-per-shard", type=int, default=1000, help="input records per shard")
    b.add_argument("--image-short-side", type=int, default=384, help="shrink images so the short side is at most this")
    b.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality of re-encoded images")
    b.add_argument("--max-audio-seconds", type=float, default=60.0, help="crop recordings longer than this (0: never)")
    b.add_argument("--audio-format", choices=("flac", "wav"), default="flac", help="lossless audio encoding in shards")
    b.set_defaults(func=_build)

    i = sub.add_parser("index", help="merge per-shard sidecars into the dataset index and failures.jsonl",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    i.add_argument("dir", help="shard directory")
    i.add_argument("--prefix", default="shard", help="shard name prefix")
    i.add_argument("--name", default="", help="data set name recorded in the index")
    i.set_defaults(func=_index)

    t = sub.add_parser("train-tokenizer", help="train a SentencePiece tokenizer on the captions in shards",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--shards", required=True, help="shard paths, brace pattern or dataset index .json")
    t.add_argument("--vocab-size", type=int, default=8000,
                   help="vocabulary size (an upper bound: small corpora get fewer pieces)")
    t.add_argument("--out", required=True, help="output model path (…/name.model)")
    t.add_argument("--seed", type=int, default=0, help="SentencePiece random seed")
    t.set_defaults(func=_train_tokenizer)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
