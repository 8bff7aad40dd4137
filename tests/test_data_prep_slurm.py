"""slurm/build_shards.sbatch, run as Slurm would run its array tasks (environment simulated)."""

import os
import subprocess

from .conftest import BIN, PREP_BUILD_ARGS, REPO, build_outputs

SCRIPT = REPO / "slurm" / "build_shards.sbatch"


def _env(raw, out, **extra) -> dict:
    """The sbatch knobs that reproduce the reference build (PREP_BUILD_ARGS)."""
    from opt_scale.data_prep.demo_inputs import CSV_FILE
    args, knobs = list(PREP_BUILD_ARGS), {}
    for flag, knob in (("--holdout", "HOLDOUT"), ("--max-failure-rate", "MAX_FAILURE_RATE")):
        i = args.index(flag)
        knobs[knob] = args[i + 1]
        del args[i:i + 2]
    return {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}",
            "LN_ANNOTATIONS": str(raw / "annotations" / "*.jsonl"), "OI_IMAGES": str(raw / "images"),
            "LN_RECORDINGS": str(raw / "recordings"), "OI_CSV": str(raw / "annotations" / CSV_FILE),
            "SHARDS_OUT": str(out), "PREFIX": "shard", "NUM_JOBS": "3", "ARRAY_BASE": "5",
            "SLURM_CPUS_PER_TASK": "1", "OPT_SHARDS_ARGS": " ".join(args), **knobs, **extra}


def _task(env: dict, task_id: int | None, *args: str) -> subprocess.Popen:
    env = dict(env)
    if task_id is not None:  # what Slurm sets for `sbatch --array=5-7`
        env.update(SLURM_ARRAY_TASK_ID=str(task_id), SLURM_ARRAY_TASK_MIN="5", SLURM_ARRAY_TASK_MAX="7",
                   SLURM_ARRAY_TASK_COUNT="3", SLURM_ARRAY_JOB_ID="1000", SLURM_JOB_ID=str(1000 + task_id))
    return subprocess.Popen(["bash", str(SCRIPT), *args], env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=600)
    return proc.returncode, out, err


def test_array_tasks_then_dependent_index_job_equal_the_single_build(prep_raw, prep_reference, tmp_path):
    out = tmp_path / "array"
    env = _env(prep_raw, out)
    # Two tasks at once (they race on the shared build manifest), then the third.
    running = [_task(env, 5), _task(env, 7)]
    for proc in running:
        code, _, err = _finish(proc)
        assert code == 0, err[-3000:]
    assert not (out / "shard-index.json").exists()
    code, _, err = _finish(_task(env, 6))
    assert code == 0, err[-3000:]
    code, stdout, err = _finish(_task(env, None, "index"))
    assert code == 0, err[-3000:]
    assert "failures:" in stdout
    assert build_outputs(out) == build_outputs(prep_reference.dir)


def test_script_refuses_to_run_outside_an_array_or_out_of_range(prep_raw, tmp_path):
    env = _env(prep_raw, tmp_path / "x")
    code, _, err = _finish(_task(env, None))
    assert code == 2 and "sbatch --array=5-7" in err
    env["ARRAY_BASE"] = "0"  # ids 5..7 are outside 0..2
    code, _, err = _finish(_task(env, 5))
    assert code == 2 and "outside" in err
    assert not (tmp_path / "x").exists()
