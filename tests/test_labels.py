"""The label tasks (opt-train --task vqa|classify, opt-eval vqa|classify):
VQA v2 and classification inputs in their real layouts become shards with
targets, the head trains from a pre-trained checkpoint (frozen or not), and
the metrics are the official ones."""

import csv
import json
import math

import pytest
import torch

from opt_scale.data_prep.labelled import answer_score, normalise_answer
from opt_scale.eval.labels_eval import average_precision, score_classes, score_vqa, vqa_accuracy

from .conftest import run_cli
from .test_finetune import weights


def test_answers_are_normalised_and_scored_as_the_official_evaluation():
    assert normalise_answer("Two.") == "2"
    assert normalise_answer("the Red one!") == "red 1"
    assert normalise_answer("dont know") == "don't know"
    assert normalise_answer("1,000") == "1000"
    assert [answer_score(c) for c in (1, 2, 3, 4, 10)] == pytest.approx([0.3, 0.6, 0.9, 1.0, 1.0])
    # vqaEval.py: min(1, matches among the other nine / 3), averaged over the ten.
    assert vqa_accuracy("red", ["red"] * 10) == 1.0
    assert vqa_accuracy("red", ["red"] * 3 + ["blue"] * 7) == pytest.approx((3 * 2 / 3 + 7 * 1) / 10)
    assert vqa_accuracy("red", ["red"] + ["blue"] * 9) == pytest.approx(0.9 * 1 / 3)
    assert vqa_accuracy("green", ["red"] * 10) == 0.0


def test_average_precision_and_classification_baselines():
    assert average_precision(torch.tensor([0.9, 0.8, 0.1]), torch.tensor([True, False, True])) == \
        pytest.approx((1 + 2 / 3) / 2)
    assert math.isnan(average_precision(torch.tensor([0.5]), torch.tensor([False])))
    names = ("circle", "square")
    targets = [{"labels": {"circle": 1.0}}, {"labels": {"circle": 1.0}}, {"labels": {"square": 1.0}}]
    perfect = score_classes(names, torch.tensor([[2.0, 0], [2, 0], [0, 2]]), targets)
    assert perfect["top1"] == 100 and perfect["mAP"] == 100
    assert perfect["chance_top1"] == 50 and perfect["majority_top1"] == pytest.approx(200 / 3)
    wrong = score_classes(names, torch.tensor([[0, 2.0], [0, 2], [2, 0]]), targets)
    assert wrong["top1"] == 0


def test_vqa_scores_per_answer_type_beside_the_answer_prior():
    names = ("red", "blue", "circle")
    targets = [{"answers": ["red"] * 10, "label_type": "colour"}, {"answers": ["red"] * 10, "label_type": "colour"},
               {"answers": ["blue"] * 10, "label_type": "colour"}, {"answers": ["circle"] * 10, "label_type": "shape"}]
    result = score_vqa(names, torch.tensor([[3.0, 0, 0], [3, 0, 0], [3, 0, 0], [0, 0, 3]]), targets)
    assert result["by_type"]["colour"]["accuracy"] == pytest.approx(200 / 3)
    assert result["by_type"]["colour"]["answer_prior"] == pytest.approx(200 / 3)  # "red" every time
    assert result["by_type"]["shape"] == {"questions": 1, "accuracy": 100.0, "answer_prior": 100.0}
    assert result["accuracy"] == pytest.approx(75.0)
    assert result["chance"] == pytest.approx(100 / 3)


@pytest.fixture(scope="module")
def labelled(demo_shards, tmp_path_factory):
    """VQA v2 questions/annotations JSON and a classes CSV about the demo shards' scenes
    (python -m opt_scale.demo_tasks' writers), converted by opt-shards pairs and built."""
    from opt_scale.demo_tasks import scenes, write_classes, write_vqa
    root = tmp_path_factory.mktemp("labelled")
    found = scenes(demo_shards / "demo-index.json")
    assert len(found) >= 40
    (root / "images").mkdir()
    for image_id, (jpeg, _) in found.items():
        (root / "images" / f"{image_id}.jpg").write_bytes(jpeg)
    write_vqa(found, root / "vqa", "train")
    write_classes(found, root / "classes", "train")
    run_cli(["opt-shards", "pairs", str(root / "vqa" / "train_questions.json"), "--format", "vqa", "--annotations",
             str(root / "vqa" / "train_annotations.json"), "--image-name", "{image_id}.jpg",
             "--out", str(root / "vqa.jsonl")])
    run_cli(["opt-shards", "pairs", str(root / "classes" / "train.csv"), "--format", "classes",
             "--out", str(root / "classes.jsonl")])
    for name in ("vqa", "classes"):
        run_cli(["opt-shards", "build", "--annotations", str(root / f"{name}.jsonl"), "--images", str(root / "images"),
                 "--out", str(root / name), "--prefix", name, "--samples-per-shard", "64", "--image-short-side", "96",
                 "--no-progress"], timeout=300)
    return root


def test_vqa_v2_json_becomes_records_with_soft_scores_and_a_vocabulary(labelled):
    lines = [json.loads(x) for x in (labelled / "vqa.jsonl").read_text().splitlines()]
    vocab = json.loads((labelled / "vqa.labels.json").read_text())
    assert len(lines) == 3 * len(set(r["image_id"] for r in lines))
    first = lines[0]
    assert first["caption"].startswith("what colour is the ") and first["voice_recording"] is None
    assert len(first["answers"]) == 10 and list(first["labels"].values()) == [1.0]
    assert {r["label_type"] for r in lines} == {"colour", "shape", "position"}
    assert set(vocab) == {a for r in lines for a in r["labels"]} and len(vocab) <= 6 + 4 + 5
    # The builder keeps the targets in the sample's .json member.
    from opt_scale.data.shard_reader import iter_samples
    from opt_scale.data.sources import resolve_shards
    (shard, *_) = resolve_shards(str(labelled / "vqa" / "vqa-index.json"))
    sample = next(iter_samples(shard.url))
    meta = json.loads(sample["json"])
    assert meta["targets"]["labels"] and len(meta["targets"]["answers"]) == 10 and "jpg" in sample


def test_classes_csv_and_imagefolder_give_the_same_labels(labelled, tmp_path):
    from opt_scale.data_prep.labelled import write_labelled
    rows = list(csv.DictReader(open(labelled / "classes" / "train.csv")))
    for row in rows[:6]:
        (tmp_path / "tree" / row["label"]).mkdir(parents=True, exist_ok=True)
        (tmp_path / "tree" / row["label"] / row["image"]).write_bytes((labelled / "images" / row["image"]).read_bytes())
    n, labels = write_labelled(str(tmp_path / "tree"), "imagefolder", str(tmp_path / "tree.jsonl"))
    assert n == 6 and labels == len({r["label"] for r in rows[:6]})
    tree = {r["image_path"].split("/")[-1]: r["labels"] for r in map(json.loads, open(tmp_path / "tree.jsonl"))}
    assert tree == {r["image"]: {r["label"]: 1.0} for r in rows[:6]}
    refused = run_cli(["opt-shards", "pairs", str(labelled / "vqa" / "train_questions.json"), "--format", "vqa",
                       "--out", str(tmp_path / "x.jsonl")], check=False)
    assert refused.returncode == 2 and "--annotations" in refused.stderr


def label_args(task, trained_run, labelled, tokenizer, out, data, *extra):
    return ["opt-train", "--task", task, "--config", "tiny", "--set", f"train.init_from={trained_run}",
            f"data.train_shards={labelled / data / f'{data}-index.json'}", f"data.labels={labelled / f'{data}.labels.json'}",
            f"data.tokenizer={tokenizer}", f"train.out_dir={out}", "train.log_every=1", "data.num_workers=0",
            "train.micro_batch_size=4", "train.checkpoint_every=0", *extra]


def test_vqa_finetunes_from_the_pretrained_model_and_opt_eval_scores_it(trained_run, labelled, demo_tokenizer,
                                                                         tmp_path):
    run = tmp_path / "vqa"
    proc = run_cli(label_args("vqa", trained_run, labelled, demo_tokenizer, run, "vqa", "train.steps=3"), timeout=300)
    log = proc.stdout + proc.stderr
    assert "the label head (6 tensors) is new" in log and "| label " in log and "| dtr " not in log
    config = json.loads((run / "config.json").read_text())
    assert config["tasks"]["label"]["names"] == json.loads((labelled / "vqa.labels.json").read_text())
    out = run_cli(["opt-eval", "vqa", "--checkpoint", str(run), "--shards", str(labelled / "vqa" / "vqa-index.json"),
                   "--json", str(tmp_path / "vqa.json")], timeout=300)
    result = json.loads((tmp_path / "vqa.json").read_text())
    assert result["samples"] == 3 * len(set(json.loads(x)["image_id"] for x in open(labelled / "vqa.jsonl")))
    assert set(result["by_type"]) == {"colour", "shape", "position"}
    assert 0 <= result["accuracy"] <= 100 and result["answer_prior"] > result["chance"] > 0
    assert "answer prior" in out.stdout
    # A pre-trained model has no label head: a one-line error, not a traceback.
    wrong = run_cli(["opt-eval", "vqa", "--checkpoint", str(trained_run), "--shards",
                     str(labelled / "vqa" / "vqa-index.json")], check=False, timeout=300)
    assert wrong.returncode == 2 and "no label head" in wrong.stderr and "Traceback" not in wrong.stderr


def test_classify_with_a_frozen_model_trains_only_the_linear_layer(trained_run, labelled, demo_tokenizer, tmp_path):
    run = tmp_path / "classify"
    run_cli(label_args("classify", trained_run, labelled, demo_tokenizer, run, "classes", "train.steps=3",
                       "train.lr=1e-2"), timeout=300)
    run_cli(["opt-export", str(run), "--out", str(tmp_path / "export")], timeout=300)
    run_cli(["opt-export", str(trained_run), "--out", str(tmp_path / "source")], timeout=300)
    tuned, source = weights(tmp_path / "export"), weights(tmp_path / "source")
    assert {k for k in tuned if k.startswith("label.")} == {"label.net.weight", "label.net.bias"}
    assert set(tuned) - set(source) == {"label.net.weight", "label.net.bias"}
    for k in source:
        assert torch.equal(source[k], tuned[k]), k   # frozen: not one weight moved
    run_cli(["opt-eval", "classify", "--checkpoint", str(tmp_path / "export"), "--shards",
             str(labelled / "classes" / "classes-index.json"), "--json", str(tmp_path / "c.json")], timeout=300)
    result = json.loads((tmp_path / "c.json").read_text())
    assert result["chance_top1"] == 25.0 and 0 <= result["top1"] <= 100 and 0 < result["mAP"] <= 100


@pytest.mark.parametrize("task", ["vqa", "classify"])
def test_a_label_step_reads_the_targets_and_reaches_every_module(labelled, demo_tokenizer, task):
    """The loader turns each sample's targets into soft scores over the vocabulary,
    and a step with the label head still runs (and differentiates) every part,
    as ZeRO-3's lock-step needs; frozen (classify), only the head is trainable."""
    from opt_scale.config import load_config
    from opt_scale.data.config import DataConfig
    from opt_scale.data.loader import TrainLoader
    from opt_scale.data.sources import resolve_shards
    from opt_scale.data.tokenizer import Tokenizer
    from opt_scale.engine.trainer import fill_labels
    from opt_scale.tasks.registry import build_task_module, task_overrides

    from .model_fixtures import random_vq, small_config
    data = "vqa" if task == "vqa" else "classes"
    tok = Tokenizer(str(demo_tokenizer))
    base = small_config(tok.vocab_size)
    cfg = load_config("tiny", task_overrides(task) + [f"train.task={task}", f"data.labels={labelled / f'{data}.labels.json'}"])
    cfg.model = base.model
    fill_labels(cfg)
    net = build_task_module(cfg, frozen_vq=random_vq(cfg))
    loader = TrainLoader(resolve_shards(str(labelled / data / f"{data}-index.json")), DataConfig(num_workers=0),
                         cfg.model, cfg.tasks, tok, 0, 1, 4)
    batch = next(loader)
    names = cfg.tasks.label.names
    assert batch["labelled"].all() and batch["label_targets"].shape == (4, len(names))
    for row, key in zip(batch["label_targets"], batch["keys"]):
        assert row.sum() == 1.0 and row.max() == 1.0, key   # the demo's answers: ten identical ones
    out = net(batch)
    assert [k for k in out if k.startswith("loss/")] == ["loss/label"]
    out["loss"].backward()
    trainable = [n for n, p in net.named_parameters() if p.requires_grad]
    assert not [n for n in trainable if net.get_parameter(n).grad is None]
    if task == "classify":
        assert trainable == ["label.net.weight", "label.net.bias"]
    # The new head learns at tasks.label.lr_mult x the rate of the pre-trained weights under it.
    from opt_scale.engine.optim import param_groups
    net.tasks.label.lr_mult = 10.0
    groups = param_groups(net, 0.01, 1e-4)
    head = {id(p) for p in net.label.parameters()}
    for g in groups:
        in_head = {id(p) in head for p in g["params"]}
        assert len(in_head) == 1 and g.get("lr", 1e-4) == pytest.approx(1e-3 if in_head == {True} else 1e-4)
    assert sum(len(g["params"]) for g in groups) == len(trainable)
