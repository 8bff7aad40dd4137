"""Bad input to any console script: one line naming the cause, exit 2, no traceback, once per job.

Every case runs the real command as a subprocess, with good values for
everything but the one input under test; each must be refused before any
heavy work (no DeepSpeed engine, model or loader), so each takes about a
second.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from .conftest import BIN, REPO, run_cli, torchrun_args

# Good enough to start training, and cheap: no VQ tokenizer needed, one step
# if a bad input were not caught.
GOOD_TRAIN = ["train.steps=1", "data.num_workers=0", "train.micro_batch_size=4", "tasks.mvm.weight=0",
              "tasks.dir.weight=0"]


@pytest.fixture
def paths(demo_shards, demo_tokenizer, tmp_path):
    (tmp_path / "a_dir").mkdir()
    (tmp_path / "empty.tar").write_bytes(b"")
    (tmp_path / "a_file").write_text("not a directory\n")
    (tmp_path / "bad.json").write_text('{"train": {"steps": 3,}}\n')
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "model.safetensors").write_bytes(b"")  # looks like an export: the --shards check runs
    return SimpleNamespace(index=str(demo_shards / "demo-index.json"), tok=str(demo_tokenizer), tmp=tmp_path,
                           dir=str(tmp_path / "a_dir"), empty_tar=str(tmp_path / "empty.tar"),
                           file=str(tmp_path / "a_file"), bad_json=str(tmp_path / "bad.json"),
                           missing=str(tmp_path / "missing"), shard=str(demo_shards / "demo-000000.tar"),
                           shard_dir=str(demo_shards), export=str(tmp_path / "export"))


def train(p, *overrides: str) -> list[str]:
    """opt-train with good data, a fresh out_dir, and ``overrides`` applied last (they win)."""
    return ["opt-train", "--config", "tiny", "--set", f"data.train_shards={p.index}", f"data.tokenizer={p.tok}",
            f"train.out_dir={p.tmp / 'run'}", *GOOD_TRAIN, *overrides]


# (case id, argv builder, prog, what the line must name)
CASES = [
    ("tokenizer-missing", lambda p: train(p, f"data.tokenizer={p.missing}.model"), "opt-train", "data.tokenizer"),
    ("tokenizer-is-dir", lambda p: train(p, f"data.tokenizer={p.dir}"), "opt-train", "data.tokenizer"),
    ("tokenizer-not-spm", lambda p: train(p, f"data.tokenizer={p.index}"), "opt-train", "data.tokenizer"),
    ("shards-missing", lambda p: train(p, f"data.train_shards={p.missing}-{{0..1}}.tar"), "opt-train",
     "data.train_shards"),
    ("index-missing", lambda p: train(p, f"data.train_shards={p.missing}.json"), "opt-train", "data.train_shards"),
    ("index-malformed", lambda p: train(p, f"data.train_shards={p.bad_json}"), "opt-train", "data.train_shards"),
    ("shard-empty", lambda p: train(p, f"data.train_shards={p.empty_tar}"), "opt-train", "data.train_shards"),
    ("shards-is-dir", lambda p: train(p, f"data.train_shards={p.shard_dir}"), "opt-train", "data.train_shards"),
    ("eval-shards-missing", lambda p: train(p, f"data.eval_shards={p.missing}.json"), "opt-train",
     "data.eval_shards"),
    ("config-malformed", lambda p: ["opt-train", "--config", p.bad_json], "opt-train", "--config"),
    ("out-dir-under-file", lambda p: train(p, f"train.out_dir={p.file}/run"), "opt-train", "train.out_dir"),
    ("out-dir-unwritable", lambda p: train(p, "train.out_dir=/sys/opt-scale-run"), "opt-train", "train.out_dir"),
    ("resume-missing", lambda p: train(p, f"train.resume={p.missing}"), "opt-train", "train.resume"),
    ("resume-not-checkpoint", lambda p: train(p, f"train.resume={p.dir}"), "opt-train", "train.resume"),
    ("vq-missing", lambda p: train(p, "tasks.mvm.weight=1", f"model.vq.checkpoint={p.missing}.safetensors"),
     "opt-train", "model.vq.checkpoint"),
    ("bare", lambda p: ["opt-train"], "opt-train", "data.train_shards"),
    ("export-missing", lambda p: ["opt-export", p.missing, "--out", str(p.tmp / "out")], "opt-export", "missing"),
    ("export-no-checkpoint", lambda p: ["opt-export", p.dir, "--out", str(p.tmp / "out")], "opt-export",
     "a_dir"),
    ("eval-missing", lambda p: ["opt-eval", "retrieval", "--checkpoint", p.missing, "--shards", p.index,
                                "--device", "cpu"], "opt-eval", "--checkpoint"),
    ("eval-shards-missing-flag", lambda p: ["opt-eval", "caption", "--checkpoint", p.export, "--shards",
                                            f"{p.missing}.json", "--device", "cpu"], "opt-eval", "--shards"),
    ("eval-no-cuda", lambda p: ["opt-eval", "matching", "--checkpoint", p.missing, "--shards", p.index,
                                "--device", "cuda"], "opt-eval", "--device"),
    ("eval-generate-n0", lambda p: ["opt-eval", "generate", "--checkpoint", p.missing, "--prompt", "a cat",
                                    "--n", "0", "--out", str(p.tmp / "g.png"), "--device", "cpu"],
     "opt-eval", "--n"),
    ("shards-inspect-dir", lambda p: ["opt-shards", "inspect", p.shard_dir, "--out", str(p.tmp / "inspect")],
     "opt-shards", "SHARD"),
    ("shards-inspect-missing", lambda p: ["opt-shards", "inspect", p.missing, "--out", str(p.tmp / "inspect")],
     "opt-shards", "SHARD"),
]


def assert_one_error_line(proc, prog: str, names: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, f"exit {proc.returncode}:\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith(f"{prog}: error: ") and names in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(case, paths):
    _, argv, prog, names = case
    proc = run_cli(argv(paths), check=False, timeout=120)
    assert_one_error_line(proc, prog, names)
    # Refused before anything was written: no run directory, no export output.
    assert not (paths.tmp / "run").exists() and not (paths.tmp / "out").exists()


def test_other_ranks_exit_2_silently(paths):
    """A rank other than 0 (torchrun's RANK, srun's SLURM_PROCID) refuses the same input without a word."""
    for env in ({"RANK": "1", "WORLD_SIZE": "2"}, {"SLURM_PROCID": "3", "SLURM_NTASKS": "4"}):
        proc = run_cli(train(paths, f"data.tokenizer={paths.missing}.model"), check=False, timeout=120, env=env)
        assert proc.returncode == 2 and proc.stderr == "", proc.stderr[-3000:]


def assert_printed_once_by_torchrun_ranks(proc, names: str) -> None:
    """torchrun itself exits 1 whenever a rank fails and adds its own report
    (a ChildFailedError traceback listing each rank's exit code); srun instead
    reports the ranks' highest exit code, 2."""
    ours = [line for line in proc.stderr.splitlines() if "opt-train" in line and "error" in line]
    assert len(ours) == 1 and ours[0].startswith("opt-train: error: ") and names in ours[0], proc.stderr[-3000:]
    codes = re.findall(r"exitcode\s*:\s*(-?\d+)", proc.stderr)
    # A rank still exiting when torchrun saw the other fail may be stopped by it (SIGTERM).
    assert proc.returncode != 0 and "2" in codes and set(codes) <= {"2", "-15"}, proc.stderr[-3000:]
    # No rank printed a traceback: the only one is torchrun's own.
    assert proc.stderr.count("Traceback") == proc.stderr.count("ChildFailedError: ") == 1, proc.stderr[-3000:]
    assert "[rank" not in proc.stderr and "destroy_process_group" not in proc.stderr, proc.stderr[-3000:]


@pytest.mark.distributed
def test_under_torchrun_the_line_is_printed_once(paths):
    proc = run_cli(torchrun_args(2) + train(paths, f"data.tokenizer={paths.missing}.model")[1:], check=False,
                   timeout=180)
    assert_printed_once_by_torchrun_ranks(proc, "data.tokenizer")
    assert not (paths.tmp / "run").exists()


@pytest.mark.distributed
def test_an_error_after_the_process_group_exists_is_printed_once():
    """The trainer's own checks raise after the process group is set up."""
    script = REPO / "tests" / "dist_scripts" / "config_error_after_init.py"
    proc = run_cli([str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", str(script)], check=False,
                   timeout=180)
    assert_printed_once_by_torchrun_ranks(proc, "train.out_dir")
    assert "refused on rank 0 of 2" in proc.stderr


def test_help_states_exit_2_for_bad_input():
    for prog in ("opt-train", "opt-eval", "opt-export", "opt-shards"):
        out = run_cli([prog, "--help"], timeout=60).stdout
        assert re.search(r"2\s+(for\s+)?bad", out), f"{prog} --help does not state exit 2 for bad input"


def test_a_bug_keeps_its_traceback(tmp_path):
    """Only bad input becomes a one-liner: a crash inside a command still shows where it happened."""
    from opt_scale.utils.cli_errors import reports_usage_errors  # noqa: F401  (the wrapper exists)
    code = ("import sys\nfrom opt_scale.utils.cli_errors import reports_usage_errors\n"
            "@reports_usage_errors('opt-x')\ndef main(argv=None):\n    return {}['bug']\nsys.exit(main())\n")
    proc = run_cli([str(BIN / "python"), "-c", code], check=False, timeout=60)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "KeyError" in proc.stderr


@pytest.mark.parametrize("main_module, argv", [("opt_scale.data_prep.cli", ["build", "--help"]),
                                               ("opt_scale.data_prep.cli", ["download", "--help"]),
                                               ("opt_scale.cli.eval", ["retrieval", "--help"]),
                                               ("opt_scale.bench.cli", ["memory", "--help"])])
def test_help_states_real_defaults_only(main_module, argv, capsys):
    """Required options and options without a value show no "(default: None)"; real defaults still show."""
    import importlib
    with pytest.raises(SystemExit):
        importlib.import_module(main_module).main(argv)
    text = re.sub(r"\s+", " ", capsys.readouterr().out)
    assert "default: None" not in text and "default: False" not in text and "(default: )" not in text
    assert "(default: " in text
