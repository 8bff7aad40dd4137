"""``opt-train --nproc-per-node N``: start N local ranks and report what they meant.

Stock ``torchrun`` exits 1 and prints a ``ChildFailedError`` traceback when
any rank fails, whatever the rank's code; so 2 (bad input: fix the command)
and 75 (checkpointed on SIGTERM/SIGUSR1: requeue me) are lost to a script or
a scheduler. This mode runs torch's own elastic launcher in this process
(``torch.distributed.run.run``, not its ``main``, which is what prints the
traceback) and maps the ranks' codes onto the launcher's:

* 2 when any rank exited 2: the rank-0 line ``opt-train: error: ...`` was
  already printed by that rank;
* 75 when the ranks stopped on a signal, checkpointed and exited 75, also when
  the launcher itself got the SIGTERM (Slurm signals the whole process
  group) and torch's agent passed it on and waited for the ranks;
* otherwise 1 and one line per failed rank.

SIGUSR1 (Slurm's early warning) sent to the launcher alone is passed on to
each rank's process group, as the agent does with SIGTERM. The agent waits
``TORCH_ELASTIC_SHUTDOWN_TIMEOUT`` seconds (default here
:data:`SHUTDOWN_TIMEOUT_S`) for ranks told to stop before it kills them: a
checkpoint of a large model takes longer than torch's 30.

The caller has validated the inputs: bad input fails before any rank starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator
from types import FrameType

from opt_scale.utils.cli_errors import EXIT_USAGE, UsageError

RANK_MODULE = "opt_scale.cli.train"
SHUTDOWN_TIMEOUT_S = 120
EXIT_CRASH = 1
# The logger that reports a failed rank at ERROR; quiet for the codes a rank uses on purpose.
_FAILURE_LOGGER = "torch.distributed.elastic.multiprocessing.api"


def check_launch(nproc: int) -> None:
    """Refuse a launch that cannot work, before the config is even read."""
    if nproc < 1:
        raise UsageError(f"--nproc-per-node: need at least 1 rank, got {nproc}")
    if os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get("LOCAL_RANK"):
        raise UsageError("--nproc-per-node starts its own ranks: run it directly, not under torchrun "
                         "(or drop the flag and let torchrun start the ranks)")


def launch_local_ranks(prog: str, nproc: int, config: str, overrides: list[str]) -> int:
    """Run ``opt-train --config <config> --set <overrides>`` as ``nproc`` local ranks; return the launcher's
    exit code. The ranks get the resolved overrides (``--task`` included), not the command line, so no
    spelling of the launch flag reaches them."""
    check_launch(nproc)
    rank_argv = ["--config", config, *(["--set", *overrides] if overrides else [])]
    from torch.distributed import run as torch_run
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from opt_scale.engine.preemption import REQUEUE_EXIT_CODE

    launcher_args = ["--standalone", f"--nproc-per-node={nproc}"]
    if "TORCH_ELASTIC_SHUTDOWN_TIMEOUT" not in os.environ:
        launcher_args.append(f"--shutdown-timeout={SHUTDOWN_TIMEOUT_S}")
    args = torch_run.parse_args([*launcher_args, "-m", RANK_MODULE, *rank_argv])
    ranks = _Ranks()
    stopped_by: str | None = None
    codes: dict[int, int | None] = {}
    try:
        with (_quiet_failures_of((EXIT_USAGE, REQUEUE_EXIT_CODE)), ranks.watching(),
              ranks.forwarding(prog, signal.SIGUSR1)):
            torch_run.run(args)
            return 0
    except ChildFailedError as err:
        codes = {rank: failure.exitcode for rank, failure in err.failures.items()}
    except SignalException as err:
        # The agent has passed the signal on and waited for the ranks (or killed them): their codes say
        # whether they checkpointed.
        stopped_by = signal.Signals(err.sigval).name
        codes = ranks.exit_codes
    finally:
        _ignore_stop_signals()   # only exiting now: a late SIGTERM must not turn 75 into a traceback
    failed = {rank: code for rank, code in codes.items() if code != 0}
    if not failed and codes:
        return 0
    if EXIT_USAGE in failed.values():
        return EXIT_USAGE
    if failed and all(code == REQUEUE_EXIT_CODE for code in failed.values()):
        return REQUEUE_EXIT_CODE
    if stopped_by:
        print(f"{prog}: stopped by {stopped_by}", file=sys.stderr)
    for rank, code in sorted(failed.items()):
        print(f"{prog}: rank {rank} {_describe(code)}; see its output above", file=sys.stderr)
    if not codes:
        print(f"{prog}: the ranks' exit codes are unknown", file=sys.stderr)
    return EXIT_CRASH


def _describe(code: int | None) -> str:
    if code is None:
        return "did not exit"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


class _Ranks:
    """The rank processes of the agent that ``torch.distributed.run.run`` builds and does not return.

    ``launcher.api`` constructs ``LocalElasticAgent`` by name; while
    :meth:`watching`, that name is a subclass that remembers the agent and,
    each time it shuts its ranks down, their exit codes: the codes of ranks
    stopped by a signal sent to the launcher exist nowhere else, as the
    agent raises the signal rather than a ``ChildFailedError``."""

    def __init__(self) -> None:
        self.agent = None
        self.exit_codes: dict[int, int | None] = {}

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent
        from torch.distributed.launcher import api

        ranks = self

        class RecordingAgent(LocalElasticAgent):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                ranks.agent = self

            def _shutdown(self, *args, **kwargs) -> None:
                super()._shutdown(*args, **kwargs)
                # One node: the local rank is the rank.
                handlers = getattr(self._pcontext, "subprocess_handlers", None) or {}
                ranks.exit_codes = {rank: h.proc.returncode for rank, h in handlers.items()}

        api.LocalElasticAgent = RecordingAgent
        try:
            yield
        finally:
            api.LocalElasticAgent = LocalElasticAgent

    def pids(self) -> list[int]:
        pcontext = getattr(self.agent, "_pcontext", None)
        return list(pcontext.pids().values()) if pcontext is not None else []

    @contextlib.contextmanager
    def forwarding(self, prog: str, sig: signal.Signals) -> Iterator[None]:
        """Pass ``sig`` on to each rank's process group (a rank is a session leader, as torch starts it;
        loader workers ignore SIGUSR1) instead of dying of it."""
        def forward(signum: int, frame: FrameType | None) -> None:
            pids = self.pids()
            if not pids:
                print(f"{prog}: {sig.name} before the ranks started: ignored", file=sys.stderr, flush=True)
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, sig)

        previous = signal.signal(sig, forward)
        try:
            yield
        finally:
            signal.signal(sig, previous)


def _ignore_stop_signals() -> None:
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)


@contextlib.contextmanager
def _quiet_failures_of(codes: tuple[int, ...]) -> Iterator[None]:
    """Drop the agent's ERROR line "failed (exitcode: C) local_rank: ..." for codes a rank exits with on
    purpose (it has printed why); a crash keeps it."""
    def keep(record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and str(record.msg).startswith("failed (exitcode")
                    and isinstance(record.args, tuple) and record.args and record.args[0] in codes)

    logger = logging.getLogger(_FAILURE_LOGGER)
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)
