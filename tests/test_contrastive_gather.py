"""Contrastive alignment over the global batch: on 2 ranks (embeddings
all-gathered with gradients) the loss and the rank-averaged gradients equal
one process's on the concatenated batch, with and without local_loss (float32
embeddings: equal to float32 rounding)."""

import json
import sys

import pytest

from .conftest import BIN, REPO, run_cli

SCRIPT = REPO / "tests" / "dist_scripts" / "contrastive_gather.py"


@pytest.mark.distributed
@pytest.mark.parametrize("local_loss", ["0", "1"])
def test_two_ranks_equal_one_process_on_the_concatenated_batch(tmp_path, local_loss):
    two, one = tmp_path / "two.json", tmp_path / "one.json"
    run_cli([str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", str(SCRIPT), str(two), local_loss],
            timeout=300)
    run_cli([sys.executable, str(SCRIPT), str(one), local_loss], timeout=300)
    multi, single = json.loads(two.read_text()), json.loads(one.read_text())
    assert multi["loss"] == pytest.approx(single["loss"], rel=1e-5)
    assert set(multi["grads"]) == set(single["grads"])
    for name, ref in single["grads"].items():
        # Float32 rounding is relative to the magnitudes summed, not to the sum: an element
        # that cancels to ~1e-4 of the tensor's largest keeps an error of that largest's size.
        scale = max(abs(v) for v in ref)
        assert multi["grads"][name] == pytest.approx(ref, rel=1e-4, abs=1e-6 * scale), name
        assert any(abs(v) > 0 for v in ref), name   # every parameter is trained
