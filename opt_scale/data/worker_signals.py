"""Stop signals in DataLoader workers: the rank decides, the workers carry on.

Slurm (scancel, a time limit, preemption) and torchrun (which signals each
rank's process group) send SIGTERM to every process, loader workers
included. torch's worker handler exits only when the sender is the worker's
own parent (that is how the DataLoader ends a worker at interpreter exit) and
otherwise dies of the signal; the rank's next batch then fails with
``DataLoader worker ... is killed by signal: Terminated`` before it can
finish its step and checkpoint (opt_scale/engine/preemption.py). SIGUSR1's
default action kills a worker as well.

So each worker keeps that one rule and drops the other: SIGTERM from its
parent still ends it at once, SIGTERM from anyone else and SIGUSR1 are
ignored. The rank stops its workers when it is done (``TrainLoader.close``),
and torch's own watchdog ends a worker whose rank has died.

Python signal handlers do not see the sender, so SIGTERM is blocked in the
worker and a thread takes it with ``sigwaitinfo``, which does. Its
disposition stays a (no-op) handler, not SIG_IGN: an ignored signal is
discarded on arrival and ``sigwaitinfo`` would never see the parent's.
"""

from __future__ import annotations

import os
import signal
import threading


def ignore_stop_signals(worker_id: int) -> None:
    """``worker_init_fn`` of the training DataLoader (runs in the worker's main thread)."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: None)   # a thread that does not block it: ignored
    # Threads started from here on (the queue's feeder thread) inherit the mask.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(target=_exit_on_sigterm_from_parent, args=(os.getppid(),), name="sigterm-from-parent",
                     daemon=True).start()


def _exit_on_sigterm_from_parent(rank_pid: int) -> None:
    while True:
        info = signal.sigwaitinfo({signal.SIGTERM})
        # A worker whose rank has died has no one to wait for: any SIGTERM ends it.
        if info.si_pid == rank_pid or os.getppid() != rank_pid:
            os._exit(0)   # what torch's own handler does for its parent's SIGTERM
