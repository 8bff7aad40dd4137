"""``opt-shards``: download Localized Narratives, build, index, verify and inspect WebDataset shards
for OPT (from Localized Narratives, or image-text / audio-text pairs via ``pairs``).

Exit status: 0 success; 1 verification problems, an unfinished build or files that failed to download;
2 bad options or inputs; 3 the build's failure rate exceeds --max-failure-rate
(the shards are kept).
"""

from __future__ import annotations

import argparse
import logging
import sys

from opt_scale.utils.cli_errors import DefaultsHelpFormatter, UsageError, add_version_flag, reports_usage_errors
from opt_scale.utils.config_tools import ConfigError
from opt_scale.utils.input_paths import existing_file, writable_dir

EXIT_PROBLEMS, EXIT_FAILURE_RATE = 1, 3


def _demo_data(args: argparse.Namespace) -> int:
    from .demo_data import write_demo_data
    ann = write_demo_data(args.out, args.n, seed=args.seed, workers=args.workers)
    print(f"wrote {args.n} samples; annotations: {ann}; images: {args.out}/images; "
          f"recordings: {args.out}/recordings")
    if args.real_media or args.bad_inputs or args.open_images_csv:
        from .demo_inputs import write_extras
        extras = write_extras(args.out, real_media=args.real_media, bad_inputs=args.bad_inputs,
                              open_images_csv=args.open_images_csv, seed=args.seed)
        for what, path in extras.items():
            print(f"{what}: {path}")
    return 0


def _download(args: argparse.Namespace) -> int:
    from .build import BuildConfigError, resolve_job
    from .download import DownloadOptions, download, format_report
    from .http_fetch import FetchOptions
    try:
        num_jobs, job_index = resolve_job(args.num_jobs, args.job_index)
    except BuildConfigError as exc:
        raise UsageError(f"--num-jobs/--job-index: {exc}") from exc
    opts = DownloadOptions(
        out_dir=args.out, annotations=tuple(args.annotations), image_split=args.image_split,
        annotations_url=args.annotations_url, recordings_url=args.recordings_url, images_url=args.images_url,
        connections=args.connections, max_per_second=args.max_per_second,
        fetch=FetchOptions(timeout=args.timeout, retries=args.retries, backoff=args.backoff),
        num_jobs=num_jobs, job_index=job_index, progress=not args.no_progress)
    report = download(opts, dry_run=args.dry_run, head=not args.no_head)
    print(format_report(report, opts, args.dry_run, head=not args.no_head))
    return EXIT_PROBLEMS if report.failed or report.unknown_sizes else 0


def _build(args: argparse.Namespace) -> int:
    from .build import BuildOptions, build
    from .summary import print_summary
    opts = BuildOptions(
        annotations=args.annotations, image_root=args.images, audio_root=args.audio, out_dir=args.out,
        prefix=args.prefix, samples_per_shard=args.samples_per_shard, image_short_side=args.image_short_side,
        jpeg_quality=args.jpeg_quality, max_audio_seconds=args.max_audio_seconds, audio_format=args.audio_format,
        max_image_pixels=args.max_image_pixels, open_images_csv=args.open_images_csv, holdouts=args.holdout,
        workers=args.workers, num_jobs=args.num_jobs, job_index=args.job_index,
        max_failure_rate=args.max_failure_rate, overwrite=args.overwrite, progress=not args.no_progress)
    result = build(opts)
    print_summary(result, opts.max_failure_rate)
    if result.index_written:
        print(f"index: {args.out}/{args.prefix}-index.json; failures: {args.out}/failures.jsonl")
    else:
        print(f"job {result.job_index + 1}/{result.num_jobs} done; after all jobs finish run: "
              f"opt-shards index {args.out} --prefix {args.prefix}")
    return EXIT_FAILURE_RATE if result.failure_rate > opts.max_failure_rate else 0


def _pairs(args: argparse.Namespace) -> int:
    from . import labelled
    from .pairs import write_pairs
    if args.format in labelled.FORMATS:
        n, labels = labelled.write_labelled(
            args.input, args.format, args.out, annotations=args.annotations, image_name=args.image_name,
            image_key=args.image_key, audio_key=args.audio_key, label_key=args.label_key, label_sep=args.label_sep,
            min_label_count=args.min_label_count, max_labels=args.max_labels)
        side = "--images ROOT" if args.format != "classes" or args.image_key else "--audio ROOT"
        print(f"wrote {n} {args.format} samples to {args.out} and their {labels} labels to "
              f"{labelled.labels_path(args.out)} (data.labels); build them with: "
              f"opt-shards build --annotations {args.out} {side} --out DIR")
        return 0
    n = write_pairs(args.input, args.format, args.out, image_key=args.image_key, caption_key=args.caption_key,
                    audio_name=args.audio_name, split=args.split)
    side = "--audio" if args.format in ("audiocaps", "clotho") else "--images"
    print(f"wrote {n} {args.format} pairs to {args.out}; build them with: "
          f"opt-shards build --annotations {args.out} {side} ROOT --out DIR")
    return 0


def _index(args: argparse.Namespace) -> int:
    from .index import IncompleteBuildError, merge_index
    try:
        indexes = merge_index(args.dir, args.prefix, allow_incomplete=args.allow_incomplete)
    except IncompleteBuildError as exc:
        print(f"opt-shards index: {exc}", file=sys.stderr)
        return EXIT_PROBLEMS
    inputs = failed = 0
    for split, index in indexes.items():
        inputs += index["ninput"]
        failed += sum(index["failures"].values())
        print(f"{split}: {len(index['shardlist'])} shards, {index['nsamples']} samples -> "
              f"{args.dir}/{index['name']}-index.json")
    rate = failed / inputs if inputs else 0.0
    print(f"failures: {failed} of {inputs} inputs ({rate:.2%}) -> {args.dir}/failures.jsonl")
    return EXIT_FAILURE_RATE if rate > args.max_failure_rate else 0


def _verify(args: argparse.Namespace) -> int:
    from .verify import verify
    checks, problems = verify(args.target, workers=args.workers)
    for msg in problems[:args.max_report]:
        print(f"PROBLEM {msg}")
    if len(problems) > args.max_report:
        print(f"... and {len(problems) - args.max_report} more")
    n = sum(c.nsamples for c in checks)
    print(f"{'FAILED' if problems else 'OK'}: {len(checks)} shard(s), {n} samples decoded, {len(problems)} problem(s)")
    return EXIT_PROBLEMS if problems else 0


def _inspect(args: argparse.Namespace) -> int:
    from .inspect_shards import inspect_shard
    existing_file(args.shard, "SHARD", hint="give one shard (.tar); `opt-shards verify` takes a directory")
    writable_dir(args.out, "--out")
    written = inspect_shard(args.shard, args.n, args.out)
    print(f"wrote {len(written)} files to {args.out} (contact sheet: {args.out}/contact_sheet.png)")
    return 0


def _train_tokenizer(args: argparse.Namespace) -> int:
    from .tokenizer_training import train_tokenizer
    path = train_tokenizer(args.shards, args.vocab_size, args.out, seed=args.seed, model_type=args.model_type)
    print(f"tokenizer: {path}")
    return 0


def _sub(sub, name: str, help_text: str, func) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text, description=help_text,
                       formatter_class=DefaultsHelpFormatter)
    p.set_defaults(func=func)
    return p


def _add_job_flags(p: argparse.ArgumentParser, what: str) -> None:
    """--num-jobs/--job-index, shared by build and download (resolved by build.resolve_job)."""
    p.add_argument("--num-jobs", type=int, default=None,
                   help=f"{what}; None: SLURM_ARRAY_TASK_COUNT in a Slurm job array, else 1")
    p.add_argument("--job-index", type=int, default=None,
                   help="which job this is, 0-based; None: (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN) / "
                        "SLURM_ARRAY_TASK_STEP in a Slurm job array, else 0")


def _add_download(sub) -> None:
    from .download import (DEFAULT_ANNOTATIONS_URL, DEFAULT_IMAGES_URL, DEFAULT_RECORDINGS_URL, IMAGE_SPLITS,
                           SPLIT_FILES)
    w = _sub(sub, "download", "fetch Localized Narratives annotations, the recordings they name and the Open "
                              "Images images they show, into the layout `build` reads (resumable)", _download)
    w.add_argument("--out", required=True, help="output directory (annotations/, images/, audio/)")
    w.add_argument("--annotations", nargs="+", default=["train"],
                   help=f"annotation file names, or split names ({', '.join(SPLIT_FILES)}) for the Open Images "
                        "files of that split")
    w.add_argument("--image-split", choices=IMAGE_SPLITS, default=None,
                   help="Open Images folder the images come from (default: the split --annotations names, else train)")
    w.add_argument("--annotations-url", default=DEFAULT_ANNOTATIONS_URL, help="base URL of the annotation files")
    w.add_argument("--recordings-url", default=DEFAULT_RECORDINGS_URL,
                   help="base URL that voice_recording paths are relative to")
    w.add_argument("--images-url", default=DEFAULT_IMAGES_URL, help="base URL of <split>/<image_id>.jpg")
    w.add_argument("--connections", type=int, default=16, help="parallel connections (threads)")
    w.add_argument("--max-per-second", type=float, default=100.0,
                   help="requests started per second over all connections (0: no limit)")
    w.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for a connection, an answer or the next bytes of a body")
    w.add_argument("--retries", type=int, default=5,
                   help="retries of a file after a failure that may pass (5xx, 429, timeout, truncated body)")
    w.add_argument("--backoff", type=float, default=1.0,
                   help="seconds before the first retry; doubled for each next one, with jitter (at most 60)")
    _add_job_flags(w, "share the images and recordings over this many jobs (by a hash of the path)")
    w.add_argument("--dry-run", action="store_true",
                   help="fetch only the annotations; print the counts and the bytes still to download")
    w.add_argument("--no-head", action="store_true",
                   help="with --dry-run: estimate sizes per file instead of one HEAD request per file")
    w.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    from .labelled import DEFAULT_VQA_IMAGE_NAME
    from .labelled import FORMATS as LABELLED_FORMATS
    from .media import AUDIO_FORMATS, DEFAULT_MAX_PIXELS
    from .pairs import FORMATS
    from .tokenizer_training import MODEL_TYPES
    p = argparse.ArgumentParser(prog="opt-shards", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version_flag(p)
    sub = p.add_subparsers(dest="command", required=True)

    d = _sub(sub, "demo-data", "write a small learnable data set in the Localized Narratives layout", _demo_data)
    d.add_argument("--out", required=True, help="output directory (annotations/, images/, recordings/)")
    d.add_argument("--n", type=int, default=512, help="number of image-text-audio triplets")
    d.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same data")
    d.add_argument("--workers", type=int, default=None, help="processes used (default: up to 4)")
    d.add_argument("--real-media", type=int, default=0, metavar="N",
                   help="also write narratives for N real photos (scikit-image; every third photo has two "
                        "narratives) with real speech (sound-theme-freedesktop, espeak-ng), in varied image "
                        "formats and orientations and audio rates, channel counts and lengths")
    d.add_argument("--bad-inputs", action="store_true",
                   help="also write one narrative per kind of bad input (missing/corrupt media, bad JSON, "
                        "unsafe paths, duplicates, ...), in a second annotation file")
    d.add_argument("--open-images-csv", action="store_true",
                   help="also write an Open Images image CSV (licence, author, rotation) for every image")

    _add_download(sub)

    b = _sub(sub, "build", "build WebDataset shards from narratives, images and recordings", _build)
    b.add_argument("--annotations", nargs="+", required=True,
                   help="Localized Narratives JSONL files or globs (quote globs), or pairs from `opt-shards pairs`")
    b.add_argument("--images", nargs="+", default=[],
                   help="image root(s) holding <ImageID>.jpg (or .jpeg/.png, or a record's image_path); "
                        "several are searched in order (not needed for audio-text pairs alone)")
    b.add_argument("--audio", default="",
                   help="recordings root that the voice_recording field is relative to "
                        "(not needed for image-text pairs alone)")
    b.add_argument("--out", required=True, help="output directory for shards, sidecars and the index")
    b.add_argument("--prefix", default="shard", help="shard name prefix: PREFIX-000000.tar, PREFIX-index.json")
    b.add_argument("--samples-per-shard", type=int, default=1000,
                   help="input records per shard (it decides which records share a shard: keep it to resume)")
    b.add_argument("--image-short-side", type=int, default=384, help="shrink images so the short side is at most this")
    b.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality of re-encoded images")
    b.add_argument("--max-audio-seconds", type=float, default=60.0,
                   help="crop recordings longer than this, recorded as cropped in the metadata (0: never)")
    b.add_argument("--audio-format", choices=AUDIO_FORMATS, default="flac", help="lossless audio encoding in shards")
    b.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="reject images with more pixels than this (decompression bombs) before decoding")
    b.add_argument("--open-images-csv", default=None, metavar="CSV",
                   help="Open Images image CSV whose licence, author and rotation columns go into each "
                        "sample's metadata (rotation is applied)")
    b.add_argument("--holdout", action="append", default=[], metavar="NAME:COUNT",
                   help="hold out COUNT narratives (whole images, chosen by a hash of the image id) as their "
                        "own shard set PREFIX-NAME-*.tar and index; repeatable")
    b.add_argument("--workers", type=int, default=1, help="worker processes (one shard each at a time)")
    _add_job_flags(b, "split the shards over this many jobs")
    b.add_argument("--max-failure-rate", type=float, default=0.05,
                   help="exit with status 3 when more than this fraction of input records fail (shards are kept)")
    b.add_argument("--overwrite", action="store_true",
                   help="delete a previous build of this prefix with other inputs/options (single job only)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")

    i = _sub(sub, "index", "merge per-shard sidecars into the dataset indexes and failures.jsonl "
                           "(after all jobs of a job array)", _index)
    i.add_argument("dir", help="shard directory (the build's --out)")
    i.add_argument("--prefix", default="shard", help="shard name prefix used by the build")
    i.add_argument("--allow-incomplete", action="store_true",
                   help="write indexes of the finished shards even if some are missing")
    i.add_argument("--max-failure-rate", type=float, default=0.05,
                   help="exit with status 3 when more than this fraction of input records failed")

    v = _sub(sub, "verify", "decode every sample and check counts and checksums against the index", _verify)
    v.add_argument("target", help="a dataset index (.json), a directory of indexes, or one shard (.tar)")
    v.add_argument("--workers", type=int, default=1, help="processes (shards are checked in parallel)")
    v.add_argument("--max-report", type=int, default=50, help="print at most this many problems")

    s = _sub(sub, "inspect", "export a few samples as PNG + WAV + caption, and a contact sheet", _inspect)
    s.add_argument("shard", metavar="SHARD", help="shard path (.tar)")
    s.add_argument("--n", type=int, default=8, help="number of samples to export (from the start of the shard)")
    s.add_argument("--out", required=True, help="output directory")

    pr = _sub(sub, "pairs", "turn an image-text, audio-text or labelled corpus (VQA, classes) into records `build` "
                            "reads", _pairs)
    pr.add_argument("input", help="the corpus' caption file (COCO or Karpathy-split JSON, CSV, JSONL, AudioCaps "
                                  "or Clotho CSV), VQA v2 questions JSON, a classes CSV/JSONL, or an ImageFolder root")
    pr.add_argument("--format", required=True, choices=FORMATS + LABELLED_FORMATS, help="the input's layout")
    pr.add_argument("--out", required=True, help="output JSON Lines file (pass it to build --annotations)")
    pr.add_argument("--image-key", default="image", help="csv/jsonl: the column holding the image path")
    pr.add_argument("--caption-key", default="caption", help="csv/jsonl: the column holding the caption")
    pr.add_argument("--audio-name", default="{youtube_id}_{start_time}.wav",
                    help="audiocaps: the clip's file name under build's --audio, from the CSV's columns")
    pr.add_argument("--split", default="train", choices=("train", "restval", "val", "test"),
                    help="karpathy: the split to take (train includes restval)")
    pr.add_argument("--annotations", default="", help="vqa: the VQA v2 annotations JSON of the questions")
    pr.add_argument("--image-name", default=DEFAULT_VQA_IMAGE_NAME,
                    help="vqa: the image's file name under build's --images, from image_id and data_subtype")
    pr.add_argument("--audio-key", default="", help="classes: the column holding the audio path (if any)")
    pr.add_argument("--label-key", default="label", help="classes: the column holding the label(s)")
    pr.add_argument("--label-sep", default="|", help="classes: what separates several labels of one sample")
    pr.add_argument("--min-label-count", type=int, default=1,
                    help="vqa/classes/imagefolder: labels chosen fewer times stay out of the vocabulary "
                         "(VQA v2's usual vocabulary: 9)")
    pr.add_argument("--max-labels", type=int, default=0,
                    help="vqa/classes/imagefolder: keep at most this many labels, most frequent first (0: all; "
                         "VQA v2: 3129)")

    t = _sub(sub, "train-tokenizer", "train a SentencePiece tokenizer on the captions in shards", _train_tokenizer)
    t.add_argument("--shards", required=True, help="shard paths, brace pattern or dataset index .json")
    t.add_argument("--vocab-size", type=int, default=8000,
                   help="vocabulary size (an upper bound: small corpora get fewer pieces)")
    t.add_argument("--out", required=True, help="output model path (…/name.model)")
    t.add_argument("--seed", type=int, default=0, help="SentencePiece random seed")
    t.add_argument("--model-type", choices=MODEL_TYPES, default="unigram",
                   help="SentencePiece algorithm; bpe for tiny, repetitive corpora (unigram stops near characters)")
    return p


@reports_usage_errors("opt-shards")
def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError:  # already names its flag or key
        raise
    except (FileNotFoundError, ValueError) as exc:  # bad options or inputs (BuildConfigError is one): say which
        raise UsageError(f"{args.command}: {exc}") from exc


if __name__ == "__main__":
    sys.exit(main())
