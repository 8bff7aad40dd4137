"""Evaluation during training: ``opt-eval``'s metrics, to TensorBoard.

Every ``train.eval_every`` steps all ranks gather the full weights (ZeRO-3
partitions are all-gathered: a collective, so the models that fit in one
process's host memory) and evaluate a plain copy of the model on the first
``train.eval_samples`` samples of ``data.eval_shards`` together, as
``opt-eval`` does across ranks: each encodes its share of the samples, scores
its share of the matching triplets, captions its share and draws its share
of the text-to-image rows, and the shares are all-gathered. No rank works
while the others wait at a barrier, so the pause shrinks with the number of
ranks and no collective timeout runs out on one rank's work. Rank 0 writes
the figures: retrieval R@1/5/10 for every direction, matching accuracy and
hard-negative AUC, caption BLEU-4/CIDEr/WER and per-attribute accuracy, and a
text-to-image grid. The settings are lighter than ``opt-eval``'s, to keep the
pause short: the embedding ranking only (no re-ranking) and greedy captions
(not beam 3) of the first 32 samples, so the figures track progress but are
not the ones ``opt-eval`` reports.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
import torch.distributed as dist

from .export import gather_full_state_dict

log = logging.getLogger(__name__)


class PeriodicEvaluator:
    def __init__(self, cfg, engine, frozen_vq, tokenizer, writer, is_main: bool):
        self.cfg = cfg
        self.engine = engine
        self.vq = frozen_vq
        self.tokenizer = tokenizer
        self.writer = writer
        self.is_main = is_main

    def enabled(self, step: int) -> bool:
        every = self.cfg.train.eval_every
        return bool(every and self.cfg.data.eval_shards and step % every == 0)

    def run(self, step: int) -> dict:
        state = gather_full_state_dict(self.engine, keep=True)  # a collective; every rank evaluates
        started = time.time()
        metrics = self._evaluate(state)
        del state
        if self.is_main:
            for name, value in metrics.items():
                if not isinstance(value, (str, np.ndarray)):
                    self.writer.add_scalar(name, value, step)
            if "eval/examples" in metrics:
                self.writer.add_text("eval/captions", metrics["eval/examples"], step)
            if "eval/grid" in metrics:
                self.writer.add_image("eval/text_to_image", metrics["eval/grid"], step, dataformats="HWC")
            self.writer.flush()
            log.info("eval at step %d (%.0fs): %s", step, time.time() - started,
                     ", ".join(f"{k[5:]} {v:.1f}" for k, v in metrics.items() if k.endswith(("R@1", "BLEU-4"))))
        return metrics

    @torch.no_grad()
    def _evaluate(self, state: dict) -> dict:
        """A collective: every rank calls it with the full state and gets the metrics."""
        from opt_scale.eval.attributes import attribute_accuracy
        from opt_scale.eval.captioning import SOURCES, caption_set, gather_captions, score_captions
        from opt_scale.eval.data import iter_eval_batches
        from opt_scale.eval.grid import image_grid
        from opt_scale.eval.matching_eval import evaluate_matching
        from opt_scale.eval.retrieval import encode_set, evaluate_retrieval, gather_sets
        from opt_scale.model.generation import OPTGenerator
        from opt_scale.tasks.pretrainer import OPTPretrainer

        cfg = self.cfg
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        shard = dict(rank=rank, world_size=world)
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        net = OPTPretrainer(cfg.model, cfg.tasks, vq=self.vq)
        net.load_state_dict(state)
        net.to(device).eval()
        batches = list(iter_eval_batches(cfg.data.eval_shards, cfg.model, self.tokenizer, 32,
                                         cfg.train.eval_samples, rank, world))
        metrics: dict = {}
        data = gather_sets(encode_set(net, batches, device))
        # The embedding ranking only: re-ranking costs a cross-encoder pass
        # per candidate, and opt-eval reports both protocols at the end.
        recall = evaluate_retrieval(net, data, rerank=0, device=device, **shard)["embedding"]
        for direction, values in recall.items():
            for k, v in values.items():
                metrics[f"eval/retrieval/{direction}/{k}"] = v
        matching = evaluate_matching(net, data, device, **shard)
        for way, acc in matching["accuracy"].items():
            metrics[f"eval/matching/{way}_accuracy"] = acc
        for pair, by_way in matching["pair_auc"].items():
            metrics[f"eval/matching/{pair}_auc_hard"] = by_way["hard"]
        gen = OPTGenerator(net, self.tokenizer)
        # Greedy captions of the first 32 samples, each rank its share.
        share = -(-min(32, cfg.train.eval_samples) // world)
        caption_batches = iter_eval_batches(cfg.data.eval_shards, cfg.model, self.tokenizer, share,
                                            min(32, cfg.train.eval_samples), rank, world)
        caps = gather_captions(caption_set(gen, caption_batches, beam=1))
        for source, values in score_captions(caps).items():
            for k, v in values.items():
                metrics[f"eval/caption/{source}/{k}"] = v
        for attr, v in attribute_accuracy(caps["image"], caps["references"])["attributes"].items():
            metrics[f"eval/caption/image/{attr}_accuracy"] = v["accuracy"]
        metrics["eval/examples"] = "\n\n".join(
            f"**reference** {caps['references'][i]}  \n" + "  \n".join(f"**{s}** {caps[s][i]}" for s in SOURCES)
            for i in range(min(3, len(caps["keys"]))))
        if self.vq is not None:
            prompts = caps["references"][:2]
            metrics["eval/grid"] = np.asarray(image_grid(gen, prompts, per_prompt=4, top_k=50, **shard))
        net.to("cpu")
        return metrics
