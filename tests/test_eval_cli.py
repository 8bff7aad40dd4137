"""opt-eval end to end on a (briefly) trained checkpoint: one process and two."""

import json

import pytest
from PIL import Image

from opt_scale.eval.report import BEGIN, END

from .conftest import BIN, REPO, run_cli

DIRECTIONS = {"text->image", "image->text", "text->audio", "audio->text", "image->audio", "audio->image",
              "text+audio->image", "image+audio->text"}


def test_retrieval_from_a_deepspeed_checkpoint(trained_run, demo_shards, tmp_path):
    out = tmp_path / "r.json"
    proc = run_cli(["opt-eval", "retrieval", "--checkpoint", str(trained_run), "--shards",
                    str(demo_shards / "demo-index.json"), "--max-samples", "12", "--rerank", "4", "--json", str(out)],
                   timeout=300)
    res = json.loads(out.read_text())
    assert res["samples"] == 12 and set(res["recall"]) == DIRECTIONS
    assert set(res["by_protocol"]) == {"embedding", "rerank"}
    for protocol, recalls in res["by_protocol"].items():
        for d in DIRECTIONS:
            r = recalls[d]
            assert 0 <= r["R@1"] <= r["R@5"] <= r["R@10"] <= 100
            for k, value in r.items():  # a recall is hits / N: a multiple of 100 / 12
                assert abs(value * 12 / 100 - round(value * 12 / 100)) < 1e-6, (protocol, d, k, value)
    for d, recalls in embedding_recalls(trained_run, demo_shards, 12).items():
        assert res["by_protocol"]["embedding"][d] == pytest.approx(recalls, abs=1e-4), d
    assert "text+audio->image" in proc.stdout


def embedding_recalls(run, shards, n: int) -> dict:
    """R@1/5/10 in % of every direction, counted here from the embeddings'
    cosine similarities: a query hits at k when a right candidate (same image
    when an image is involved, else the same narrative) is among its k best."""
    from opt_scale.eval.data import iter_eval_batches
    from opt_scale.eval.load import load_for_eval
    from opt_scale.eval.retrieval import encode_set
    loaded = load_for_eval(run)
    data = encode_set(loaded.net, iter_eval_batches(str(shards / "demo-index.json"), loaded.config.model,
                                                    loaded.tokenizer, 8, n), "cpu")
    assert len(data) == n
    out = {}
    for d in DIRECTIONS:
        query, target = d.split("->")
        sims = sum(data.embeddings[m] @ data.embeddings[target].t() for m in query.split("+"))
        ids = data.image_ids if "image" in d else data.keys
        ranks = []
        for q in range(n):
            order = sorted(range(n), key=lambda c: -float(sims[q, c]))
            ranks.append(next(i for i, c in enumerate(order) if ids[c] == ids[q]))
        out[d] = {f"R@{k}": 100 * sum(r < k for r in ranks) / n for k in (1, 5, 10)}
    return out


@pytest.mark.distributed
def test_retrieval_over_two_ranks_equals_one_process(trained_run, demo_shards, tmp_path):
    args = ["retrieval", "--checkpoint", str(trained_run), "--shards", str(demo_shards / "demo-index.json"),
            "--max-samples", "10", "--rerank", "3"]
    run_cli(["opt-eval", *args, "--json", str(tmp_path / "one.json")], timeout=300)
    run_cli([str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", str(BIN / "opt-eval"), *args, "--json",
             str(tmp_path / "two.json")], timeout=300)
    one, two = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert two["samples"] == 10
    for d in DIRECTIONS:
        assert two["recall"][d] == pytest.approx(one["recall"][d])


def test_caption_and_generate_from_an_export(trained_run, demo_shards, tmp_path):
    export = tmp_path / "export"
    run_cli(["opt-export", str(trained_run), "--out", str(export)], timeout=300)
    out = tmp_path / "caption.json"
    run_cli(["opt-eval", "caption", "--checkpoint", str(export), "--shards", str(demo_shards / "demo-index.json"),
             "--max-samples", "4", "--beam", "2", "--json", str(out)], timeout=300)
    res = json.loads(out.read_text())
    assert set(res["scores"]) == {"image", "audio", "image+audio"}
    assert {"BLEU-4", "CIDEr"} <= set(res["scores"]["image"]) and "WER" in res["scores"]["audio"]
    assert len(res["examples"]) == 4 and res["samples"] == 4
    for source, scores in res["scores"].items():
        assert 0 <= scores["BLEU-4"] <= 100 and scores["CIDEr"] >= 0, source
    assert 0 <= res["scores"]["audio"]["WER"]
    grid = tmp_path / "text_to_image.png"
    run_cli(["opt-eval", "generate", "--checkpoint", str(export), "--prompt", "a small red circle",
             "--prompts-from", str(demo_shards / "demo-index.json"), "--num-prompts", "1",
             "--n", "3", "--top-k", "8", "--out", str(grid), "--json", str(tmp_path / "generate.json")], timeout=300)
    assert json.loads((tmp_path / "generate.json").read_text())["reference_columns"] == 2
    with Image.open(grid) as im:
        # A row per prompt; the data's prompt starts with its image and VQ reconstruction, then a grey bar.
        assert im.size[0] == (5 * 64 + 6) * 2 and im.size[1] == 2 * (64 * 2 + 14)
        rgb = im.convert("RGB")
        second_row = 64 * 2 + 14 + 14
        assert rgb.getpixel((2 * 64 * 2 + 6, second_row + 60)) == (128, 128, 128)  # the bar after the references
        assert rgb.getpixel((im.size[0] - 1, 60)) == (255, 255, 255)  # the first row has no references: shorter

    # The README's results section is rendered from exactly these files.
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{BEGIN}\nstale figures\n{END}\n\n## next section\n")
    run_cli(["opt-eval", "report", "--eval-dir", str(tmp_path), "--run", str(trained_run), "--readme", str(readme)])
    text = readme.read_text()
    assert "stale figures" not in text and text.startswith("# title") and text.endswith("## next section\n")
    assert f"| image | {res['scores']['image']['BLEU-4']:.1f} |" in text
    assert "Training (" in text and "4 steps" in text
    assert "](docs/demo_text_to_image.png)" in text and (tmp_path / "docs" / "demo_text_to_image.png").is_file()


def test_report_refuses_a_readme_without_markers(tmp_path):
    scores = {"image": {"BLEU-4": 50.0, "CIDEr": 1.0}}
    (tmp_path / "caption.json").write_text(json.dumps({"samples": 2, "scores": scores}))
    readme = tmp_path / "README.md"
    readme.write_text("# no markers here\n")
    proc = run_cli(["opt-eval", "report", "--eval-dir", str(tmp_path), "--readme", str(readme)], check=False)
    assert proc.returncode != 0 and "results:begin" in proc.stderr
    assert readme.read_text() == "# no markers here\n"


@pytest.mark.distributed
def test_periodic_evaluation_shared_by_two_ranks_equals_one_process(trained_run, demo_shards, tmp_path):
    """Training's periodic evaluation: each rank encodes, matches, captions and
    draws its share and the shares are gathered back in sample order, so two
    ranks report exactly what one process does (no rank works alone while
    the other waits in a collective)."""
    export = tmp_path / "export"
    run_cli(["opt-export", str(trained_run), "--out", str(export)], timeout=300)
    script = str(REPO / "tests" / "dist_scripts" / "shared_eval.py")
    shards = str(demo_shards / "demo-index.json")
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    run_cli([str(BIN / "python"), script, str(export), shards, "10", str(one)], timeout=300)
    run_cli([str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", script, str(export), shards, "10",
             str(two)], timeout=300)
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    (alone,), shares = a["work"], b["work"]
    assert alone["encoded"] == 10 and [s["encoded"] for s in shares] == [5, 5]
    for share in shares:  # matching triplets, captions and grid rows: each rank about half
        assert abs(share["fused_rows"] - alone["fused_rows"] / 2) <= 0.1 * alone["fused_rows"], (alone, shares)
    assert set(a["metrics"]) == set(b["metrics"]) and "eval/matching/hard_accuracy" in a["metrics"]
    for name, value in a["metrics"].items():
        assert b["metrics"][name] == pytest.approx(value, abs=1e-6), name
    assert a["examples"] == b["examples"] and a["grid"] == b["grid"]
