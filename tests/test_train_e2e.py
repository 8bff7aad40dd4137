"""End to end: 2-process DeepSpeed ZeRO-3 training on demo shards (gloo)."""

import json
import math

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from .conftest import run_cli


@pytest.mark.distributed
def test_two_rank_zero3_training_writes_checkpoint_and_tensorboard(trained_run):
    assert "opt-train summary" in (trained_run / "stdout.txt").read_text()
    run = trained_run
    ckpt = run / "checkpoints" / "step_00000004"
    marker = json.loads((ckpt / "COMPLETE.json").read_text())
    assert marker["step"] == 4 and marker["world_size"] == 2
    # ZeRO-3: each rank wrote its own partition of parameters and optimizer state.
    for rank in range(2):
        assert (ckpt / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt").stat().st_size > 0
        assert (ckpt / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").stat().st_size > 0

    (event_file,) = (run / "tensorboard").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(event_file))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss/total", "loss/mlm", "loss/mvm", "loss/mam", "loss/dtr", "loss/dir", "loss/matching",
            "acc/matching", "train/lr", "throughput/samples_per_s"} <= tags
    losses = acc.Scalars("loss/total")
    assert [e.step for e in losses] == [1, 2, 3, 4]
    # At step 1 the model is at its initialisation: each classifier's loss is
    # near log(number of classes), and the total is the tasks' sum.
    first = {tag: acc.Scalars(tag)[0].value for tag in tags if tag.startswith("loss/") and tag != "loss/total"}
    vocab = json.loads((run / "config.json").read_text())["model"]["text"]["vocab_size"]
    chance = {"loss/mlm": math.log(vocab), "loss/dtr": math.log(vocab), "loss/mvm": math.log(1000),
              "loss/dir": math.log(1000), "loss/matching": math.log(5), "loss/contrastive": math.log(2 * 4)}
    for tag, level in chance.items():
        assert 0.75 * level < first[tag] < 1.25 * level, (tag, first[tag], level)
    assert 0 < first["loss/mam"] < 10
    assert losses[0].value == pytest.approx(sum(first.values()), rel=1e-4)
    assert losses[-1].value < losses[0].value  # four steps already lower it
    assert (run / "config.json").is_file() and (run / "tokenizer.model").is_file()
    # Periodic evaluation at step 4 logged retrieval, captioning and an image grid.
    assert {"eval/retrieval/text->image/R@1", "eval/retrieval/image+audio->text/R@10",
            "eval/caption/image/BLEU-4", "eval/caption/audio/WER"} <= tags
    assert acc.Tags()["images"] == ["eval/text_to_image"]


def test_vq_command_writes_a_loadable_tokenizer_and_reports_it(demo_vq):
    from opt_scale.model.vq_io import load_vq
    from opt_scale.presets import tiny
    grid = tiny().model.patch_grid
    vq = load_vq(demo_vq, expect_grid=grid)
    import torch
    codes = vq.codes(torch.randint(0, 256, (2, 3, 128, 128), dtype=torch.uint8))
    assert codes.shape == (2, grid * grid) and int(codes.max()) < vq.quantizer.codebook_size == 1000
    assert not any(p.requires_grad for p in vq.parameters())
    # The end-of-training report: originals over reconstructions, as a PNG and in TensorBoard.
    from PIL import Image
    picture = Image.open(demo_vq.parent / "vq_reconstructions.png")
    assert picture.size == (8 * vq.cfg.image_size, 2 * vq.cfg.image_size)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(demo_vq.parent / "tensorboard")).Reload()
    assert "vq/reconstructions" in acc.Tags()["images"]
    assert {"vq/psnr_db", "vq/eval_psnr_db"} <= set(acc.Tags()["scalars"])


def test_pretraining_without_a_vq_checkpoint_is_refused_by_name(demo_shards, demo_tokenizer, tmp_path):
    proc = run_cli(["opt-train", "--config", "tiny", "--set", f"data.train_shards={demo_shards / 'demo-index.json'}",
                    f"data.tokenizer={demo_tokenizer}", f"train.out_dir={tmp_path}"], check=False, timeout=120)
    assert proc.returncode == 2 and "model.vq.checkpoint" in proc.stderr


def test_a_run_records_what_produced_it_and_points_latest_at_its_newest_checkpoint(trained_run):
    """run_info.jsonl (command, commit, packages, hosts, world size) and the TensorBoard texts;
    checkpoints/latest for DeepSpeed's own zero_to_fp32.py, which then needs no --tag."""
    import subprocess
    import sys
    (info,) = [json.loads(x) for x in (trained_run / "run_info.jsonl").read_text().splitlines()]
    assert info["world_size"] == 2 and len(info["hosts"]) == 2 and info["start_step"] == 0
    assert info["packages"]["torch"] and info["packages"]["deepspeed"] and info["packages"]["opt-scale"]
    assert any("train.steps=4" in a for a in info["argv"]) and "commit" in info["git"]
    acc = EventAccumulator(str(trained_run / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    assert {"run/info/text_summary", "run/config/text_summary"} <= set(acc.Tags()["tensors"])
    ckpts = trained_run / "checkpoints"
    assert (ckpts / "latest").read_text() == "step_00000004"
    out = trained_run.parent / "zero_to_fp32_out"
    proc = subprocess.run([sys.executable, str(ckpts / "zero_to_fp32.py"), str(ckpts), str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert any(out.iterdir()) if out.is_dir() else out.is_file()
    # --safe_serialization: safetensors refuses two names on one storage; the MLM
    # head's tied projection has one name (the text embedding's).
    safe = trained_run.parent / "zero_to_fp32_safe"
    proc = subprocess.run([sys.executable, str(ckpts / "zero_to_fp32.py"), str(ckpts), str(safe),
                           "--safe_serialization"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from safetensors.torch import load_file
    tensors = {k: v for f in safe.glob("*.safetensors") for k, v in load_file(str(f)).items()}
    assert "model.text.tokens.weight" in tensors and "mlm.weight" not in tensors


def test_opt_train_takes_the_deepspeed_launchers_local_rank_flag():
    for flag in ("--local_rank=1", "--local-rank=0"):
        proc = run_cli(["opt-train", flag, "--config", "tiny", "--print-config"])
        assert '"task": "pretrain"' in proc.stdout


@pytest.mark.distributed
def test_the_deepspeed_launcher_starts_two_ranks(tiny_overrides, tmp_path):
    """`deepspeed --num_gpus 2 $(which opt-train) ...`: the launcher passes --local_rank=N
    and the usual environment; on this CPU its accelerator is DeepSpeed's CPU one."""
    from .conftest import BIN
    proc = run_cli([str(BIN / "deepspeed"), "--num_gpus", "2", str(BIN / "opt-train"), "--config", "tiny",
                    "--set", *tiny_overrides, "train.steps=1", "data.num_workers=0"],
                   env={"DS_ACCELERATOR": "cpu"}, timeout=300)
    marker = json.loads((tmp_path / "run" / "checkpoints" / "step_00000001" / "COMPLETE.json").read_text())
    assert marker["world_size"] == 2 and "opt-train summary" in proc.stdout
