"""Checkpoints on a full disk, in a read-only directory, damaged before export,
with stray files, and damaged on one rank of two."""

import contextlib
import json
import logging
import os
import shutil
import subprocess

import pytest

from opt_scale.engine import checkpoint
from opt_scale.engine.checkpoint import MARKER, complete_checkpoints, verify_files

from .conftest import run_cli, torchrun_args
from .test_resume import overrides


@contextlib.contextmanager
def tmpfs_at(path, options: str):
    """A real file system of a given size (or read-only) at ``path``: needs root."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (tests run unprivileged here)")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (no CAP_SYS_ADMIN?): {proc.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def error_lines(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("opt-train: error:")]


def test_disk_full_names_the_cause_removes_the_partial_write_and_keeps_the_previous(tiny_overrides, tmp_path):
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    base = overrides(tiny_overrides, run, "train.checkpoint_every=1", "train.keep_checkpoints=0")
    # One 1-rank tiny checkpoint is ~40 MB: 60 MB holds step 1 but not step 2 as well.
    with tmpfs_at(ckpts, "size=60m"):
        proc = run_cli(["opt-train", "--config", "tiny", "--set", *base, "train.steps=2"], timeout=300,
                       check=False)
        assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
        (line,) = error_lines(proc)
        assert "no space left on device" in line and str(ckpts / "step_00000002") in line, line
        assert "Traceback" not in proc.stderr
        # The partial write is gone (its space is free again), the previous checkpoint is whole.
        assert sorted(p.name for p in ckpts.iterdir() if p.name.startswith(("step_", "abandoned"))) == \
            ["step_00000001"]
        assert checkpoint.damaged_files(ckpts / "step_00000001") == []

        subprocess.run(["mount", "-o", "remount,size=200m", str(ckpts)], check=True)
        resumed = run_cli(["opt-train", "--config", "tiny", "--set", *base, "train.steps=2", "train.resume=auto"],
                          timeout=300)
        assert f"resumed from {ckpts / 'step_00000001'} (step 1" in resumed.stdout
        assert [p.name for p in complete_checkpoints(ckpts)] == ["step_00000002", "step_00000001"]


def test_a_read_only_checkpoint_directory_is_refused_at_start(tiny_overrides, tmp_path):
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    with tmpfs_at(ckpts, "ro,size=1m"):
        proc = run_cli(["opt-train", "--config", "tiny", "--set", *overrides(tiny_overrides, run), "train.steps=1"],
                       timeout=300, check=False)
    assert proc.returncode == 2
    (line,) = error_lines(proc)
    assert f"checkpoint directory {ckpts} is not writable" in line and "read-only file system" in line, line
    assert "step 1/1" not in proc.stdout  # refused before training


def copy_checkpoint(trained_run, dest):
    """A writable copy of the shared 2-rank run's step-4 checkpoint (never damage the fixture itself)."""
    tag_dir = dest / "checkpoints" / "step_00000004"
    shutil.copytree(trained_run / "checkpoints" / "step_00000004", tag_dir)
    shutil.copyfile(trained_run / "tokenizer.model", dest / "tokenizer.model")
    return tag_dir


def test_opt_export_refuses_a_checkpoint_with_flipped_bytes(trained_run, tmp_path):
    tag_dir = copy_checkpoint(trained_run, tmp_path / "run")
    shard = tag_dir / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    data = bytearray(shard.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 8):
        data[i] ^= 0x7F  # same size, different fp32 master weights
    shard.write_bytes(bytes(data))
    out = tmp_path / "export"
    proc = run_cli(["opt-export", str(tmp_path / "run"), "--out", str(out)], timeout=300, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("opt-export: error:"), proc.stderr
    assert f"{shard} differs from what was written" in lines[0]
    assert not (out / "model.safetensors").exists()


def test_stray_files_do_not_damage_a_complete_checkpoint_and_old_records_load(trained_run, tmp_path, caplog):
    tag_dir = copy_checkpoint(trained_run, tmp_path / "run")
    (tag_dir / ".nfs0000000000a1b2c300000001").write_bytes(b"silly-renamed by an NFS client")
    (tag_dir / "notes.txt").write_text("a user's file")
    assert checkpoint.damaged_files(tag_dir) == []
    assert verify_files(tag_dir, rank=0)  # one process: rank 0 checks every rank's files
    # A recorded file that is missing still is damage.
    (tag_dir / "zero_pp_rank_1_mp_rank_00_model_states.pt").unlink()
    assert not verify_files(tag_dir, rank=0)
    assert "zero_pp_rank_1_mp_rank_00_model_states.pt is missing" in checkpoint.damaged_files(tag_dir)[0]

    # A record written before content hashes: checked by size, loadable, with a warning.
    shutil.copyfile(trained_run / "checkpoints" / "step_00000004" / "zero_pp_rank_1_mp_rank_00_model_states.pt",
                    tag_dir / "zero_pp_rank_1_mp_rank_00_model_states.pt")
    marker = json.loads((tag_dir / MARKER).read_text())
    for entry in marker["files"].values():
        del entry["sha256"]
    (tag_dir / MARKER).write_text(json.dumps(marker))
    with caplog.at_level(logging.WARNING):
        assert checkpoint.damaged_files(tag_dir) == []
    assert "no content hash" in caplog.text


@pytest.mark.distributed
def test_a_file_missing_on_one_rank_makes_both_ranks_fall_back_together(tiny_overrides, tmp_path):
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    base = overrides(tiny_overrides, run, "train.checkpoint_every=1", "train.keep_checkpoints=0")
    run_cli(torchrun_args(2) + ["--config", "tiny", "--set", *base, "train.steps=2"], timeout=600)
    # Rank 1's optimizer partition of the newest checkpoint is gone; rank 0's files are all there.
    (ckpts / "step_00000002" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()

    proc = run_cli(torchrun_args(2) + ["--config", "tiny", "--set", *base, "train.steps=3", "train.resume=auto"],
                   timeout=600)
    out = proc.stdout + proc.stderr
    # Rank 1 found the damage; both ranks acted on it.
    assert f"[rank1] WARNING opt_scale.engine.checkpoint: rank 1: checkpoint {ckpts / 'step_00000002'} is damaged" \
        in out and "zero_pp_rank_1_mp_rank_00_optim_states.pt is missing" in out
    for rank in (0, 1):
        assert f"[rank{rank}] WARNING opt_scale.engine.checkpoint: skipping damaged checkpoint " \
               f"{ckpts / 'step_00000002'}" in out, rank
    assert f"resumed from {ckpts / 'step_00000001'} (step 1" in out
    # Both trained steps 2 and 3 again from step 1: each rank's sample log has each step once, and the
    # resumed run logged step 2 (a rank resuming from step 2 would have desynchronised the collectives).
    for rank in (0, 1):
        steps = [json.loads(line)["step"] for line in (run / "samples" / f"rank{rank}.jsonl").read_text().splitlines()]
        assert steps == [1, 2, 3], (rank, steps)
    assert "step 2/3" in proc.stdout and "step 1/3" not in proc.stdout
    assert [p.name for p in complete_checkpoints(ckpts)] == ["step_00000003", "step_00000002", "step_00000001"]


def test_the_weight_check_sees_every_kind_of_non_finite_value_and_no_false_alarm():
    import torch

    from opt_scale.engine.finite_weights import sums_finite
    base = torch.zeros(1000)
    assert sums_finite(base) and sums_finite(torch.full((1000,), 3e38))  # huge but finite: no overflow
    for bad in ([float("nan")], [float("inf")], [float("-inf")], [float("inf"), float("-inf")]):
        t = base.clone()
        t[:len(bad)] = torch.tensor(bad)
        assert not sums_finite(t), bad
        assert not sums_finite(t.to(torch.bfloat16)), bad
