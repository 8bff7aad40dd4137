"""``opt-train``: pre-train an OPT model with DeepSpeed.

Runs as one process, as N local ranks it starts itself (``--nproc-per-node
N``: inputs checked once, then torch's elastic launcher in this process, see
opt_scale/cli/launch.py), under ``torchrun``, or as ``srun`` tasks (rank and
world size come from the environment). Examples::

    opt-train --config tiny --set data.train_shards=runs/demo/shards/demo-index.json \\
              --set data.tokenizer=runs/demo/tokenizer.model
    opt-train --nproc-per-node 2 --config tiny --set train.steps=50 ...

Exit codes: 0 trained to ``train.steps``; 2 bad configuration or input (one
line ``opt-train: error: ...`` naming the key or path, printed by rank 0),
including a ``train.out_dir`` that another run is using (locked) or that
holds an earlier run (continue it with ``train.resume=auto``, or start over
with ``train.overwrite=true``); 75 stopped early by SIGUSR1 or SIGTERM (to the
rank or to its whole process group) after writing a checkpoint: requeue the
job and it resumes with ``train.resume=auto`` (see
opt_scale/engine/preemption.py); 1 a crash, or torchrun itself died (its
ranks exit with it). These are each rank's codes, which srun and
``--nproc-per-node`` report (the launcher also exits 75 when it is sent
SIGTERM or SIGUSR1 itself and its ranks checkpoint); torchrun reports 1 for
any of them but 0, with a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

from opt_scale.utils.cli_errors import add_version_flag, reports_usage_errors
from opt_scale.tasks.registry import TASKS, task_overrides
from opt_scale.utils.config_tools import dumps


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="opt-train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version_flag(p)
    p.add_argument("--config", default="tiny",
                   help="preset name (tiny, small, base, large, xl) or a config.json written by an earlier run "
                        "(default: tiny)")
    p.add_argument("--set", dest="overrides", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                   help="dotted config overrides, e.g. --set train.steps=100 model.cross.layers=4; sections: "
                        "model.{text,vision,audio,cross,text_decoder,image_decoder,vq}, "
                        "tasks.{mlm,mvm,mam,modality_mask,dtr,dir,matching,contrastive,label}, data, train. "
                        "Unknown keys are refused. See --print-config for every key and its value")
    p.add_argument("--task", choices=TASKS, default=None,
                   help="what to train: pretrain (OPT, all pretext tasks), vq (the image tokenizer whose codes "
                        "MVM/DIR predict; writes <out_dir>/vq.safetensors), or fine-tune a pre-trained OPT "
                        "(train.init_from) for caption (from images), asr (from speech), retrieval "
                        "(contrastive + matching), vqa (answers from question + image; data.labels) or classify "
                        "(a linear layer on the frozen image tower; data.labels): sets train.task and, for "
                        "fine-tuning, the task weights, before any --set")
    p.add_argument("--nproc-per-node", "--nproc_per_node", type=int, default=None, metavar="N",
                   help="start N local ranks (torch's elastic launcher, in this process) after checking the "
                        "inputs once; exits with the ranks' meaning: 2 bad input, 75 checkpointed on a signal "
                        "(see opt_scale/cli/launch.py), where torchrun would report 1 and a traceback")
    # The `deepspeed` launcher passes --local_rank to every process; the rank
    # itself comes from the environment it also sets (LOCAL_RANK, RANK, WORLD_SIZE).
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, metavar="N",
                   help="accepted for the deepspeed launcher (the rank is read from LOCAL_RANK/RANK/WORLD_SIZE)")
    p.add_argument("--describe", action="store_true",
                   help="list every config key with its type, value (after --config and --set) and meaning, "
                        "and exit")
    p.add_argument("--print-config", action="store_true", help="print the resolved configuration as JSON and exit")
    p.add_argument("--print-model", action="store_true",
                   help="print parameters and FLOPs per sample for each part of the model (analytic; nothing is "
                        "allocated, so it works for xl on a laptop) and exit")
    return p


@reports_usage_errors("opt-train")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = [item for group in args.overrides for item in group]
    if args.task:
        overrides = [f"train.task={args.task}", *task_overrides(args.task), *overrides]
    if args.nproc_per_node is not None:
        from opt_scale.cli.launch import check_launch
        check_launch(args.nproc_per_node)
    from opt_scale.config import load_config
    cfg = load_config(args.config, overrides)
    if args.print_config:
        print(dumps(cfg))
        return 0
    if args.describe:
        from opt_scale.utils.config_docs import describe_keys
        rows = describe_keys(cfg)
        width = max(len(r["key"]) for r in rows)
        for r in rows:
            print(f"{r['key']:<{width}}  {r['type']:<17} {json.dumps(r['value']):<24} {r['meaning']}")
        return 0
    if args.print_model:
        from opt_scale.bench.report import print_table
        from opt_scale.model.flops import DEFAULT_VOCAB, model_table
        vocab = cfg.model.text.vocab_size or f"{DEFAULT_VOCAB} (assumed; set model.text.vocab_size)"
        print_table(model_table(cfg.model), ["part", "params_M", "fwd_GFLOP_per_sample", "train_GFLOP_per_sample"],
                    title=f"OPT {args.config}: vocab {vocab}, lengths text {cfg.model.text.max_len} / image "
                          f"{cfg.model.vision.num_patches} / audio {cfg.model.audio.max_seconds:g}s")
        return 0
    from opt_scale.engine.run_inputs import validate_run_inputs
    validate_run_inputs(cfg)  # before the trainer's imports, process group and engine: bad paths fail in a second
    if args.nproc_per_node is not None:   # the launcher: inputs checked once, before any rank starts
        from opt_scale.cli.launch import launch_local_ranks
        return launch_local_ranks("opt-train", args.nproc_per_node, args.config, overrides)
    from opt_scale.engine.trainer import train
    summary = train(cfg)
    from opt_scale.engine.distributed import detect, shutdown
    shutdown(together=True)  # every rank returned from train(): done with collectives
    from opt_scale.engine.preemption import REQUEUE_EXIT_CODE
    if detect().is_main:
        print("\n=== opt-train summary ===")
        print(f"steps            {summary.steps} ({summary.skipped_steps} skipped)")
        print(f"loss             {summary.first_loss:.4f} (first log window) -> {summary.last_loss:.4f} (last)")
        print(f"throughput       {summary.samples_per_s:.1f} samples/s")
        print(f"substituted      {summary.substituted_samples} samples (stand-ins for missing or corrupt ones)")
        print(f"checkpoint       {summary.checkpoint}")
        print(f"tensorboard      {summary.tensorboard}   (tensorboard --logdir {summary.tensorboard})")
        if summary.stop_signal:
            print(f"stopped early    on {summary.stop_signal} after step {summary.steps}: checkpointed; "
                  f"exit code {REQUEUE_EXIT_CODE} asks for a requeue (resume with train.resume=auto)")
    # Every rank returns it, so that srun reports it as the step's exit code.
    return REQUEUE_EXIT_CODE if summary.stop_signal else 0


if __name__ == "__main__":
    sys.exit(main())
