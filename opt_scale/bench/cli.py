"""``opt-bench``: reproducible throughput/memory figures, on a laptop CPU or an H100 node.

Every subcommand prints a table, writes JSON (``--json``), and with ``--plot``
draws a PNG; results carry the machine description.

Exit codes: 0 done; 1 a benchmark's own check failed; 2 bad options or input
(one line ``opt-bench: error: ...``).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from opt_scale.utils.cli_errors import DefaultsHelpFormatter, add_version_flag, reports_usage_errors

from .machine import describe
from .report import write_json

# subcommand -> module exposing add_arguments(parser) and run(args) -> dict
# (or None on the ranks that do not report, when srun starts one per rank)
SUBCOMMANDS: dict[str, str] = {
    "gpu-check": "opt_scale.bench.gpu_check",
    "kernels": "opt_scale.bench.kernels",
    "learning": "opt_scale.bench.learning",
    "loader": "opt_scale.bench.loader",
    "memory": "opt_scale.bench.memory",
    "plan": "opt_scale.bench.plan",
    "scaling": "opt_scale.bench.scaling",
    "shards": "opt_scale.bench.shards",
    "step": "opt_scale.bench.step",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="opt-bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version_flag(p)
    sub = p.add_subparsers(dest="command", required=True)
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        sp = sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0],
                            description=module.__doc__, formatter_class=DefaultsHelpFormatter)
        sp.add_argument("--json", default=f"runs/bench/{name}.json", help="where to write the results as JSON")
        sp.add_argument("--plot", default=None, metavar="PNG", help="also draw the results into this PNG")
        module.add_arguments(sp)
        sp.set_defaults(module=module)
    return p


@reports_usage_errors("opt-bench")
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        # Refused before the run, not after minutes of measuring.
        parser.error("--plot needs matplotlib: pip install 'opt-scale[plot]' (scripts/setup_env.sh installs it)")
    result = args.module.run(args)
    if result is None:  # one of several ranks (srun): rank 0 prints and writes the results
        return 0
    result["machine"] = describe()
    write_json(result, args.json)
    return 0 if result.get("ok", True) else 1


if __name__ == "__main__":
    sys.exit(main())
