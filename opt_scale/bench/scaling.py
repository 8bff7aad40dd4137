"""ZeRO-3 vs ZeRO-2 vs plain data parallelism: state memory per rank and step time, by world size.

For each world size (``torchrun``, gloo on CPU) one world builds an engine
per DeepSpeed config, side by side, with the trainer's own builders, and
steps them in turn on the same batches (the order rotating every step):
their step times are compared under one load at one moment, which is what
makes the ratio meaningful on a shared machine. Reported per config and
world size:

* model + optimizer state per rank, measured on the engine: the bytes of
  the storages behind the parameters (ZeRO-3: its partitions, plus the small
  parameters it keeps whole), the master weights the optimizer updates when
  they are a separate copy, and the optimizer's state tensors (see
  :mod:`.engine_state`);
* step time (forward + backward + optimizer step, slowest rank, median over
  the timed steps, after a barrier; data loading excluded).

Targets: ZeRO-3's state per rank at the largest world size <= 0.55x of world
size 1, and its step time there within 1.3x of plain data parallelism.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .launch import add_probe_arguments, data_overrides, print_profiles, resolve_ds_configs, run_probes
from .report import plot_panels, print_table
from .train_probe import ProbeSpec


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_probe_arguments(p, steps=20, warmup=5)
    p.add_argument("--ds-configs", default="zero3_cpu,zero2,ddp",
                   help="DeepSpeed configs compared (names in ds_configs/ or paths; NAME+dotted.key=VALUE changes "
                        "keys of one for this run); each ZeRO-3 one is judged against the stage-0 one")
    p.add_argument("--target-memory", type=float, default=0.55,
                   help="goal for ZeRO-3 state per rank at the largest world size / at world size 1")
    p.add_argument("--target-step", type=float, default=1.3,
                   help="goal for ZeRO-3 step time / plain data parallel step time at the largest world size")


def run(args: argparse.Namespace) -> dict | None:
    work = Path(args.work_dir or "runs/bench/scaling")
    configs = [c.strip() for c in args.ds_configs.split(",") if c.strip()]
    spec = ProbeSpec(preset=args.preset, ds_configs=resolve_ds_configs(configs, work),
                     steps=args.steps, warmup=args.warmup,
                     overrides=[*data_overrides(args), "data.num_workers=1", *args.overrides],
                     work_dir=str(work), peak_tflops=args.peak_tflops, profile=args.profile)
    probes = run_probes(spec, args, work)
    if probes is None:
        return None  # not rank 0 of an srun world
    rows = [scaling_row(p, e) for p in probes for e in p["engines"]]
    rows.sort(key=lambda r: (configs.index(r["ds_config"]), r["world_size"]))
    targets = check_targets(rows, args)
    print_table(rows, ["ds_config", "zero_stage", "world_size", "state_mb_per_rank", "params_mb", "master_mb",
                       "optim_mb", "state_vs_ws1", "step_s_median", "step_vs_ddp"],
                title=f"preset {args.preset}: model + optimizer state per rank (measured on the engine) and step "
                      f"time (median of {args.steps}, after {args.warmup} warm-up)")
    print_verdicts(targets)
    print_profiles(probes)
    if args.plot:
        panels = []
        for key, label in (("state_mb_per_rank", "state per rank (MB)"), ("step_s_median", "step time (s)")):
            series = {c: ([r["world_size"] for r in rows if r["ds_config"] == c],
                          [r[key] for r in rows if r["ds_config"] == c]) for c in configs}
            panels.append((series, "world size", label, f"{args.preset}: {label}"))
        plot_panels(panels, args.plot)
    return {"ok": True, "bench": "scaling", "preset": args.preset, "rows": rows, "targets": targets,
            "runs": probes, "config": vars(args) | {"module": None}}


def scaling_row(probe: dict, engine: dict) -> dict:
    mb = 1e6
    worst = max(engine["state_detail_per_rank"], key=lambda d: d["state_bytes"])  # the rank holding most
    ddp = next((e for e in probe["engines"] if e["zero_stage"] == 0), None)
    return {"ds_config": engine["ds_config"], "zero_stage": engine["zero_stage"], "world_size": probe["world_size"],
            "state_mb_per_rank": round(worst["state_bytes"] / mb, 3),
            "params_mb": round(worst["parameter_bytes"] / mb, 3),
            "master_mb": round(worst["master_weight_bytes"] / mb, 3),
            "optim_mb": round(worst["optimizer_state_bytes"] / mb, 3),
            "step_s_median": round(engine["step_s_median"], 4),
            "step_vs_ddp": round(engine["step_s_median"] / ddp["step_s_median"], 3) if ddp else None,
            "state_vs_ws1": None}


def check_targets(rows: list[dict], args: argparse.Namespace) -> list[dict]:
    """Fill ``state_vs_ws1`` and judge ZeRO-3 against the two goals (ratios within this run)."""
    for row in rows:
        base = next((r for r in rows if r["ds_config"] == row["ds_config"] and r["world_size"] == 1), None)
        if base:
            row["state_vs_ws1"] = round(row["state_mb_per_rank"] / base["state_mb_per_rank"], 3)
    targets = []
    largest = max(r["world_size"] for r in rows)
    for row in rows:  # every ZeRO-3 config, at the largest world size
        if row["zero_stage"] != 3 or row["world_size"] != largest or largest == 1:
            continue
        for what, value, goal in ((f"{row['ds_config']}: state per rank, world size {largest} / 1",
                                   row["state_vs_ws1"], args.target_memory),
                                  (f"{row['ds_config']}: step time / plain data parallel, world size {largest}",
                                   row["step_vs_ddp"], args.target_step)):
            if value is not None:
                targets.append({"ds_config": row["ds_config"], "what": what, "value": value, "target": goal,
                                "met": value <= goal})
    return targets


def print_verdicts(targets: list[dict]) -> None:
    for t in targets:
        print(f"{t['what']}: {t['value']:.3f} (target <= {t['target']:g}: {'met' if t['met'] else 'MISSED'})")
