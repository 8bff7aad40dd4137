"""``opt-train --nproc-per-node N``: local ranks whose exit code reaches the shell.

Stock torchrun reports 1 and a traceback for any failed rank; this launch
mode keeps the ranks' meaning: 2 for bad input (one line), 75 for a stop on a
signal after a checkpoint.
"""

import pytest

from opt_scale.engine.preemption import REQUEUE_EXIT_CODE
from opt_scale.utils.cli_errors import EXIT_USAGE

from .conftest import BIN, run_cli, sigterm_group_after_steps


def test_bad_input_is_one_line_and_exit_2_before_any_rank_is_spawned(tmp_path):
    # A rank would log its start-up ("Rendezvous", "Starting elastic_operator", the trainer's lines):
    # stderr holding nothing but the error line shows that nothing was spawned.
    missing = tmp_path / "nope.model"
    proc = run_cli(["opt-train", "--nproc-per-node", "2", "--config", "tiny", "--set",
                    f"data.train_shards={tmp_path / 'nope-index.json'}", f"data.tokenizer={missing}",
                    f"train.out_dir={tmp_path / 'run'}"], check=False, timeout=60)
    assert proc.returncode == EXIT_USAGE, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("opt-train: error: "), proc.stderr[-3000:]
    assert "data.train_shards" in lines[0]
    assert not (tmp_path / "run").exists()


def test_the_underscore_spelling_and_a_bad_rank_count_are_accepted_and_refused(tmp_path):
    proc = run_cli(["opt-train", "--nproc_per_node", "0", "--config", "tiny"], check=False, timeout=60)
    assert proc.returncode == EXIT_USAGE
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("opt-train: error: ") and "--nproc-per-node" in lines[0], lines


@pytest.mark.distributed
def test_an_error_only_the_ranks_see_is_one_line_and_exit_2_without_traceback(tiny_overrides, tmp_path):
    # A fresh run into a directory that holds an earlier run's checkpoint: the
    # parent's checks pass (the directory is writable), the ranks refuse it.
    used = tmp_path / "run" / "checkpoints" / "step_00000001"
    used.mkdir(parents=True)
    (used / "COMPLETE.json").write_text("{}")
    proc = run_cli([str(BIN / "opt-train"), "--nproc-per-node", "2",
                    "--config", "tiny", "--set", *tiny_overrides, "train.steps=2"], check=False, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == EXIT_USAGE, out[-4000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("opt-train: error: ")]
    assert len(errors) == 1 and "train.out_dir" in errors[0] and "earlier run" in errors[0], out[-4000:]
    assert "Traceback" not in out and "ChildFailedError" not in out, out[-4000:]
    assert "opt-train: rank" not in out   # no crash summary for bad input


@pytest.mark.distributed
def test_sigterm_to_the_process_group_checkpoints_and_exits_75(tiny_overrides, tmp_path):
    """What scancel or a Slurm time limit do to a job step running the launcher."""
    run = tmp_path / "run"
    args = [str(BIN / "opt-train"), "--nproc-per-node", "2", "--config", "tiny",
            "--set", *tiny_overrides, "data.num_workers=1", "train.log_samples=true", "train.steps=40"]
    out, returncode = sigterm_group_after_steps(args, run)
    assert returncode == REQUEUE_EXIT_CODE, out[-4000:]
    assert "Traceback" not in out and "ChildFailedError" not in out and "SignalException" not in out, out[-4000:]
    assert "stopped early    on SIGTERM after step" in out, out[-4000:]
    markers = sorted(run.glob("checkpoints/step_*/COMPLETE.json"))
    assert markers, out[-4000:]

