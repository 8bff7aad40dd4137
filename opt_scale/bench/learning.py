"""Learning check: train OPT-tiny on the demo data and measure what it learned.

Prepares the demo assets if needed (opt_scale.demo), trains for ``--steps``
(single process by default; ``--ranks 2`` for ZeRO-3 over two processes),
then reports, per pretext task, the loss of the first log window against the
mean of the last three, and on the held-out samples what the losses cannot
show: image-only caption accuracy per attribute (colour, shape, position),
R@5 of the embedding ranking against the re-ranked one, and matching
accuracy and AUC on nearest-neighbour (hard) negatives, each beside its
chance and content-blind baselines. ``--ablate TASK`` trains with that task's
weight at 0 (its tower and head still run), to show what it contributes.
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
DROPOUT_PARTS = ("text", "vision", "audio", "cross", "text_decoder", "image_decoder")


def add_arguments(p) -> None:
    p.add_argument("--demo-dir", default="runs/demo", help="demo assets (made if missing)")
    p.add_argument("--n", type=int, default=512, help="demo triplets")
    p.add_argument("--steps", type=int, default=1200, help="optimizer steps")
    p.add_argument("--ranks", type=int, default=1, help="training processes (torchrun, ZeRO-3 over gloo)")
    p.add_argument("--work-dir", "--out-dir", dest="work_dir", default="runs/bench/learning",
                   help="the training run's directory (--out-dir: the old name)")
    p.add_argument("--ablate", action="append", default=[], choices=TASKS, metavar="TASK",
                   help=f"train without this task (weight 0; repeatable): one of {', '.join(TASKS)}")
    p.add_argument("--dropout", type=float, default=0.0,
                   help="dropout of every tower and decoder (the demo's 0; the presets' is the paper's 0.1)")
    p.add_argument("--max-samples", "--eval-samples", dest="max_samples", type=int, default=0,
                   help="held-out samples evaluated (0: all; --eval-samples: the old name)")
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="extra config overrides for the run")


def run(args) -> dict:
    from opt_scale.demo import prepare
    assets = prepare(args.demo_dir, args.n)
    out = Path(args.work_dir)
    # Each run starts fresh, but only a directory this benchmark made is ever
    # deleted: a --work-dir pointing at a real run must not wipe it.
    marker = out / ".opt-bench-learning"
    if out.exists() and any(out.iterdir()) and not marker.exists():
        raise SystemExit(f"opt-bench learning: --work-dir {out} exists and was not made by this benchmark; "
                         "pass a new directory")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    marker.touch()
    overrides = assets.overrides() + [f"train.steps={args.steps}", f"train.out_dir={out}", "train.log_every=25",
                                      "train.checkpoint_every=0", "data.num_workers=1",
                                      *(f"tasks.{t}.weight=0" for t in args.ablate),
                                      *(f"model.{part}.dropout={args.dropout}" for part in DROPOUT_PARTS),
                                      *args.overrides]
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
    blind = scalars["acc/matching_blind"][-1][1] if "acc/matching_blind" in scalars else None
    print(f"\ntraining matching accuracy (5-way): {acc_start:.3f} -> {acc_end:.3f} (content-blind: "
          f"{blind:.3f}: a head that sees only which modalities are shown)" if blind is not None else "")
    if args.plot:
        series = {f"loss/{t}": ([s for s, _ in scalars[f'loss/{t}']],
                                [v / scalars[f'loss/{t}'][0][1] for _, v in scalars[f'loss/{t}']]) for t in TASKS}
        series["matching accuracy"] = ([s for s, _ in scalars["acc/matching"]], [v for _, v in scalars["acc/matching"]])
        plot_lines(series, "step", "loss / first loss  (accuracy as is)", "OPT-tiny learning on the demo data",
                   args.plot)
    content = held_out_content(out, assets.heldout, args.max_samples)
    ok = all(r["end/start"] < 0.9 for r in rows if r["task"] not in args.ablate) and acc_end > 0.3
    return {"ok": ok, "steps": args.steps, "ranks": args.ranks, "minutes": minutes, "ablate": args.ablate,
            "tasks": rows, "matching_accuracy": {"start": acc_start, "end": acc_end, "content_blind": blind},
            "held_out": content}


def held_out_content(run_dir: Path, heldout: Path, max_samples: int) -> dict:
    """What the run's final checkpoint knows about the held-out samples (see the module doc)."""
    import torch

    from opt_scale.eval.attributes import attribute_accuracy
    from opt_scale.eval.captioning import caption_set
    from opt_scale.eval.data import iter_eval_batches
    from opt_scale.eval.load import load_for_eval
    from opt_scale.eval.matching_eval import evaluate_matching
    from opt_scale.eval.retrieval import DIRECTIONS, encode_set, evaluate_retrieval
    from opt_scale.model.generation import OPTGenerator

    loaded = load_for_eval(str(run_dir), torch.device("cpu"))
    net, tok = loaded.net, loaded.tokenizer
    batches = list(iter_eval_batches(str(heldout), loaded.config.model, tok, 32, max_samples))
    data = encode_set(net, batches, "cpu")
    recall = evaluate_retrieval(net, data, 16, "cpu")
    matching = evaluate_matching(net, data, "cpu")
    caps = caption_set(OPTGenerator(net, tok), batches, beam=1)
    attrs = attribute_accuracy(caps["image"], caps["references"])
    n = len(data)
    rows = [{"direction": d, "R@5 emb": recall["embedding"][d]["R@5"], "R@5 rerank16": recall["rerank"][d]["R@5"],
             "chance": 100 * min(1.0, 5 / n)} for d in DIRECTIONS]
    print_table(rows, title=f"held-out retrieval, {n} samples (recall %; chance is the content-blind score)")
    print_table([{"attribute": a, **v} for a, v in attrs["attributes"].items()],
                title=f"image-only captions (greedy), {attrs['samples']} single-object held-out images")
    print_table([{"negatives": w, "5-way accuracy": a, "content-blind": matching["content_blind_accuracy"],
                  **{f"AUC {p}": matching["pair_auc"][p][w] for p in matching["pair_auc"]}}
                 for w, a in matching["accuracy"].items()], title="held-out matching (AUC content-blind: 0.5)")
    return {"samples": n, "retrieval": recall, "caption_image_attributes": attrs, "matching": matching}
