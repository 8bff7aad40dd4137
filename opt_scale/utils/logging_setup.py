"""Rank-aware logging: rank 0 logs at INFO, other ranks only warnings."""

from __future__ import annotations

import logging
import os
import sys
import warnings


def setup_logging(rank: int = 0, level: int = logging.INFO) -> None:
    fmt = f"%(asctime)s [rank{rank}] %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level if rank == 0 else logging.WARNING, format=fmt, datefmt="%H:%M:%S",
                        stream=sys.stdout, force=True)
    # Libraries' chatter that says nothing actionable to our users.
    for name in ("DeepSpeed", "deepspeed", "torch.distributed", "torch._dynamo", "compilers"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*torch.distributed.(reduce_scatter_tensor|all_gather_into_tensor).*")
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
