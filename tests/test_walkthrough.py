"""docs/REAL_DATA.md end to end, at miniature scale: its commands, in its order, against a local HTTP
server serving a miniature release in the real layout (test_download.py's server, without faults).

download -> shards with a held-out split in its own directory -> verify -> tokenizer -> VQ ->
pre-training with periodic held-out evaluation -> export -> retrieval evaluation -> caption
fine-tuning from the export -> its evaluation. Each step reads only what the previous ones wrote,
through the walkthrough's paths; ``opt-train`` stands in for ``sbatch slurm/pretrain.sbatch``, which
runs it with the same overrides (SLURM.md; tested in test_slurm.py).
"""

from __future__ import annotations

import json

import pytest

from opt_scale.data_prep.cli import main as opt_shards

from .conftest import run_cli
from .test_download import download_args, release, server  # noqa: F401  (fixtures)

TINY = ["--config", "tiny", "--set", "data.num_workers=0", "train.micro_batch_size=4", "train.log_every=1",
        "train.checkpoint_every=0"]


@pytest.mark.slow
def test_the_walkthrough_runs_end_to_end_on_a_miniature_release(server, release, tmp_path, capsys):  # noqa: F811
    records, _, _ = release
    data, shards, runs = tmp_path / "ln_open_images", tmp_path / "opt_shards", tmp_path / "runs"
    heldout = shards / "openimage5k"

    # 1. Download.
    assert opt_shards(download_args(server, data)) == 0
    # 2. Shards with a held-out split, verify, tokenizer.
    assert opt_shards(["build", "--annotations", str(data / "annotations" / "*.jsonl"), "--images",
                       str(data / "images"), "--audio", str(data / "audio"), "--out", str(shards),
                       "--prefix", "oi-ln", "--holdout", "openimage5k:3", "--image-short-side", "64",
                       "--max-audio-seconds", "3", "--no-progress"]) == 0
    train_index = json.loads((shards / "oi-ln-index.json").read_text())
    held_index = json.loads((heldout / "oi-ln-openimage5k-index.json").read_text())
    assert train_index["nsamples"] + held_index["nsamples"] == len(records)
    assert not list(shards.glob("oi-ln-openimage5k-*"))  # no glob over $SHARDS/oi-ln-* reaches them
    assert opt_shards(["verify", str(shards), "--workers", "1"]) == 0
    # Verify covered the held-out directory too: every sample of both splits decoded.
    assert f"OK: 2 shard(s), {len(records)} samples decoded" in capsys.readouterr().out
    assert opt_shards(["train-tokenizer", "--shards", str(shards / "oi-ln-index.json"), "--vocab-size", "120",
                       "--out", str(shards / "sp.model")]) == 0
    data_sets = [f"data.train_shards={shards / 'oi-ln-index.json'}", f"data.tokenizer={shards / 'sp.model'}"]

    # 3. VQ image tokenizer.
    run_cli(["opt-train", "--task", "vq", *TINY, *data_sets, "train.steps=2", f"train.out_dir={runs / 'vq'}"],
            timeout=300)
    vq = runs / "vq" / "vq.safetensors"
    assert vq.is_file()

    # 4. Pre-training, evaluated on the held-out directory.
    run_cli(["opt-train", *TINY, *data_sets, f"model.vq.checkpoint={vq}",
             f"data.eval_shards={heldout / 'oi-ln-openimage5k-index.json'}", "train.eval_every=2",
             "train.eval_samples=3", "train.steps=2", f"train.out_dir={runs / 'base'}"], timeout=300)

    # 5. Export and evaluation.
    run_cli(["opt-export", str(runs / "base"), "--out", str(runs / "base" / "export")], timeout=300)
    out = runs / "retrieval.json"
    run_cli(["opt-eval", "retrieval", "--checkpoint", str(runs / "base" / "export"), "--shards",
             str(heldout / "oi-ln-openimage5k-index.json"), "--json", str(out)], timeout=300)
    assert json.loads(out.read_text())["samples"] == held_index["nsamples"]

    # 6. A downstream task from the export, evaluated on the held-out shards.
    run_cli(["opt-train", "--task", "caption", *TINY, *data_sets, f"model.vq.checkpoint={vq}",
             f"train.init_from={runs / 'base' / 'export'}", "train.steps=2",
             f"train.out_dir={runs / 'caption'}"], timeout=300)
    out = runs / "caption.json"
    run_cli(["opt-eval", "caption", "--checkpoint", str(runs / "caption"), "--shards",
             str(heldout / "oi-ln-openimage5k-index.json"), "--json", str(out)], timeout=300)
    result = json.loads(out.read_text())
    assert result["samples"] == held_index["nsamples"] and "image" in result["scores"]
