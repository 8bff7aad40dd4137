"""Run a training probe on a world of ranks: torchrun locally, in place under srun.

``opt-bench step``/``scaling`` describe what to measure as a
:class:`~.train_probe.ProbeSpec`. Locally they spawn one ``torchrun
--standalone`` world per world size. Launched per rank by ``srun`` (an
allocation: ``SLURM_NTASKS`` set, no ``RANK``), every task runs the probe in
place and only rank 0 reports.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from .train_probe import ProbeSpec


def add_probe_arguments(p: argparse.ArgumentParser, steps: int, warmup: int) -> None:
    """Options shared by the subcommands that time training steps."""
    p.add_argument("--config", "--preset", dest="preset", default="tiny",
                   help="preset (tiny, small, base, large, xl) or a config.json of an earlier run, as for opt-train")
    p.add_argument("--world-sizes", default="1,2",
                   help="ranks per local run (torchrun); ignored under srun, where the allocation decides")
    p.add_argument("--steps", type=int, default=steps, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=warmup, help="untimed steps before them")
    p.add_argument("--peak-tflops", type=float, default=0.0,
                   help="per-device peak TFLOP/s for MFU (default: GPU table by name, or a CPU estimate)")
    add_data_arguments(p)
    p.add_argument("--work-dir", default="", help="logs and scratch files (default runs/bench/<command>)")
    p.add_argument("--profile", action="store_true",
                   help="also cProfile each engine's timed steps on rank 0 and print the top functions "
                        "(profiling slows the steps: use it to attribute time, not to measure it)")
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. train.micro_batch_size=16 data.num_workers=2")


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """--demo-dir / --shards / --tokenizer: the data :func:`data_overrides` turns into config keys."""
    p.add_argument("--demo-dir", default="runs/demo",
                   help="demo shards + tokenizer to train on (made if missing, except under srun)")
    p.add_argument("--shards", default="", help="train on these shards instead (data.train_shards)")
    p.add_argument("--tokenizer", default="", help="with --shards: their SentencePiece model")


def under_srun() -> bool:
    """Launched as one task of a Slurm step (not by torchrun, which sets RANK)."""
    return "SLURM_NTASKS" in os.environ and "RANK" not in os.environ


def world_sizes(args: argparse.Namespace) -> list[int]:
    return [int(w) for w in args.world_sizes.split(",") if w.strip()]


def data_overrides(args: argparse.Namespace) -> list[str]:
    if args.shards:
        if not args.tokenizer:
            raise SystemExit("--shards needs --tokenizer (the SentencePiece model for their captions)")
        return [f"data.train_shards={args.shards}", f"data.tokenizer={args.tokenizer}"]
    from opt_scale.demo import DemoAssets, prepare
    assets = DemoAssets(Path(args.demo_dir))
    if not (assets.shards.is_file() and assets.tokenizer.is_file()):
        if under_srun():  # every task would build it at once; and its VQ step would see the Slurm world
            raise SystemExit(f"no demo data under {args.demo_dir}: run `python -m opt_scale.demo prepare --dir "
                             f"{args.demo_dir}` before srun, or pass --shards/--tokenizer")
        assets = prepare(args.demo_dir)
    return [f"data.train_shards={assets.shards}", f"data.tokenizer={assets.tokenizer}"]


def resolve_ds_configs(configs: list[str], work_dir: Path) -> dict[str, str]:
    """Label -> DeepSpeed config name or path. ``NAME+dotted.key=VALUE+...`` is NAME with those keys
    changed (VALUE as JSON, else a string), written under ``work_dir``: a variant to measure without
    editing ds_configs/, e.g. ``zero3_cpu+zero_optimization.memory_efficient_linear=false``."""
    import hjson

    from opt_scale.engine.ds_config import resolve_path
    resolved = {}
    for label in configs:
        name, *changes = label.split("+")
        if not changes:
            resolved[label] = name
            continue
        ds = hjson.loads(resolve_path(name).read_text(), object_pairs_hook=dict)
        for change in changes:
            dotted, _, value = change.partition("=")
            *parents, leaf = dotted.split(".")
            node = ds
            for key in parents:
                node = node.setdefault(key, {})
            try:
                node[leaf] = json.loads(value)
            except json.JSONDecodeError:
                node[leaf] = value
        path = work_dir / ("ds-" + "".join(c if c.isalnum() or c in "-_." else "_" for c in label) + ".json")
        work_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")  # srun: every task writes the same bytes
        tmp.write_text(json.dumps(ds, indent=1))
        tmp.replace(path)
        resolved[label] = str(path)
    return resolved


def print_profiles(probes: list[dict]) -> None:
    for probe in probes:
        for name, text in probe.get("profiles", {}).items():
            print(f"\ncProfile, rank 0, world size {probe['world_size']}, {name}:\n{text}")


def run_probe_world(spec: ProbeSpec, world_size: int, work_dir: Path) -> dict:
    """One local world of ``world_size`` ranks (torchrun, gloo on CPU); rank 0's results."""
    work_dir.mkdir(parents=True, exist_ok=True)
    stem = work_dir / f"probe-w{world_size}"
    spec_path, out_path, log_path = (stem.with_suffix(s) for s in (".spec.json", ".result.json", ".log"))
    spec_path.write_text(json.dumps(asdict(spec), indent=1))
    out_path.unlink(missing_ok=True)
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone", f"--nproc_per_node={world_size}",
           "-m", "opt_scale.bench.train_probe", "--spec", str(spec_path), "--out", str(out_path)]
    print(f"world size {world_size}: {' '.join(cmd)}  (log: {log_path})", flush=True)
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0 or not out_path.is_file():
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-40:])
        raise RuntimeError(f"training probe at world size {world_size} failed ({proc.returncode}):\n{tail}")
    return json.loads(out_path.read_text())


def run_probes(spec: ProbeSpec, args: argparse.Namespace, work_dir: Path) -> list[dict] | None:
    """Local: one probe per ``--world-sizes`` value. Under srun: this allocation, in place
    (``None`` on every rank but 0, which reports)."""
    if under_srun():
        from .train_probe import run_probe
        result = run_probe(spec)
        return None if result is None else [result]
    return [run_probe_world(spec, w, work_dir) for w in world_sizes(args)]
