"""Bad input ends a command with one line and exit code 2, from every console script.

A user who mistyped a path needs the one line that says which key, flag or
path to fix, not a traceback; under torchrun or srun every rank would print
that traceback again. ``@reports_usage_errors("opt-train")`` on a console
script's ``main`` turns a :class:`ConfigError` (bad config key or value) or
a :class:`UsageError` (bad flag, path or input file; a ConfigError too)
into ``opt-train: error: <message>`` printed by rank 0 alone, and exit code
2 on every rank: srun reports the highest exit code of the step's tasks, so
a job step with bad input ends with 2. (torchrun reports 1 for any failed
rank, whatever its code, and adds its own summary of the ranks' codes.)

Anything else is a bug or a failure of the machine and keeps its traceback.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable

from opt_scale.utils.config_tools import ConfigError

EXIT_USAGE = 2


class UsageError(ConfigError):
    """A flag, a path or an input file given to a command is unusable; the message names it."""


def reports_usage_errors(prog: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorate ``main(argv=None) -> int`` of the console script ``prog``."""
    def decorate(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            try:
                return main(argv)
            except ConfigError as err:
                if launcher_rank() == 0:
                    print(error_line(prog, err), file=sys.stderr, flush=True)
                _leave_process_group()
                return EXIT_USAGE
        return run
    return decorate


def error_line(prog: str, err: BaseException) -> str:
    # One line, whatever the message: a log grep or a CI summary shows all of it.
    return f"{prog}: error: " + " ".join(str(err).split())


def launcher_rank() -> int:
    """This process's rank as torchrun (RANK) or srun (SLURM_PROCID) numbers it; 0 alone.

    Read from the environment, as opt_scale.engine.distributed.detect does,
    without importing torch: the error may come before anything needs it."""
    for var in ("RANK", "SLURM_PROCID"):
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return 0


def _leave_process_group() -> None:
    """An error raised after the process group was set up (the trainer's own
    checks): tear it down, so that NCCL prints no warning about a group never
    destroyed on the way out."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def add_version_flag(parser) -> None:
    """``--version``: the package version, as every command prints it."""
    from opt_scale import __version__
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` that states an option's default only when it has a real one:
    not for required options, options without a value (None, "", []) or
    on/off switches, where "(default: None)" / "(default: False)" would say nothing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        default = action.default
        if action.required or default is None or default is argparse.SUPPRESS or default in ("", []) \
                or isinstance(default, bool) or "%(default)" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)
