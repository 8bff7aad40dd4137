"""Learning check: train OPT-tiny on the demo data and show every task learning.

Prepares the demo assets if needed (opt_scale.demo), trains for ``--steps``
(single process by default; ``--ranks 2`` for ZeRO-3 over two processes),
then reads the TensorBoard scalars back and reports, per pretext task, the
loss of the first log window against the mean of the last three, and the
5-way matching accuracy (chance: 20%).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .events import read_scalars
from .report import plot_lines, print_table

TASKS = ("mlm", "mvm", "mam", "dtr", "dir", "matching", "contrastive")


def add_arguments(p) -> None:
    p.add_argument("--demo-dir", default="runs/demo", help="demo assets (made if missing)")
    p.add_argument("--n", type=int, default=512, help="demo triplets")
    p.add_argument("--steps", type=int, default=1200, help="optimizer steps")
    p.add_argument("--ranks", type=int, default=1, help="training processes (torchrun, ZeRO-3 over gloo)")
    p.add_argument("--out-dir", default="runs/bench/learning", help="the training run's directory")
    p.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra config overrides for the run")


def run(args) -> dict:
    from opt_scale.demo import prepare
    assets = prepare(args.demo_dir, args.n)
    out = Path(args.out_dir)
    # Each run starts fresh, but only a directory this benchmark made is ever
    # deleted: an --out-dir pointing at a real run must not wipe it.
    marker = out / ".opt-bench-learning"
    if out.exists() and any(out.iterdir()) and not marker.exists():
        raise SystemExit(f"opt-bench learning: --out-dir {out} exists and was not made by this benchmark; "
                         "pass a new directory")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    marker.touch()
    overrides = assets.overrides() + [f"train.steps={args.steps}", f"train.out_dir={out}", "train.log_every=25",
                                      "train.checkpoint_every=0", "data.num_workers=1", *args.overrides]
    if args.ranks > 1:
        cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone", f"--nproc_per_node={args.ranks}",
               "-m", "opt_scale.cli.train"]
    else:
        cmd = [sys.executable, "-m", "opt_scale.cli.train"]
    cmd += ["--config", "tiny", "--set", *overrides]
    started = time.time()
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    minutes = (time.time() - started) / 60
    scalars = read_scalars(out / "tensorboard")

    def first_last(tag: str) -> tuple[float, float]:
        values = [v for _, v in scalars[tag]]
        return values[0], sum(values[-3:]) / len(values[-3:])

    rows = []
    for task in TASKS:
        start, end = first_last(f"loss/{task}")
        rows.append({"task": task, "loss_start": start, "loss_end": end, "end/start": end / start})
    acc_start, acc_end = first_last("acc/matching")
    print_table(rows, title=f"OPT-tiny on the demo data: {args.steps} steps, {args.ranks} rank(s), {minutes:.1f} min")
    print(f"\nmatching accuracy (5-way, chance 0.20): {acc_start:.3f} -> {acc_end:.3f}")
    if args.plot:
        series = {f"loss/{t}": ([s for s, _ in scalars[f'loss/{t}']],
                                [v / scalars[f'loss/{t}'][0][1] for _, v in scalars[f'loss/{t}']]) for t in TASKS}
        series["matching accuracy"] = ([s for s, _ in scalars["acc/matching"]], [v for _, v in scalars["acc/matching"]])
        plot_lines(series, "step", "loss / first loss  (accuracy as is)", "OPT-tiny learning on the demo data",
                   args.plot)
    ok = all(r["end/start"] < 0.9 for r in rows) and acc_end > 0.3
    return {"ok": ok, "steps": args.steps, "ranks": args.ranks, "minutes": minutes, "tasks": rows,
            "matching_accuracy": {"start": acc_start, "end": acc_end}}
