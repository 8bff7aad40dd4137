"""Downstream fine-tuning on the pre-training engine (opt-train --task
caption|asr|retrieval, train.init_from): the pre-trained weights are where it
starts, only the downstream tasks train, and the input formats convert."""

import json

import pytest
import torch

from .conftest import run_cli, torchrun_args


def finetune_args(task, trained_run, demo_shards, demo_tokenizer, out, *extra):
    return ["--task", task, "--config", "tiny", "--set", f"train.init_from={trained_run}",
            f"data.train_shards={demo_shards / 'demo-index.json'}", f"data.tokenizer={demo_tokenizer}",
            f"train.out_dir={out}", "train.log_every=1", "data.num_workers=0", "train.micro_batch_size=4",
            "train.checkpoint_every=0", *extra]


def weights(export_dir):
    from opt_scale.engine.export import load_export_state
    state, _ = load_export_state(export_dir / "model.safetensors")
    return state


@pytest.mark.distributed
def test_caption_finetuning_starts_from_the_pretrained_weights_on_two_ranks(trained_run, demo_shards,
                                                                           demo_tokenizer, tmp_path):
    source = tmp_path / "source"
    run_cli(["opt-export", str(trained_run), "--out", str(source)], timeout=300)
    run = tmp_path / "ft"
    # One step at a vanishing learning rate: the fine-tuned weights are the source's.
    proc = run_cli(torchrun_args(2) + finetune_args("caption", source, demo_shards, demo_tokenizer, run,
                                                    "train.steps=1", "train.lr=1e-12", "train.warmup_steps=0"),
                   timeout=600)
    assert "fine-tuning from" in proc.stdout + proc.stderr
    config = json.loads((run / "config.json").read_text())
    assert config["tasks"]["dtr"]["memory"] == "image"
    assert {k: v["weight"] for k, v in config["tasks"].items() if isinstance(v, dict) and "weight" in v} == \
        {"mlm": 0, "mvm": 0, "mam": 0, "dtr": 1, "dir": 0, "matching": 0, "contrastive": 0, "label": 0}
    tuned = tmp_path / "tuned"
    run_cli(["opt-export", str(run), "--out", str(tuned)], timeout=300)
    a, b = weights(source), weights(tuned)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    # And from scratch (no init_from) it is not: the check above has teeth.
    scratch = tmp_path / "scratch"
    # (One process: what is compared is the weights' start, not the launch.)
    run_cli(["opt-train"] + [a for a in finetune_args("caption", source, demo_shards, demo_tokenizer, scratch,
                                                      "train.steps=1", "train.lr=1e-12")
                             if not a.startswith("train.init_from")], timeout=600)
    run_cli(["opt-export", str(scratch), "--out", str(tmp_path / "scratch_export")], timeout=300)
    c = weights(tmp_path / "scratch_export")
    assert not all(torch.allclose(a[k], c[k], atol=1e-3) for k in a)


def test_asr_and_retrieval_finetune_and_log_only_their_tasks(trained_run, demo_shards, demo_tokenizer, tmp_path):
    for task, logged in (("asr", {"dtr"}), ("retrieval", {"contrastive", "matching"})):
        run = tmp_path / task
        run_cli(["opt-train", *finetune_args(task, trained_run, demo_shards, demo_tokenizer, run, "train.steps=2")],
                timeout=600)
        from opt_scale.bench.events import read_scalars
        losses = {t.split("/", 1)[1] for t in read_scalars(run / "tensorboard") if t.startswith("loss/")} - {"total"}
        assert losses == logged, task


def test_init_from_refuses_another_tokenizer_or_model(trained_run, demo_shards, demo_tokenizer, tmp_path):
    import shutil
    other_tok = tmp_path / "other.model"
    from opt_scale.data_prep.tokenizer_training import train_tokenizer
    train_tokenizer(str(demo_shards / "demo-index.json"), 100, str(other_tok), model_type="bpe")
    args = finetune_args("caption", trained_run, demo_shards, other_tok, tmp_path / "a", "train.steps=1")
    proc = run_cli(["opt-train", *args], check=False, timeout=300)
    assert proc.returncode == 2 and "train.init_from" in proc.stderr and "another tokenizer" in proc.stderr
    args = finetune_args("caption", trained_run, demo_shards, demo_tokenizer, tmp_path / "b", "train.steps=1",
                         "model.cross.layers=3")
    proc = run_cli(["opt-train", *args], check=False, timeout=300)
    assert proc.returncode == 2 and "its model differs" in proc.stderr
    proc = run_cli(["opt-train", *finetune_args("caption", tmp_path / "nothing", demo_shards, demo_tokenizer,
                                                tmp_path / "c", "train.steps=1")], check=False, timeout=300)
    assert proc.returncode == 2 and "train.init_from" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    del shutil


def test_karpathy_split_pairs(tmp_path):
    data = {"dataset": "coco", "images": [
        {"filepath": "val2014", "filename": "COCO_val2014_000000391895.jpg", "cocoid": 391895, "split": "test",
         "sentences": [{"raw": "A man rides a bike."}, {"raw": "Someone on a bicycle."}]},
        {"filepath": "train2014", "filename": "COCO_train2014_000000000009.jpg", "cocoid": 9, "split": "restval",
         "sentences": [{"raw": "Food in a box."}]},
        {"filepath": "train2014", "filename": "COCO_train2014_000000000025.jpg", "cocoid": 25, "split": "train",
         "sentences": [{"raw": "A giraffe."}]}]}
    src = tmp_path / "dataset_coco.json"
    src.write_text(json.dumps(data))
    for split, n in (("train", 2), ("test", 2), ("val", 0)):
        out = tmp_path / f"{split}.jsonl"
        run_cli(["opt-shards", "pairs", str(src), "--format", "karpathy", "--split", split, "--out", str(out)])
        lines = [json.loads(x) for x in out.read_text().splitlines()]
        assert len(lines) == n
    test = [json.loads(x) for x in (tmp_path / "test.jsonl").read_text().splitlines()]
    assert {x["image_path"] for x in test} == {"val2014/COCO_val2014_000000391895.jpg"}
    assert [x["annotator_id"] for x in test] == [0, 1] and test[0]["image_id"] == "391895"
