"""Loader workers survive stop signals meant for their rank, and still end with it."""

import os
import signal
import subprocess
import sys
import time

# A DataLoader with one worker; the test signals the worker, then the script
# reads on and exits without closing the loader (an exit by exception does the same).
SCRIPT = r"""
import os, sys, torch
from torch.utils.data import DataLoader, IterableDataset
from opt_scale.data.worker_signals import ignore_stop_signals

class Count(IterableDataset):
    def __iter__(self):
        yield from range(10**9)

it = iter(DataLoader(Count(), batch_size=None, num_workers=1, worker_init_fn=ignore_stop_signals))
next(it)
print(it._workers[0].pid, flush=True)
sys.stdin.readline()              # the test signals the worker meanwhile
print(sum(next(it) for _ in range(5)), flush=True)
"""


def test_a_worker_ignores_sigterm_and_sigusr1_from_others_and_the_process_still_exits_promptly():
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        worker = int(proc.stdout.readline())
        os.kill(worker, signal.SIGTERM)   # from the test, not from the worker's parent
        os.kill(worker, signal.SIGUSR1)
        time.sleep(0.5)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=20)   # at exit torch ends the worker with its own SIGTERM
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert out.strip() == str(1 + 2 + 3 + 4 + 5)
    assert not os.path.exists(f"/proc/{worker}") or "zombie" in open(f"/proc/{worker}/status").read().lower()
