"""Training-step throughput of a preset under a DeepSpeed config, on this machine or allocation.

Builds the model, optimizer and engine as ``opt-train`` does and trains on
real shards through the streaming loader (default: the demo data set), for
each local world size (``torchrun``), or, launched per rank by ``srun``, on
the allocation in place (``srun opt-bench step ...``; rank 0 reports).
After ``--warmup`` untimed steps it reports, over ``--steps`` timed ones:
samples/s, tokens/s per modality, analytic training FLOPs per sample per
tower (at the batches' real lengths), TFLOP/s and MFU against the peak
table (``--peak-tflops`` overrides), peak memory per rank, and the share of
the time spent waiting for data.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .launch import add_probe_arguments, data_overrides, print_profiles, resolve_ds_configs, run_probes
from .report import plot_panels, print_table
from .train_probe import ProbeSpec


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_probe_arguments(p, steps=20, warmup=5)
    p.add_argument("--ds-config", default="auto",
                   help="DeepSpeed config: a name in ds_configs/ or a path (auto: zero3_gpu on CUDA, zero3_cpu "
                        "else); NAME+dotted.key=VALUE changes keys of it for this run")
    p.add_argument("--workers", "--data-workers", dest="workers", type=int, default=1,
                   help="loader workers per rank (data.num_workers; --data-workers: the old name)")


def run(args: argparse.Namespace) -> dict | None:
    from opt_scale.engine.ds_config import resolve_path
    work = Path(args.work_dir or "runs/bench/step")
    ds_config = resolve_path(args.ds_config).stem if args.ds_config == "auto" else args.ds_config
    spec = ProbeSpec(preset=args.preset, ds_configs=resolve_ds_configs([ds_config], work),
                     steps=args.steps, warmup=args.warmup,
                     overrides=[*data_overrides(args), f"data.num_workers={args.workers}", *args.overrides],
                     work_dir=str(work), peak_tflops=args.peak_tflops, profile=args.profile)
    probes = run_probes(spec, args, work)
    if probes is None:
        return None  # not rank 0 of an srun world
    rows = [step_row(p) for p in probes]
    print_table(rows, ["world_size", "ds_config", "micro_batch", "samples_per_s", "step_s_median", "text_tok_per_s",
                       "image_tok_per_s", "audio_tok_per_s", "tflops", "mfu", "peak_mem_gb", "data_wait"],
                title=f"training step, preset {args.preset}, {args.steps} timed steps after {args.warmup} warm-up, "
                      f"peak {probes[0]['peak_tflops_per_rank'] or 'unknown'} TFLOP/s per rank "
                      f"({probes[0]['peak_source']})")
    flops = flops_table(probes[0])
    print_table(flops, ["part", "train_gflop_per_sample", "at_max_lengths"],
                title="analytic training FLOPs per sample (3x forward), at the batches' lengths and at the maxima")
    print_profiles(probes)
    if args.plot:
        xs = [r["world_size"] for r in rows]
        plot_panels([({"samples/s": (xs, [r["samples_per_s"] for r in rows])}, "world size", "samples / s",
                      f"{args.preset}: throughput"),
                     ({"step time (median)": (xs, [r["step_s_median"] for r in rows])}, "world size", "seconds",
                      f"{args.preset}: step time")], args.plot)
    return {"ok": True, "bench": "step", "preset": args.preset, "ds_config": ds_config, "rows": rows,
            "flops_per_sample": flops, "runs": probes, "config": vars(args) | {"module": None}}


def step_row(probe: dict) -> dict:
    engine = probe["engines"][0]
    tokens = probe["tokens_per_s"]
    return {"world_size": probe["world_size"], "ds_config": engine["ds_config"], "zero_stage": engine["zero_stage"],
            "micro_batch": probe["micro_batch_size"], "samples_per_s": round(probe["loop_samples_per_s"], 2),
            "step_s_median": round(engine["step_s_median"], 4),
            "text_tok_per_s": round(tokens["text"]), "image_tok_per_s": round(tokens["image"]),
            "audio_tok_per_s": round(tokens["audio"]), "tflops": round(engine["tflops"], 4),
            "mfu": None if engine["mfu"] is None else round(engine["mfu"], 4),
            "peak_mem_gb": round(max(probe["peak_memory_bytes_per_rank"]) / 1e9, 2),
            "data_wait": round(probe["data_wait_fraction"], 3)}


def flops_table(probe: dict) -> list[dict]:
    """Per part: training GFLOPs per sample on the batches trained on, and at the preset's maximum lengths."""
    measured, at_max = probe["train_flops_per_sample"], probe["train_flops_per_sample_at_max_lengths"]
    rows = [{"part": part, "train_gflop_per_sample": round(measured.get(part, 0.0) / 1e9, 4),
             "at_max_lengths": round(at_max[part] / 1e9, 4)} for part in at_max]
    rows.append({"part": "total", "train_gflop_per_sample": round(sum(measured.values()) / 1e9, 4),
                 "at_max_lengths": round(sum(at_max.values()) / 1e9, 4)})
    return rows
