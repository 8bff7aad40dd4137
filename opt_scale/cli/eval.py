"""``opt-eval``: what a checkpoint can do — retrieval, captioning, text-to-image,
and a fine-tuned model's VQA accuracy or classification top-1 / mAP.

CHECKPOINT is an ``opt-export`` directory, a DeepSpeed checkpoint directory,
or a run directory (its newest complete checkpoint). Runs on one process, or
under ``torchrun``/``srun`` with the work split over ranks. ``opt-eval
report`` needs no checkpoint: it renders what the other commands wrote as
markdown (the README's results section is written by it).

Exit codes: 0 done; 2 bad options or input (one line ``opt-eval: error: ...``
naming the flag, before any model is loaded).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from opt_scale.utils.cli_errors import DefaultsHelpFormatter, UsageError, add_version_flag, reports_usage_errors


def _common(p: argparse.ArgumentParser, shards: bool = True) -> None:
    p.add_argument("--checkpoint", required=True,
                   help="export, checkpoint or run directory (a checkpoint is consolidated in memory on every rank: "
                        "for a large model run opt-export once and pass the export)")
    if shards:
        p.add_argument("--shards", required=True, help="held-out shards: index .json, paths or brace pattern")
        p.add_argument("--max-samples", type=int, default=0, help="use only the first N samples (0: all)")
        p.add_argument("--batch-size", type=int, default=32, help="samples per forward")
    p.add_argument("--json", default=None, help="also write the results as JSON here")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu", help="torch device")


# Chosen on held-out data (README, "Results on the demo data"): on the demo's
# held-out samples re-ranking tied the embedding ranking at R@5 and was at or
# below it at R@1 (it also costs a cross-encoder pass per candidate).
DEFAULT_PROTOCOL = "embedding"


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="opt-eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version_flag(p)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("retrieval", help="recall@1/5/10 for every direction among text, image and audio",
                       formatter_class=DefaultsHelpFormatter)
    _common(r)
    r.add_argument("--rerank", type=int, default=16,
                   help="candidates per query re-scored by similarity + the matching head, reported beside the "
                        "embedding ranking (0: embedding ranking only)")
    r.add_argument("--protocol", choices=("embedding", "rerank"), default=DEFAULT_PROTOCOL,
                   help="the headline protocol (the one under \"recall\" in --json and in opt-eval report); "
                        "both are always printed")
    m = sub.add_parser("matching", help="5-way matching accuracy (random and nearest-neighbour negatives) and "
                                        "pair AUCs, beside the content-blind baseline",
                       formatter_class=DefaultsHelpFormatter)
    _common(m)
    m.add_argument("--seed", type=int, default=0, help="seed of the random negatives")
    c = sub.add_parser("caption", help="captions from image, audio and both; BLEU-4, CIDEr, WER",
                       formatter_class=DefaultsHelpFormatter)
    _common(c)
    c.add_argument("--beam", type=int, default=3, help="beam width (1: greedy)")
    c.add_argument("--show", type=int, default=5, help="print this many example captions")
    q = sub.add_parser("vqa", help="VQA accuracy (official, per answer type) of a model fine-tuned with "
                                   "opt-train --task vqa, beside chance and the answer prior",
                       formatter_class=DefaultsHelpFormatter)
    _common(q)
    k = sub.add_parser("classify", help="top-1 and mAP of a model fine-tuned with opt-train --task classify, beside "
                                        "chance and the majority class", formatter_class=DefaultsHelpFormatter)
    _common(k)
    g = sub.add_parser("generate", help="text-to-image through the image decoder and the VQ decoder",
                       formatter_class=DefaultsHelpFormatter)
    _common(g, shards=False)
    g.add_argument("--prompt", action="append", default=[], help="a caption (repeat for several rows)")
    g.add_argument("--prompts-from", default=None, metavar="SHARDS",
                   help="also prompt with the captions of the first --num-prompts samples of these shards")
    g.add_argument("--num-prompts", type=int, default=3, help="captions taken from --prompts-from")
    g.add_argument("--n", type=int, default=4, help="images per prompt")
    g.add_argument("--top-k", type=int, default=50, help="sample each code from the k most likely")
    g.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    g.add_argument("--seed", type=int, default=0, help="sampling seed")
    g.add_argument("--out", required=True, help="PNG grid to write")
    rep = sub.add_parser("report", help="markdown tables from the JSON the other commands wrote (no model needed)",
                         formatter_class=DefaultsHelpFormatter)
    rep.add_argument("--eval-dir", required=True,
                     help="directory holding retrieval.json, caption.json and text_to_image.png")
    rep.add_argument("--run", default=None, help="also report this opt-train run's loss and samples/s (its out_dir)")
    rep.add_argument("--learning", default=None,
                     help="also report this opt-bench learning JSON (and the --plot PNG of the same name beside it)")
    rep.add_argument("--readme", default=None,
                     help="rewrite this file's results section (between its results markers) and copy the "
                          "images it shows (grid, learning plot) to docs/ beside it")
    return p


def _dist(device: str):
    """(rank, world, this rank's device) from torchrun/srun; the process group
    when world > 1. Under a launcher, ``--device cuda`` means this rank's GPU
    (LOCAL_RANK), never GPU 0 for every rank."""
    import torch
    import torch.distributed as dist
    from opt_scale.engine.distributed import backend, detect, prepare_environment
    env = detect()
    torch_device = torch.device(device)
    if torch_device.type == "cuda" and torch_device.index is None:
        torch_device = torch.device("cuda", env.local_rank)
    if torch_device.type == "cuda":
        torch.cuda.set_device(torch_device)  # before NCCL binds the rank to a GPU
    if env.world_size > 1 and not dist.is_initialized():
        prepare_environment(env)
        dist.init_process_group(backend())
    return env.rank, env.world_size, torch_device


def print_retrieval(result: dict) -> None:
    from opt_scale.bench.report import print_table
    rows = []
    for direction in result["by_protocol"]["embedding"]:
        row = {"direction": direction}
        for protocol, recall in result["by_protocol"].items():
            label = "emb" if protocol == "embedding" else f"rerank{result['rerank']}"
            row.update({f"{label} {k}": v for k, v in recall[direction].items()})
        rows.append(row)
    chance = ", ".join(f"{k} {v:.1f}" for k, v in result["chance"].items())
    print_table(rows, title=f"retrieval over {result['samples']} held-out samples, recall in % (chance: {chance}); "
                            f"emb = embedding similarity, rerank{result['rerank']} = its top {result['rerank']} "
                            f"re-scored by similarity + matching head; headline: {result['protocol']}")


def print_matching(result: dict) -> None:
    from opt_scale.bench.report import print_table
    blind = result["content_blind_accuracy"]
    rows = [{"negatives": way, "5-way accuracy": acc, "content-blind": blind,
             **{c: v for c, v in result["per_class_accuracy"][way].items()}} for way, acc in result["accuracy"].items()]
    print_table(rows, title=f"5-way matching over {result['samples']} held-out samples x 5 classes")
    rows = [{"pair": pair, **{f"AUC {way}": v for way, v in aucs.items()}, "content-blind": 0.5}
            for pair, aucs in result["pair_auc"].items()]
    print_table(rows, title="P(matched) of true pairs vs wrong pairs (AUC)")


def print_attributes(by_source: dict) -> None:
    from opt_scale.bench.report import print_table
    rows = [{"from": source, "attribute": attr, "accuracy": v["accuracy"], "chance": v["chance"],
             "content-blind": v["content_blind"]}
            for source, res in by_source.items() for attr, v in res["attributes"].items()]
    if rows:
        scored = next(iter(by_source.values()))
        print_table(rows, title=f"attributes named right, over {scored['samples']} single-object captions "
                                f"(demo vocabulary; {scored['skipped']} others skipped)")


def _labels(args: argparse.Namespace, net, batches, device, rank: int, result: dict) -> None:
    from opt_scale.bench.report import print_table
    from opt_scale.eval.labels_eval import gather_predictions, predict, score_classes, score_vqa
    try:
        keys, logits, targets = gather_predictions(*predict(net, batches, device))
    except ValueError as err:  # no label head: the wrong model for this command
        raise UsageError(f"{args.command}: --checkpoint {args.checkpoint}: {err}") from err
    if not targets:
        raise UsageError(f"{args.command}: --shards {args.shards} holds no labelled samples (build them from "
                         "`opt-shards pairs --format vqa|classes|imagefolder` records)")
    names = net.tasks.label.names
    if args.command == "vqa":
        result.update(score_vqa(names, logits, targets))
        if rank == 0:
            rows = [{"answer type": k, "questions": v["questions"], "accuracy": v["accuracy"],
                     "answer prior": v["answer_prior"]} for k, v in result["by_type"].items()]
            rows.append({"answer type": "all", "questions": result["samples"], "accuracy": result["accuracy"],
                         "answer prior": result["answer_prior"]})
            print_table(rows, title=f"VQA accuracy (%) over {result['samples']} held-out questions, "
                                    f"{len(names)} answers (chance {result['chance']:.1f}); answer prior = the best "
                                    "single answer per answer type")
    else:
        result.update(score_classes(names, logits, targets))
        if rank == 0:
            print_table([{"samples": result["samples"], "top-1": result["top1"], "chance": result["chance_top1"],
                          "majority": result["majority_top1"], "mAP": result["mAP"],
                          "mAP chance": result["chance_mAP"]}],
                        title=f"classification over {result['samples']} held-out samples, {len(names)} labels (%)")


def check_args(args: argparse.Namespace) -> None:
    """Flags, then paths: everything a user can get wrong, before a model is loaded."""
    from opt_scale.cli.inputs import at_least, eval_source, usable_device
    from opt_scale.data.sources import check_shard_spec
    from opt_scale.utils.input_paths import writable_dir
    if args.command == "generate":
        if not (args.prompt or args.prompts_from):
            raise UsageError("generate needs --prompt CAPTION (repeatable) or --prompts-from SHARDS")
        at_least(args.n, 1, "--n")
        at_least(args.num_prompts, 1, "--num-prompts")
        at_least(args.top_k, 0, "--top-k")
        if not args.temperature > 0:
            raise UsageError(f"--temperature must be positive, got {args.temperature:g}")
    else:
        at_least(args.batch_size, 1, "--batch-size")
        at_least(args.max_samples, 0, "--max-samples")
    if args.command == "caption":
        at_least(args.beam, 1, "--beam")
        at_least(args.show, 0, "--show")
    if args.command == "retrieval":
        at_least(args.rerank, 0, "--rerank")
    usable_device(args.device)
    eval_source(args.checkpoint, "--checkpoint")
    for flag in ("--shards", "--prompts-from"):
        spec = getattr(args, flag[2:].replace("-", "_"), None)
        if spec:
            check_shard_spec(spec, flag)
    for flag in ("--json", "--out"):
        path = getattr(args, flag[2:], None)
        if path:
            writable_dir(Path(path).parent, flag)


@reports_usage_errors("opt-eval")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "report":
        from opt_scale.eval.report import report
        try:
            print(report(args.eval_dir, args.run, args.learning, args.readme), end="")
        except (ValueError, FileNotFoundError) as err:  # a missing or unreadable input of the report
            raise UsageError(f"report: {err}") from err
        if args.readme:
            print(f"results section of {args.readme} rewritten")
        return 0
    if args.device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before anything imports deepspeed
    check_args(args)
    from opt_scale.bench.report import print_table
    from opt_scale.eval.load import load_for_eval
    from opt_scale.model.generation import OPTGenerator

    rank, world, device = _dist(args.device)
    loaded = load_for_eval(args.checkpoint, device)
    net, cfg, tok = loaded.net, loaded.config, loaded.tokenizer
    result: dict = {"command": args.command, "checkpoint": str(args.checkpoint)}
    if args.command == "generate":
        from opt_scale.eval.grid import image_grid
        prompts = list(args.prompt)
        if args.prompts_from:
            from opt_scale.eval.data import first_prompts
            prompts += first_prompts(args.prompts_from, args.num_prompts)
        grid = image_grid(OPTGenerator(net, tok), prompts, args.n, args.top_k, args.temperature, args.seed,
                          rank=rank, world_size=world)
        if rank == 0:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            grid.save(args.out)
            print(f"image grid: {args.out}")
        result.update(out=args.out, prompts=[p[0] if isinstance(p, tuple) else p for p in prompts],
                      reference_columns=2 if args.prompts_from else 0)
    else:
        from opt_scale.eval.data import iter_eval_batches
        batches = iter_eval_batches(args.shards, cfg.model, tok, args.batch_size, args.max_samples, rank, world)
        from tqdm import tqdm
        # A bar on a terminal (rank 0), nothing in logs and pipes (disable=None: off when not a TTY).
        batches = tqdm(batches, desc=f"opt-eval {args.command}", unit="batch", disable=None if rank == 0 else True)
        if args.command == "retrieval":
            from opt_scale.eval.retrieval import encode_set, evaluate_retrieval, gather_sets
            data = gather_sets(encode_set(net, batches, device))
            by_protocol = evaluate_retrieval(net, data, args.rerank, device, rank=rank, world_size=world)
            protocol = args.protocol if args.protocol in by_protocol else "embedding"
            result.update(samples=len(data), protocol=protocol, rerank=args.rerank, recall=by_protocol[protocol],
                          by_protocol=by_protocol, chance={f"R@{k}": 100 * min(1.0, k / len(data)) for k in (1, 5, 10)})
            if rank == 0:
                print_retrieval(result)
        elif args.command == "matching":
            from opt_scale.eval.matching_eval import evaluate_matching
            from opt_scale.eval.retrieval import encode_set, gather_sets
            data = gather_sets(encode_set(net, batches, device))
            result.update(evaluate_matching(net, data, device, args.seed, rank=rank, world_size=world))
            if rank == 0:
                print_matching(result)
        elif args.command in ("vqa", "classify"):
            _labels(args, net, batches, device, rank, result)
        else:
            from opt_scale.eval.captioning import SOURCES, caption_set, gather_captions, score_captions
            caps = gather_captions(caption_set(OPTGenerator(net, tok), batches, args.beam))
            result["samples"] = len(caps["keys"])
            result["scores"] = score_captions(caps)
            from opt_scale.eval.attributes import attribute_accuracy
            result["attributes"] = {s: attribute_accuracy(caps[s], caps["references"]) for s in SOURCES}
            result["examples"] = [{"reference": caps["references"][i], **{s: caps[s][i] for s in SOURCES}}
                                  for i in range(min(args.show, len(caps["keys"])))]
            if rank == 0:
                rows = [{"source": s, **v} for s, v in result["scores"].items()]
                # Columns named: only audio captions have a WER, and the first row is the image's.
                print_table(rows, ["source", "BLEU-4", "CIDEr", "WER"],
                            title=f"captioning over {result['samples']} held-out samples (beam {args.beam})")
                print_attributes(result["attributes"])
                for ex in result["examples"]:
                    print(f"\n  reference:   {ex['reference']}")
                    for s in SOURCES:
                        print(f"  {s + ':':<13}{ex[s]}")
    if args.json and rank == 0:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"results: {args.json}")
    from opt_scale.engine.distributed import shutdown
    shutdown(together=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
