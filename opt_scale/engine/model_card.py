"""The export's ``README.md``: what the model is, what it was trained on, how far, and how well.

Written by ``opt-export`` beside the weights, from the run's config and its
TensorBoard scalars (the training losses at the exported step, and the last
periodic evaluation at or before it, each beside its baseline where the run
logged one). Nothing here needs the model loaded.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def _scalars_at(run_dir: Path, step: int) -> dict[str, float]:
    """Each scalar's last value at or before ``step`` (empty without event files)."""
    tb = run_dir / "tensorboard"
    if not tb.is_dir():
        return {}
    from opt_scale.bench.events import read_scalars
    try:
        scalars = read_scalars(tb)
    except Exception as exc:  # a damaged event file must not stop an export
        log.warning("model card: cannot read %s (%s); written without figures", tb, exc)
        return {}
    found = {}
    for tag, points in scalars.items():
        before = [v for s, v in points if s <= step]
        if before:
            found[tag] = before[-1]
    return found


def _table(rows: list[tuple[str, str]]) -> list[str]:
    return ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]


def write_model_card(out: Path, config: dict, step: int, run_dir: Path, tensors: int, parameters: int) -> Path:
    model, train, data, tasks = config["model"], config["train"], config["data"], config["tasks"]
    active = [name for name, t in tasks.items() if isinstance(t, dict) and t.get("weight", 0) > 0]
    lines = [f"# OPT ({train['task']}), step {step}", "",
             "An Omni-Perception Pre-Trainer (text, image and audio towers, a cross-modal encoder, text and "
             "image decoders) exported by `opt-export`: fp32 weights in `model.safetensors` (a plain "
             "`load_state_dict(strict=True)` of `OPTPretrainer(config.model, config.tasks)` takes them), its "
             "`config.json`, and the tokenizer (and VQ image tokenizer) it was trained with. Load it with "
             "`opt_scale.load(\"<this directory>\")` or evaluate it with `opt-eval ... --checkpoint <this directory>`.",
             "", "## Model", ""]
    lines += _table([("parameters", f"{parameters / 1e6:.2f} M in {tensors} tensors"),
                     ("cross-modal encoder", f"{model['cross']['layers']} layers x {model['cross']['hidden']} "
                                             f"hidden, {model['cross']['heads']} heads"),
                     ("image", f"{model['vision']['image_size']} px, patch {model['vision']['patch_size']}"),
                     ("text", f"vocabulary {model['text']['vocab_size']}, at most {model['text']['max_len']} tokens"),
                     ("audio", f"{model['audio']['n_mels']} mel bands, at most {model['audio']['max_seconds']} s")])
    if tasks.get("label", {}).get("names"):
        names = tasks["label"]["names"]
        shown = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
        lines += ["", f"Label head ({tasks['label']['features']} features of {'+'.join(tasks['label']['modalities'])}, "
                      f"{tasks['label']['head']}): {shown}"]
    lines += ["", "## Training", ""]
    lines += _table([("task", train["task"]), ("steps", f"{step} of {train['steps']}"),
                     ("pretext / downstream tasks", ", ".join(active) or "-"),
                     ("training data", f"`{data['train_shards']}`" + (f" (weights {data['train_weights']})"
                                                                     if data.get("train_weights") else "")),
                     ("batch", f"{train['micro_batch_size']} per rank x {train['grad_accum']} accumulation"),
                     ("learning rate", f"{train['lr']:g}, {train['warmup_steps']} warm-up steps"),
                     ("started from", f"`{train['init_from']}`" if train.get("init_from") else "scratch")])
    scalars = _scalars_at(run_dir, step)
    losses = sorted((k, v) for k, v in scalars.items() if k.startswith("loss/"))
    if losses:
        lines += ["", f"Training losses at step {step} (last logged value):", ""]
        lines += _table([(k, f"{v:.4f}") for k, v in losses])
    evals = sorted((k, v) for k, v in scalars.items() if k.startswith("eval/"))
    if evals:
        lines += ["", "## Evaluation", "",
                  f"The run's last periodic evaluation (`train.eval_every`) on `{data.get('eval_shards', '')}` "
                  "(retrieval recall in %; chance is 1/N of the evaluated samples at R@1):", ""]
        lines += _table([(k, f"{v:.4g}") for k, v in evals])
    else:
        lines += ["", "## Evaluation", "", "The run logged no periodic evaluation: score this export with "
                  "`opt-eval retrieval|caption|matching|vqa|classify`."]
    path = out / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path
