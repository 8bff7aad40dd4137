"""Resuming on another number of ranks: the ranks other than 0 wait for rank
0's universal conversion on the file system, not in a collective whose
timeout a large model's conversion could outlast, and fail with rank 0's
reason when it fails."""

import json
import os
import threading
import time

import pytest

from opt_scale.engine.checkpoint import MARKER, ensure_universal


def checkpoint(tmp_path, written_at: float = 1234.5):
    tag_dir = tmp_path / "checkpoints" / "step_00000003"
    tag_dir.mkdir(parents=True)
    (tag_dir / MARKER).write_text(json.dumps({"step": 3, "world_size": 2, "time": written_at, "files": {}}))
    return tag_dir


def later(seconds: float, action) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(seconds), action()))
    thread.start()
    return thread


def test_a_waiting_rank_returns_once_rank_0_has_converted(tmp_path):
    tag_dir = checkpoint(tmp_path)
    out = tag_dir.with_name("step_00000003.universal")

    def convert():
        out.mkdir()
        (out / MARKER).write_text(json.dumps({"source_time": 1234.5}))

    thread = later(0.3, convert)
    started = time.time()
    assert ensure_universal(tag_dir, rank=1, poll_seconds=0.05) == out
    assert time.time() - started >= 0.25
    thread.join()


def test_a_conversion_of_an_older_save_of_the_same_step_is_not_taken(tmp_path):
    tag_dir = checkpoint(tmp_path, written_at=2000.0)
    out = tag_dir.with_name("step_00000003.universal")
    out.mkdir()
    (out / MARKER).write_text(json.dumps({"source_time": 1234.5}))  # converted from the step's earlier write
    thread = later(0.3, lambda: (out / MARKER).write_text(json.dumps({"source_time": 2000.0})))
    started = time.time()
    ensure_universal(tag_dir, rank=1, poll_seconds=0.05)
    assert time.time() - started >= 0.25
    thread.join()


def test_a_waiting_rank_fails_with_rank_0s_reason(tmp_path):
    tag_dir = checkpoint(tmp_path)
    failed = tag_dir.with_name("step_00000003.universal.failed")
    failed.write_text("an old failure\n")
    os.utime(failed, (time.time() - 3600, time.time() - 3600))  # a previous run's: ignored
    thread = later(0.3, lambda: failed.write_text("converting ... failed: No space left on device\n"))
    with pytest.raises(RuntimeError, match="rank 0 could not convert .*No space left on device"):
        ensure_universal(tag_dir, rank=1, poll_seconds=0.05)
    thread.join()


def test_rank_0_records_a_failed_conversion_for_the_others(tmp_path):
    tag_dir = checkpoint(tmp_path)  # no DeepSpeed files: the converter fails
    with pytest.raises(RuntimeError, match="universal checkpoint failed"):
        ensure_universal(tag_dir, rank=0)
    failed = tag_dir.with_name("step_00000003.universal.failed")
    assert "universal checkpoint failed" in failed.read_text()
    assert not tag_dir.with_name("step_00000003.universal").exists()
