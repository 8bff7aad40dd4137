"""``opt-export``: consolidate a DeepSpeed checkpoint into single-file fp32 weights.

Writes ``model.safetensors`` (fp32, recovered from the ZeRO partitions by
DeepSpeed's zero_to_fp32; tied weights stored once), ``config.json``, and
copies of the tokenizer and VQ tokenizer, so that one CPU process can
evaluate and generate from the directory (``opt-eval``, ``OPTGenerator``).

Exit codes: 0 exported; 2 bad input (one line ``opt-export: error: ...``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from opt_scale.utils.cli_errors import add_version_flag, reports_usage_errors


@reports_usage_errors("opt-export")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="opt-export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version_flag(p)
    p.add_argument("checkpoint", metavar="CHECKPOINT",
                   help="a checkpoint directory (…/checkpoints/step_00000300) or a run directory "
                        "(its newest complete checkpoint is used)")
    p.add_argument("--out", required=True, help="output directory")
    args = p.parse_args(argv)
    import os
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from opt_scale.cli.inputs import checkpoint_source
    from opt_scale.utils.input_paths import writable_dir
    checkpoint_source(args.checkpoint, "CHECKPOINT")
    writable_dir(args.out, "--out")
    from opt_scale.engine.checkpoint import CheckpointError
    from opt_scale.engine.export import export_checkpoint
    try:
        out = export_checkpoint(args.checkpoint, args.out)
    except CheckpointError as err:
        print(f"opt-export: error: {err}", file=sys.stderr)
        return 2
    print(f"exported to {out}: {', '.join(sorted(p.name for p in Path(out).iterdir()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
