"""Exact resume: kill -9 mid-run, damaged checkpoints, NaN guard, world-size change."""

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections import defaultdict

import pytest

from opt_scale.bench.events import read_scalars
from opt_scale.engine.checkpoint import complete_checkpoints

from .conftest import REPO, run_cli, torchrun_args

LOSS_TAGS = ("loss/total", "loss/mlm", "loss/mvm", "loss/mam", "loss/dtr", "loss/dir", "loss/matching")


def losses_by_step(run_dir) -> dict[str, dict[int, float]]:
    """Per tag, step -> value; a step logged twice (before a kill and after
    the resume) keeps its last value."""
    scalars = read_scalars(run_dir / "tensorboard")
    return {tag: dict(scalars[tag]) for tag in LOSS_TAGS}


def samples_by_step(run_dir, ranks: int) -> dict[int, list[list[str]]]:
    steps = defaultdict(lambda: [None] * ranks)
    for rank in range(ranks):
        for line in (run_dir / "samples" / f"rank{rank}.jsonl").read_text().splitlines():
            rec = json.loads(line)
            steps[rec["step"]][rank] = rec["keys"]
    return dict(steps)


def overrides(base: list[str], out, *extra) -> list[str]:
    return [*[o for o in base if not o.startswith("train.out_dir=")], f"train.out_dir={out}",
            "train.log_samples=true", *extra]


def kill9_job(proc) -> None:
    """SIGKILL the launcher and every process under it at once, as a node failure or Slurm's cgroup kill
    does. torchrun starts each rank in its own session, so killing its process group alone leaves the
    ranks training on (and writing checkpoints) as orphans."""
    import psutil
    procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    os.killpg(proc.pid, signal.SIGKILL)
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    proc.wait(timeout=60)
    psutil.wait_procs(procs, timeout=60)


@pytest.mark.distributed
# CI runs the mixture (narratives and pairs, weighted, over two shard sets: the
# same engine, loader and cursor plus the mixture's); narratives alone repeat it
# for a minute more and run with `make test-slow`.
@pytest.mark.parametrize("data", [pytest.param("narratives", marks=pytest.mark.slow), "mixture"])
def test_kill9_and_resume_reproduces_the_uninterrupted_run(tiny_overrides, tmp_path, data, request):
    steps = ["train.steps=9", "train.checkpoint_every=2", "train.keep_checkpoints=0"]
    if data == "mixture":  # narratives 2 : 1 pairs (image-text and audio-text), weighted, over two shard sets
        mixed = request.getfixturevalue("mixed_shards")
        narratives = next(o for o in tiny_overrides if o.startswith("data.train_shards=")).split("=", 1)[1]
        tiny_overrides = [o for o in tiny_overrides if not o.startswith("data.train_shards=")] + [
            f"data.train_shards={narratives},{mixed / 'mix-index.json'}", "data.train_weights=2,1"]
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    run_cli(torchrun_args(2) + ["--config", "tiny", "--set", *overrides(tiny_overrides, ref, *steps)], timeout=600)

    # The same run, killed with SIGKILL (no chance to clean up) after step 5.
    proc = subprocess.Popen(torchrun_args(2) + ["--config", "tiny", "--set", *overrides(tiny_overrides, cut, *steps)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    log0 = cut / "samples" / "rank0.jsonl"
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None:
        if log0.exists() and len(log0.read_text().splitlines()) >= 5:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    kill9_job(proc)
    assert not (cut / "checkpoints" / "step_00000009").exists()
    # The newest checkpoint that survived the kill (step 4, or 6 if the kill came late): the resume must start
    # there. A restart from scratch logs the same losses, so only the log can tell them apart.
    newest = complete_checkpoints(cut / "checkpoints")[0]
    start = int(newest.name.removeprefix("step_"))
    assert start >= 4

    resumed = run_cli(torchrun_args(2) + ["--config", "tiny", "--set",
                                          *overrides(tiny_overrides, cut, *steps, "train.resume=auto")], timeout=600)
    assert f"resumed from {newest} (step {start}" in resumed.stdout, \
        [line for line in resumed.stdout.splitlines() if "resumed from" in line]
    trained = [int(m) for m in re.findall(r"opt_scale\.engine\.metrics: step (\d+)/9 ", resumed.stdout)]
    assert trained == list(range(start + 1, 10)), trained

    want, got = losses_by_step(ref), losses_by_step(cut)
    for tag in LOSS_TAGS:
        assert sorted(got[tag]) == list(range(1, 10))
        for step in range(1, 10):  # fp32 on CPU: equal to within 1e-6
            assert got[tag][step] == pytest.approx(want[tag][step], rel=1e-6, abs=1e-6), (tag, step)

    # The steps the killed run trained after its last checkpoint were dropped from the sample log: each step once.
    assert [json.loads(line)["step"] for line in (cut / "samples" / "rank0.jsonl").read_text().splitlines()] == \
        list(range(1, 10))
    want_keys, got_keys = samples_by_step(ref, 2), samples_by_step(cut, 2)
    assert got_keys == want_keys
    if data == "narratives":
        # 48 samples / (2 ranks x 1 worker x 4) = 6 steps per epoch: each sample exactly once.
        epoch0 = [k for s in range(1, 7) for rank_keys in got_keys[s] for k in rank_keys]
        assert len(epoch0) == len(set(epoch0)) == 48
    else:  # the resumed run read the weighted mixture (and said so)
        assert resumed.stdout.count("data mixture:") == 2, resumed.stdout[-3000:]


def test_damaged_newest_checkpoint_falls_back_to_the_previous(tiny_overrides, tmp_path):
    run = tmp_path / "run"
    base = overrides(tiny_overrides, run, "train.checkpoint_every=2", "train.keep_checkpoints=0")
    run_cli(["opt-train", "--config", "tiny", "--set", *base, "train.steps=4"], timeout=300)
    ckpts = run / "checkpoints"
    newest = ckpts / "step_00000004"
    optim = next(newest.glob("*optim_states.pt"))
    data = bytearray(optim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: same size, different content
    optim.write_bytes(bytes(data))
    (ckpts / "step_00000006").mkdir()  # an interrupted write: files but no COMPLETE marker
    (ckpts / "step_00000006" / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_bytes(b"partial")

    proc = run_cli(["opt-train", "--config", "tiny", "--set", *base, "train.steps=5", "train.resume=auto"],
                   timeout=300)
    out = proc.stdout + proc.stderr
    assert "step_00000004 is damaged" in out and "falling back" in out
    assert "resumed from" in out and "step_00000002" in out
    losses = losses_by_step(run)["loss/total"]
    assert max(losses) == 5
    # The run that went on from step 2 set the newer damaged directory aside and deleted the torn write (never
    # loadable, and on a full disk the space it holds is needed), so rotation and a later resume=auto see
    # only its own line of checkpoints.
    abandoned = list(ckpts.glob("abandoned-*"))
    assert len(abandoned) == 1 and sorted(p.name for p in abandoned[0].iterdir()) == ["step_00000004"]
    assert sorted(p.name for p in ckpts.glob("step_*")) == ["step_00000002", "step_00000004", "step_00000005"]

    # Started again once finished: nothing to train, and its checkpoint is left as it is.
    marker = (ckpts / "step_00000005" / "COMPLETE.json").read_text()
    again = run_cli(["opt-train", "--config", "tiny", "--set", *base, "train.steps=5", "train.resume=auto"],
                    timeout=300)
    assert "step_00000005" in again.stdout and (ckpts / "step_00000005" / "COMPLETE.json").read_text() == marker


def test_nan_steps_are_skipped_and_a_streak_aborts(tiny_overrides, tmp_path):
    run = tmp_path / "one"
    run_cli(["opt-train", "--config", "tiny", "--set", *overrides(tiny_overrides, run), "train.steps=4",
             "train.inject_nan_at=[2]"], timeout=300)
    scalars = read_scalars(run / "tensorboard")
    assert dict(scalars["train/skipped_steps"])[4] == 1
    lr = dict(scalars["train/lr"])
    assert lr[2] == lr[1]  # the skipped step did not advance the schedule

    proc = run_cli(["opt-train", "--config", "tiny", "--set", *overrides(tiny_overrides, tmp_path / "two"),
                    "train.steps=6", "train.inject_nan_at=[2,3,4]", "train.max_bad_steps=3"], timeout=300,
                   check=False)
    assert proc.returncode != 0
    assert "3 consecutive steps had non-finite loss" in proc.stdout + proc.stderr


@pytest.mark.distributed
def test_resume_on_a_different_world_size_uses_a_universal_checkpoint(tiny_overrides, tmp_path):
    run = tmp_path / "run"
    base = overrides(tiny_overrides, run, "train.checkpoint_every=3")
    run_cli(torchrun_args(2) + ["--config", "tiny", "--set", *base, "train.steps=3"], timeout=600)
    proc = run_cli(["opt-train", "--config", "tiny", "--set", *base, "train.steps=5", "train.resume=auto"],
                   timeout=600)
    out = proc.stdout + proc.stderr
    assert "universal checkpoint" in out and "resumed from" in out
    assert (run / "checkpoints" / "step_00000003.universal" / "COMPLETE.json").is_file()
    # The data continues where the two ranks left off: no sample of epoch 0 twice.
    seen = []
    for rank in range(2):
        for line in (run / "samples" / f"rank{rank}.jsonl").read_text().splitlines():
            seen += json.loads(line)["keys"]
    assert len(seen) == len(set(seen)) == 2 * 3 * 4 + 2 * 4
    assert max(dict(read_scalars(run / "tensorboard")["loss/total"])) == 5


def test_non_finite_weights_after_an_applied_step_stop_the_run(tiny_overrides, tmp_path):
    # Adam with eps=0 divides 0 by 0 where a gradient is exactly zero (embedding rows of tokens not in the
    # batch): the step's gradients are finite, so DeepSpeed applies it, and those weights become NaN. Without
    # the check the later steps are skipped as non-finite and the run exits 0 with NaN in its checkpoints.
    run = tmp_path / "run"
    proc = run_cli(["opt-train", "--config", "tiny", "--set", *overrides(tiny_overrides, run), "train.steps=3",
                    "train.eps=0", "train.checkpoint_every=1"], timeout=300, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "step 1: non-finite weights after the optimizer step" in out, out[-3000:]
    assert not (run / "checkpoints" / "step_00000001").exists()  # stopped before checkpointing them
