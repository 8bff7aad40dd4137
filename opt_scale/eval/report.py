"""Markdown results from what ``opt-eval`` and ``opt-bench learning`` wrote.

``opt-eval report`` turns the JSON of a retrieval and a caption run (plus,
optionally, the training run's TensorBoard scalars and an ``opt-bench
learning`` JSON) into tables, and with ``--readme`` rewrites the README's
results section between its two markers. The README's figures are therefore
produced by commands, never typed in by hand.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

BEGIN = "<!-- results:begin (written by opt-eval report; edit the command, not the text) -->"
END = "<!-- results:end -->"
GRID_NAME = "text_to_image.png"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _arrow(direction: str) -> str:
    short = {"text": "T", "image": "I", "audio": "A"}
    src, dst = direction.split("->")
    return "+".join(short[s] for s in src.split("+")) + "→" + short[dst]


def training_section(run_dir: Path) -> str:
    from opt_scale.bench.events import read_scalars
    scalars = read_scalars(run_dir / "tensorboard")
    loss = scalars.get("loss/total")
    if not loss:
        raise ValueError(f"{run_dir}/tensorboard has no loss/total scalars: is it an opt-train run directory?")
    rate = [v for _, v in scalars.get("throughput/samples_per_s", [])]
    text = (f"Training (`{run_dir}`): {loss[-1][0]} steps, total loss {loss[0][1]:.2f} (first log window) → "
            f"{loss[-1][1]:.2f} (last)")
    return text + (f", {sum(rate) / len(rate):.1f} samples/s." if rate else ".")


def retrieval_section(result: dict) -> str:
    """Both protocols side by side (older JSON without ``by_protocol``: the one it has)."""
    by_protocol = result.get("by_protocol") or {result.get("protocol", "embedding"): result["recall"]}
    label = {"embedding": "emb", "rerank": f"rerank{result.get('rerank', '')}"}
    header = ["direction"] + [f"{label[p]} R@{k}" for p in by_protocol for k in (1, 5, 10)]
    # In the order opt-eval wrote them (retrieval.DIRECTIONS: the six single, then the paired queries).
    rows = [[_arrow(d)] + [f"{by_protocol[p][d][f'R@{k}']:.1f}" for p in by_protocol for k in (1, 5, 10)]
            for d in by_protocol[next(iter(by_protocol))]]
    n = result["samples"]
    chance = ", ".join(f"R@{k} {100 * min(1.0, k / n):.1f}" for k in (1, 5, 10))
    text = (f"Retrieval over {n} held-out samples, recall in % (chance, which is also the content-blind score: "
            f"{chance}). emb: embedding similarity")
    if "rerank" in by_protocol:
        text += (f"; rerank{result['rerank']}: its top {result['rerank']} re-scored by similarity + the matching "
                 f"head")
    return text + f". Headline protocol (opt-eval's default): **{result.get('protocol', 'embedding')}**.\n\n" + _table(
        header, rows)


def matching_section(result: dict) -> str:
    rows = [[way, f"{acc:.2f}", f"{result['content_blind_accuracy']:.2f}"] for way, acc in result["accuracy"].items()]
    text = (f"Matching (5-way: matched, image swapped, audio swapped, both swapped together, both swapped apart) "
            f"over {result['samples']} held-out samples; random negatives are other samples, hard ones the "
            f"nearest by embedding:\n\n" + _table(["negatives", "accuracy", "content-blind"], rows))
    aucs = [[pair] + [f"{v:.2f}" for v in by_way.values()] for pair, by_way in result["pair_auc"].items()]
    ways = list(next(iter(result["pair_auc"].values())))
    return text + "\n\nP(matched), true pair vs wrong pair (AUC; content-blind 0.50):\n\n" + _table(
        ["pair"] + [f"AUC {w}" for w in ways], aucs)


def attribute_section(by_source: dict) -> str:
    rows = [[source, attr, f"{v['accuracy']:.2f}", f"{v['chance']:.2f}", f"{v['content_blind']:.2f}"]
            for source, res in by_source.items() for attr, v in res["attributes"].items()
            if attr in ("colour", "shape", "colour+shape", "position")]
    if not rows:
        return ""
    n = next(iter(by_source.values()))["samples"]
    return (f"Attributes the captions name right, over {n} single-object held-out images:\n\n"
            + _table(["from", "attribute", "accuracy", "chance", "content-blind"], rows))


def caption_section(result: dict) -> str:
    rows = []
    for source, scores in result["scores"].items():
        wer = f"{scores['WER']:.1f}" if "WER" in scores else "—"
        rows.append([source, f"{scores['BLEU-4']:.1f}", f"{scores['CIDEr']:.2f}", wer])
    text = (f"Captioning over {result['samples']} held-out samples:\n\n"
            + _table(["from", "BLEU-4", "CIDEr", "WER (%)"], rows))
    if result.get("attributes") and attribute_section(result["attributes"]):
        text += "\n\n" + attribute_section(result["attributes"])
    if result.get("examples"):
        ex = result["examples"][0]
        text += "\n\nFor example:\n\n```\n" + "\n".join(f"{k + ':':<12} {v}" for k, v in ex.items()) + "\n```"
    return text


def learning_section(result: dict, plot_link: str | None = None) -> str:
    rows = [[t["task"], f"{t['loss_start']:.2f}", f"{t['loss_end']:.2f}", f"{t['end/start']:.2f}"]
            for t in result["tasks"]]
    acc = result["matching_accuracy"]
    return (f"`opt-bench learning`: {result['steps']} steps on {result['ranks']} rank(s), "
            f"{result['minutes']:.1f} min; loss of the first log window and the mean of the last three:\n\n"
            + _table(["task", "start", "end", "end/start"], rows)
            + f"\n\nTraining matching accuracy (5-way, on training batches): {acc['start']:.2f} → {acc['end']:.2f}"
            + (f" (content-blind: {acc['content_blind']:.2f})." if acc.get("content_blind") is not None else ".")
            + (held_out_section(result["held_out"]) if result.get("held_out") else "")
            + (f"\n\n![per-task losses and matching accuracy over the run]({plot_link})" if plot_link else ""))


def held_out_section(held: dict) -> str:
    """What the longer run's final checkpoint does on the held-out samples."""
    recall = held["retrieval"]
    r5 = {p: [v["R@5"] for v in recall[p].values()] for p in recall}
    text = (f"\n\nOn the {held['samples']} held-out samples after it: retrieval R@5 "
            + "; ".join(f"{p} {min(v):.1f}-{max(v):.1f}" for p, v in r5.items())
            + f" over the eight directions (chance {100 * min(1.0, 5 / held['samples']):.1f}).")
    m = held["matching"]
    text += (f" Matching: {m['accuracy']['random']:.2f} with random negatives, {m['accuracy']['hard']:.2f} with "
             f"hard ones (content-blind {m['content_blind_accuracy']:.2f}).")
    attrs = held["caption_image_attributes"]
    if attrs.get("attributes"):
        text += "\n\n" + attribute_section({"image (greedy)": attrs})
    return text


def render(eval_dir: Path, run_dir: Path | None = None, learning_json: Path | None = None,
           grid_link: str | None = None, learning_plot_link: str | None = None) -> str:
    """The results as markdown; every part whose input is missing is left out."""
    parts = []
    if run_dir is not None:
        parts.append(training_section(run_dir))
    for name, section in (("retrieval.json", retrieval_section), ("matching.json", matching_section),
                          ("caption.json", caption_section)):
        path = eval_dir / name
        if path.is_file():
            parts.append(section(json.loads(path.read_text())))
    if grid_link is not None:
        parts.append("Text-to-image (`opt-eval generate`; one row per prompt; a prompt taken from the data "
                     "starts with its own image and that image's VQ reconstruction, the best the codes can "
                     f"draw, then a grey bar):\n\n![text-to-image grid]({grid_link})")
    if learning_json is not None:
        parts.append(learning_section(json.loads(learning_json.read_text()), learning_plot_link))
    if not parts:
        raise FileNotFoundError(f"nothing to report: no retrieval.json or caption.json in {eval_dir}")
    return "\n\n".join(parts) + "\n"


def update_readme(readme: Path, block: str) -> None:
    """Replace the text between the markers; refuse when they are missing."""
    text = readme.read_text()
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{readme} has no results markers; add the two lines\n{BEGIN}\n{END}\nwhere the results go")
    tmp = readme.with_suffix(readme.suffix + ".tmp")
    tmp.write_text(text[: start + len(BEGIN)] + "\n" + block + text[end:])
    tmp.replace(readme)


def report(eval_dir: str, run_dir: str | None, learning_json: str | None, readme: str | None) -> str:
    eval_path = Path(eval_dir)

    def link(image: Path) -> str | None:
        """Where the markdown finds ``image``: with ``--readme``, a copy in
        docs/ beside it (run directories are not committed)."""
        if not image.is_file():
            return None
        if not readme:
            return str(image)
        docs = Path(readme).parent / "docs"
        docs.mkdir(exist_ok=True)
        shutil.copyfile(image, docs / f"demo_{image.name}")
        return f"docs/demo_{image.name}"

    learning = Path(learning_json) if learning_json else None
    block = render(eval_path, Path(run_dir) if run_dir else None, learning, link(eval_path / GRID_NAME),
                   link(learning.with_suffix(".png")) if learning else None)
    if readme:
        update_readme(Path(readme), block)
    return block
