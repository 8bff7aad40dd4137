"""Stop on a signal at an optimizer-step boundary that every rank agrees on.

Schedulers announce the end of a job with a signal: Slurm sends the one
chosen by ``--signal`` some minutes before the time limit (our sbatch script
turns it into SIGUSR1 for every task), and SIGTERM on preemption, on
``scancel`` and at the time limit itself, SIGKILL following after a grace
period. Killed mid-step, a run loses everything since its last periodic
checkpoint; so instead:

1. :meth:`PreemptionHandler.install` replaces the default action of SIGUSR1
   and SIGTERM (terminate) with a handler that only records the signal.
2. The training loop calls :meth:`PreemptionHandler.should_stop` once per
   optimizer step on every rank. It all-reduces (MAX) the signal number each
   rank has seen, so all ranks stop after the same step even when only some
   of them were signalled, or were signalled during different steps. A rank
   that went ahead alone would checkpoint a different step, or wait forever
   in the checkpoint's collectives for ranks that are still training.
3. The trainer saves a checkpoint and ``opt-train`` exits with
   :data:`REQUEUE_EXIT_CODE`, which ``slurm/pretrain.sbatch`` reads as
   "checkpointed, please requeue me"; the requeued run resumes from that
   checkpoint (``train.resume=auto``).

The check costs one all-reduce of one integer per step. SIGINT is left alone:
Ctrl-C still stops a local run at once.
"""

from __future__ import annotations

import logging
import os
import signal
from types import FrameType

import torch
import torch.distributed as dist

from .distributed import collective_device

log = logging.getLogger(__name__)

# sysexits.h EX_TEMPFAIL, "temporary failure, try again later": the run wrote
# a checkpoint because it was asked to stop and wants to be started again.
# Distinct from 0 (finished), 1 (crashed), 2 (bad config) and 128+N (killed
# by signal N); 124 is avoided because timeout(1) exits with it when it kills
# a command, which would then pass for a clean checkpoint.
REQUEUE_EXIT_CODE = os.EX_TEMPFAIL

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class PreemptionHandler:
    """Records stop signals; agrees across ranks on when to act on them.

    Use one per process, installed from the main thread (Python delivers
    signals there), before anything slow, so that an early signal is not
    fatal::

        preemption = PreemptionHandler().install()
        while training:
            ...one optimizer step...
            if preemption.should_stop(step):   # every rank, every step
                break
        save_checkpoint()
        preemption.release()
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS):
        self.signals = tuple(signals)
        self.received: signal.Signals | None = None      # first stop signal this rank got
        self.stop_signal: signal.Signals | None = None   # the one all ranks agreed to stop on
        self._previous: dict[signal.Signals, object] = {}
        self._announced = False

    def install(self) -> "PreemptionHandler":
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._record)
        return self

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def release(self) -> None:
        """Training is over. If it stopped on a signal, ignore stop signals
        from now on: this rank has checkpointed and is only exiting, and a
        SIGTERM now would turn its exit code into a death by signal. That
        SIGTERM is likely: srun ends the step as soon as the first rank exits
        with a non-zero code, and Python restores the default (fatal) action
        of handled signals while the interpreter shuts down, which can take
        seconds. Otherwise restore the handlers that were there before."""
        if self.stop_signal is None:
            self.uninstall()
            return
        for sig in self.signals:
            signal.signal(sig, signal.SIG_IGN)   # kept through interpreter shutdown
        self._previous.clear()

    def _record(self, signum: int, frame: FrameType | None) -> None:
        # Runs between two bytecodes of whatever the main thread was doing
        # (possibly inside logging or a collective): only record. A repeat
        # (srun forwards the signal that slurmstepd also delivers) is a no-op.
        if self.received is None:
            self.received = signal.Signals(signum)

    def should_stop(self, step: int) -> bool:
        """Collective: True on every rank once any rank has received a stop
        signal. Call it at the same point of every optimizer step on every
        rank; ``step`` (the step just finished) is only used in the log."""
        local = int(self.received) if self.received is not None else 0
        if self.received is not None and not self._announced:
            self._announced = True
            # WARNING: ranks other than 0 log only warnings.
            log.warning("rank %d received %s during step %d", _rank(), self.received.name, step)
        agreed = _all_reduce_max(local)
        if agreed and self.stop_signal is None:
            self.stop_signal = signal.Signals(agreed)
            if _rank() == 0:
                log.warning("%s: every rank stops after step %d, writes a checkpoint and exits with code %d "
                            "(requeue me)", self.stop_signal.name, step, REQUEUE_EXIT_CODE)
        return self.stop_signal is not None


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _all_reduce_max(value: int) -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return value
    flag = torch.tensor([value], dtype=torch.int32, device=collective_device())
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())
