"""Resumability: after kill -9 at any moment, a rerun gives exactly the uninterrupted output."""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from .conftest import BIN, REPO, build_outputs, prep_build_args, run_cli


def _start(args: list[str]) -> subprocess.Popen:
    """Start a build in its own session, so its whole process tree can be watched."""
    return subprocess.Popen([str(BIN / args[0]), *args[1:]], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the build ended before the kill point:\n{proc.stderr.read()[-3000:]}")
        if time.time() > deadline:
            raise TimeoutError("kill point not reached")
        time.sleep(0.003)


def _live_members(session: int) -> list[int]:
    """Processes of a session that are not zombies (PID 1 here may never reap them)."""
    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[3]) == session:  # state, ..., session id
            live.append(int(stat.parent.name))
    return live


def _kill9(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 30
    while _live_members(proc.pid):  # the workers die with the main process (PR_SET_PDEATHSIG)
        assert time.time() < deadline, f"processes outlived the killed build: {_live_members(proc.pid)}"
        time.sleep(0.05)


def _finished(out: Path) -> int:
    return len(list(out.rglob("*.stats.json")))


def _temps(out: Path) -> list[str]:
    return [p.name for p in out.rglob("*") if ".tmp-" in p.name]


def test_kill_9_twice_mid_build_then_rerun_equals_the_uninterrupted_build(prep_raw, prep_reference, tmp_path):
    out = tmp_path / "killed"
    args = prep_build_args(prep_raw, out, "--workers", "2")
    total = len(list(prep_reference.dir.glob("*.stats.json")))

    # Kill 1: while the first shards are being written.
    proc = _start(args)
    _wait_for(lambda: out.is_dir() and any(".tar.tmp-" in name for name in _temps(out)), proc)
    _kill9(proc)
    assert any(".tar.tmp-" in name for name in _temps(out))  # a half-written shard was left behind
    done_after_first = _finished(out)
    assert done_after_first < total and not (out / "shard-index.json").exists()

    # Kill 2: the rerun skips what is finished; kill it again after two more shards.
    proc = _start(args)
    _wait_for(lambda: _finished(out) >= done_after_first + 2, proc)
    _kill9(proc)
    done_after_second = _finished(out)
    assert done_after_second < total and not (out / "shard-index.json").exists()

    # The last rerun finishes: exactly the uninterrupted output, no temporaries left.
    proc = run_cli(args)
    assert f"{done_after_second} already finished (skipped)" in proc.stdout
    assert _temps(out) == []
    assert build_outputs(out) == build_outputs(prep_reference.dir)


def test_rerun_repairs_every_state_a_crash_can_leave(prep_raw, prep_reference, tmp_path):
    out = tmp_path / "crashed"
    shutil.copytree(prep_reference.dir, out)
    # Killed after the tar was renamed into place, before its failures file and sidecar.
    (out / "shard-000001.stats.json").unlink()
    (out / "shard-000001.failures.jsonl").unlink()
    # Killed mid-write, on another host of the cluster: stale temporaries, no sidecar.
    (out / "shard-000002.stats.json").unlink()
    (out / "shard-000002.tar.tmp-othernode-4242").write_bytes(b"\0" * 1000)
    (out / "shard-000002.stats.json.tmp-othernode-4242").write_text("{")
    # A finished shard whose tar no longer matches its sidecar (e.g. overwritten by hand).
    with open(out / "shard-000003.tar", "ab") as f:
        f.write(b"\0" * 512)
    # A sidecar of another build.
    stats = json.loads((out / "heldout" / "shard-heldout-000000.stats.json").read_text())
    (out / "heldout" / "shard-heldout-000000.stats.json").write_text(json.dumps({**stats, "build_id": "0" * 16}))
    # Killed before the index merge, or during it, or while writing the manifest.
    (out / "shard-index.json").unlink()
    (out / "failures.jsonl").unlink()
    for name in ("shard-index.json", "failures.jsonl", "shard-build.json"):
        (out / f"{name}.tmp-othernode-77").write_text("partial")

    proc = run_cli(prep_build_args(prep_raw, out, "--workers", "1"))
    assert "4 shard(s) built" in proc.stdout
    assert _temps(out) == []
    assert build_outputs(out) == build_outputs(prep_reference.dir)


def test_index_refuses_an_unfinished_build_unless_told(prep_reference, tmp_path):
    out = tmp_path / "partial"
    shutil.copytree(prep_reference.dir, out)
    (out / "shard-000002.stats.json").unlink()
    proc = run_cli(["opt-shards", "index", str(out)], check=False)
    assert proc.returncode == 1 and "shard-000002.tar" in proc.stderr
    run_cli(["opt-shards", "index", str(out), "--allow-incomplete", "--max-failure-rate", "1"])
    urls = [s["url"] for s in json.loads((out / "shard-index.json").read_text())["shardlist"]]
    assert "shard-000002.tar" not in urls and "shard-000003.tar" in urls
