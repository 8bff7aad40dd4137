"""opt-export: consolidated fp32 safetensors equal DeepSpeed's own zero_to_fp32."""

import sys

import pytest
import torch

from opt_scale.engine.export import load_export_state

from .conftest import run_cli
from .model_fixtures import demo_batch


@pytest.fixture(scope="module")
def exported_and_reference(trained_run, tmp_path_factory):
    """opt-export of the trained run, and DeepSpeed's own zero_to_fp32 state dict of its checkpoint."""
    tmp = tmp_path_factory.mktemp("export")
    out = tmp / "export"
    run_cli(["opt-export", str(trained_run), "--out", str(out)], timeout=300)
    # DeepSpeed writes zero_to_fp32.py next to the checkpoints; run it as users
    # do (pickled here; its --safe_serialization is tested in test_train_e2e).
    ckpts = trained_run / "checkpoints"
    ref_dir = tmp / "zero_to_fp32"
    run_cli([sys.executable, str(ckpts / "zero_to_fp32.py"), str(ckpts), str(ref_dir), "--tag", "step_00000004"],
            timeout=300)
    theirs = {}
    for f in sorted(ref_dir.glob("pytorch_model*.bin")):
        theirs.update(torch.load(f, map_location="cpu", weights_only=True))
    return out, theirs


def test_export_equals_deepspeeds_zero_to_fp32_script(exported_and_reference):
    out, theirs = exported_and_reference
    ours, meta = load_export_state(out / "model.safetensors")
    assert meta["step"] == "4" and meta["task"] == "pretrain"
    assert theirs
    assert set(theirs) == set(ours)  # one name per tensor: the MLM head's tied projection is the text embedding
    for name, tensor in theirs.items():
        assert ours[name].dtype == torch.float32
        assert torch.equal(ours[name], tensor.float()), name
    assert "mlm.weight" not in ours


def test_the_export_carries_a_model_card_no_absolute_path_and_is_readable_by_the_group(exported_and_reference,
                                                                                       trained_run):
    import json
    import stat

    from safetensors import safe_open
    from safetensors.torch import load_file

    from opt_scale.tasks.pretrainer import OPTPretrainer
    from opt_scale.config import RunConfig
    from opt_scale.utils.config_tools import from_dict
    out, _ = exported_and_reference
    config_text = (out / "config.json").read_text()
    assert str(trained_run) in (trained_run / "config.json").read_text()   # the run's own config has them
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        meta = f.metadata()
    for text in (config_text, json.dumps(meta)):
        assert '"/' not in text and str(trained_run.parent) not in text
    assert meta["source"] == f"{trained_run.name}/checkpoints/step_00000004"
    card = (out / "README.md").read_text()
    assert "# OPT (pretrain), step 4" in card and "| loss/total |" in card and "| eval/" in card
    for path in out.iterdir():
        assert path.stat().st_mode & stat.S_IRGRP, path.name
    # A plain strict load of the file, no aliases to restore (the tied projection has one name).
    cfg = from_dict(RunConfig, json.loads(config_text))
    OPTPretrainer(cfg.model, cfg.tasks).load_state_dict(load_file(str(out / "model.safetensors")), strict=True)


def test_exported_model_computes_the_losses_of_the_zero_to_fp32_weights(exported_and_reference, trained_run,
                                                                         demo_shards, demo_tokenizer):
    """The export as loaded (config, tied weights, frozen VQ) is the trained
    model: on one batch, every loss equals a model built from the run's own
    config with DeepSpeed's consolidated weights."""
    import json

    from opt_scale.config import RunConfig
    from opt_scale.model.exported import load_exported
    from opt_scale.tasks.pretrainer import OPTPretrainer
    from opt_scale.tasks.registry import load_frozen_vq
    from opt_scale.utils.config_tools import from_dict
    out, theirs = exported_and_reference
    cfg = from_dict(RunConfig, json.loads((trained_run / "config.json").read_text()))
    reference = OPTPretrainer(cfg.model, cfg.tasks, vq=load_frozen_vq(cfg))
    reference.load_state_dict(theirs)  # every key, strictly: the tied projection has one name
    reference.eval()
    exported = load_exported(out)
    batch = demo_batch(demo_shards, demo_tokenizer, exported.config, batch_size=4)
    with torch.no_grad():
        got, want = exported.net(batch), reference(batch)
    losses = [k for k in want if k.startswith("loss")]
    assert len(losses) >= 7 and set(got) == set(want)
    for name in losses:
        assert torch.isfinite(want[name]) and float(got[name]) == float(want[name]), name


def test_exported_model_runs_on_one_cpu(trained_run, tmp_path, demo_shards, demo_tokenizer):
    from opt_scale.model.exported import load_exported
    from opt_scale.model.generation import OPTGenerator
    out = tmp_path / "export"
    run_cli(["opt-export", str(trained_run / "checkpoints" / "step_00000004"), "--out", str(out)], timeout=300)
    assert {"model.safetensors", "config.json", "tokenizer.model", "vq.safetensors"} <= {p.name for p in out.iterdir()}
    exported = load_exported(out)
    batch = demo_batch(demo_shards, demo_tokenizer, exported.config, batch_size=4)
    with torch.no_grad():
        losses = exported.net(batch)
    assert torch.isfinite(losses["loss"])
    gen = OPTGenerator(exported.net, exported.tokenizer)
    assert len(gen.caption(pixels=batch["pixels"][:2], beam=2, max_len=8)) == 2
    assert gen.text_to_image(["a red circle"], top_k=8).shape == (1, 3, 64, 64)


def test_a_plain_data_parallel_run_exports_its_whole_weights(tiny_overrides, tmp_path):
    # ds_config=ddp (ZeRO stage 0, fp32) writes no partitions for zero_to_fp32: the module is in the states file.
    run = tmp_path / "run"
    run_cli(["opt-train", "--config", "tiny", "--set", *tiny_overrides, "train.steps=1", "train.ds_config=ddp"],
            timeout=300)
    out = tmp_path / "export"
    run_cli(["opt-export", str(run), "--out", str(out)], timeout=300)
    ours, _ = load_export_state(out / "model.safetensors")
    saved = torch.load(run / "checkpoints" / "step_00000001" / "mp_rank_00_model_states.pt", map_location="cpu",
                       weights_only=False)["module"]
    assert set(ours) == set(saved)
    for name, tensor in saved.items():
        assert torch.equal(ours[name], tensor.float()), name
