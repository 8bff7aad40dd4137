"""A ConfigError raised on every rank after the process group exists (as
the trainer's own checks raise it: run directory in use, vocabulary against
the tokenizer, DeepSpeed file) must still end as one line from rank 0 and
exit 2 on every rank, with the group torn down instead of a warning.

usage: torchrun --nproc_per_node 2 config_error_after_init.py
"""

import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from opt_scale.utils.cli_errors import reports_usage_errors  # noqa: E402
from opt_scale.utils.config_tools import ConfigError  # noqa: E402


@reports_usage_errors("opt-train")
def main(argv=None) -> int:
    dist.init_process_group("gloo")
    flag = torch.ones(1)
    dist.all_reduce(flag)  # the group works: both ranks are past the rendezvous
    raise ConfigError(f"config key 'train.out_dir': refused on rank {dist.get_rank()} of {int(flag.item())}")


if __name__ == "__main__":
    sys.exit(main())
