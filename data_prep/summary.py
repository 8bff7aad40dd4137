"""The table ``opt-shards build`` prints when it finishes."""

from __future__ import annotations

from typing import TextIO

from .build import BuildResult


def format_summary(result: BuildResult, max_failure_rate: float) -> str:
    lines = [f"opt-shards build: job {result.job_index + 1}/{result.num_jobs}: "
             f"{result.shards_built} shard(s) built, {result.shards_skipped} already finished (skipped)"]
    header = f"{'split':<16}{'shards':>8}{'inputs':>10}{'samples':>10}{'failed':>9}{'GB':>10}"
    lines += [header, "-" * len(header)]
    for split, c in result.per_split.items():
        lines.append(f"{split:<16}{c['shards']:>8}{c['inputs']:>10}{c['samples']:>10}{c['failed']:>9}"
                     f"{c['bytes'] / 1e9:>10.3f}")
    if result.reasons:
        lines.append("failures by reason:")
        lines += [f"  {reason:<22}{n:>8}" for reason, n in sorted(result.reasons.items(), key=lambda kv: -kv[1])]
    else:
        lines.append("failures: none")
    if result.audio_cropped:
        lines.append(f"recordings cropped to --max-audio-seconds: {result.audio_cropped}")
    if result.csv_row_missing:
        lines.append(f"samples without an Open Images CSV row (no licence fields): {result.csv_row_missing}")
    rate = result.samples_built / result.seconds if result.seconds else 0.0
    gb = sum(c["bytes"] for c in result.per_split.values()) / 1e9
    lines.append(f"this run: {result.samples_built} samples in {result.seconds:.1f} s = {rate:.1f} samples/s, "
                 f"{rate / result.workers:.1f} samples/s/core ({result.workers} worker(s)); "
                 f"{gb:.3f} GB in this job's shards")
    verdict = "EXCEEDS" if result.failure_rate > max_failure_rate else "within"
    lines.append(f"failure rate {result.failure_rate:.2%} ({verdict} --max-failure-rate {max_failure_rate:.2%})")
    return "\n".join(lines)


def print_summary(result: BuildResult, max_failure_rate: float, out: TextIO | None = None) -> None:
    print(format_summary(result, max_failure_rate), file=out, flush=True)
