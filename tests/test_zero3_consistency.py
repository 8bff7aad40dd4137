"""Correct under ZeRO-3: a rank whose batch lacks audio for a whole step runs
every tower anyway (no hang) and the losses equal a single-process run."""

import json
import sys

import pytest

from .conftest import BIN, REPO, run_cli

SCRIPT = REPO / "tests" / "dist_scripts" / "zero3_missing_audio.py"


@pytest.mark.distributed
def test_rank_without_audio_matches_single_process(tmp_path):
    two = tmp_path / "two.json"
    one = tmp_path / "one.json"
    # A hang (a rank skipping a tower's collectives) fails on the timeout.
    run_cli([str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", str(SCRIPT), str(two)], timeout=300)
    run_cli([sys.executable, str(SCRIPT), str(one)], timeout=300)
    single = {(r["step"], r["batch"]): r for r in json.loads(one.read_text())}
    multi = {}
    for rank in range(2):
        for r in json.loads((tmp_path / f"two.json.rank{rank}").read_text()):
            multi[(r["step"], r["batch"])] = r
    assert set(single) == set(multi) == {(s, b) for s in range(2) for b in range(2)}
    for key, ref in single.items():
        for name, value in ref.items():
            if name.startswith("loss"):
                assert multi[key][name] == pytest.approx(value, rel=1e-4, abs=1e-6), (key, name)
    # The step really trained: the second step's losses differ from the first.
    assert single[(1, 0)]["loss"] != single[(0, 0)]["loss"]
    # Batch B had no audio: its MAM loss is exactly zero, on both paths.
    assert single[(0, 1)]["loss/mam"] == 0.0 == multi[(0, 1)]["loss/mam"]
