"""Periodic evaluation (PeriodicEvaluator._evaluate) of one exported model,
by one process or by every rank of a torchrun group sharing the work; rank 0
writes the metrics as JSON, the text-to-image grid as a checksum, and what
each rank computed: samples encoded and rows through the cross-modal encoder.

usage: shared_eval.py EXPORT_DIR EVAL_SHARDS SAMPLES OUT.json
"""

import json
import os
import sys

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import opt_scale.eval.retrieval as retrieval  # noqa: E402
from opt_scale.engine.periodic_eval import PeriodicEvaluator  # noqa: E402
from opt_scale.eval.load import load_for_eval  # noqa: E402
from opt_scale.model.opt import OPTModel  # noqa: E402

WORK = {"encoded": 0, "fused_rows": 0}


def count_work() -> None:
    encode_set, fuse = retrieval.encode_set, OPTModel.fuse

    def counting_encode(net, batches, device):
        batches = list(batches)
        WORK["encoded"] += sum(len(b.keys) for b in batches)
        return encode_set(net, batches, device)

    def counting_fuse(self, towers, keep):
        WORK["fused_rows"] += int(keep.shape[0])
        return fuse(self, towers, keep)

    retrieval.encode_set, OPTModel.fuse = counting_encode, counting_fuse


def main() -> None:
    export, shards, samples, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    torch.set_num_threads(1)
    if "RANK" in os.environ:
        dist.init_process_group("gloo")
    loaded = load_for_eval(export)
    cfg = loaded.config
    cfg.data.eval_shards, cfg.train.eval_samples = shards, samples
    rank = dist.get_rank() if dist.is_initialized() else 0
    evaluator = PeriodicEvaluator(cfg, None, loaded.net.vq, loaded.tokenizer, None, rank == 0)
    count_work()
    metrics = evaluator._evaluate(loaded.net.state_dict())
    work = [WORK]
    if dist.is_initialized():
        work = [None] * dist.get_world_size()
        dist.all_gather_object(work, WORK)
    if rank == 0:
        grid = metrics.pop("eval/grid", None)
        result = {"metrics": {k: v for k, v in metrics.items() if not isinstance(v, str)},
                  "examples": metrics.get("eval/examples", ""),
                  "grid": None if grid is None else [list(grid.shape), int(np.asarray(grid, dtype=np.int64).sum())],
                  "work": work}
        with open(out, "w") as f:
            json.dump(result, f)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
