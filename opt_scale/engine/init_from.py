"""Fine-tuning's starting point: a pre-trained OPT's weights (``train.init_from``).

Loaded into the freshly built module before ``deepspeed.initialize``, which
copies the parameters into the optimizer's fp32 master weights: weights
changed after it would be overwritten by the stale copy at the first step.
Under ZeRO-3 the module is already partitioned (``zero.Init``), so rank 0
loads the whole state inside ``GatheredParameters(modifier_rank=0)`` and
DeepSpeed re-partitions it on exit (the model must fit one process's host
memory once, as for ``opt-export``). Otherwise every rank loads it.

A fresh fine-tuning run only: a resumed one takes its own checkpoint's
weights, and this is skipped.
"""

from __future__ import annotations

import logging

import torch

from opt_scale.data.tokenizer import Tokenizer
from opt_scale.utils.config_tools import ConfigError

from .distributed import from_rank0

log = logging.getLogger(__name__)


def load_initial_weights(model: torch.nn.Module, path: str, tokenizer: Tokenizer, rank: int) -> None:
    """A collective: every rank calls it; all raise the same ConfigError on a mismatch."""
    params = list(model.parameters())
    partitioned = bool(params) and hasattr(params[0], "ds_id")
    problem = None
    if partitioned:
        import deepspeed
        with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
            if rank == 0:
                problem = _load(model, path, tokenizer)
        problem = from_rank0(problem)
    else:
        problem = _load(model, path, tokenizer)
    if problem:
        raise ConfigError(f"config key 'train.init_from' ({path}): {problem}")
    if rank == 0:
        log.info("fine-tuning from %s", path)


def _load(model: torch.nn.Module, path: str, tokenizer: Tokenizer) -> str | None:
    """Load ``path``'s weights into ``model``; what is wrong, or None."""
    from opt_scale.eval.load import load_for_eval
    try:
        source = load_for_eval(path)
    except (OSError, ValueError) as exc:
        return f"not a pre-trained OPT export, checkpoint or run directory ({exc})"
    if _pieces(source.tokenizer.sp) != _pieces(tokenizer.sp):
        return (f"it was trained with another tokenizer than data.tokenizer ({tokenizer.path}): use its own, "
                "the tokenizer.model beside its weights")
    state = source.net.state_dict()
    own = model.state_dict()
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    # A downstream head (vqa, classify) new to the pre-trained model starts from its own initialisation.
    new_head = [k for k in own if k not in state and k.startswith("label.")]
    missing = [k for k in own if k not in state and k not in new_head]
    if wrong or missing:
        detail = (f"{wrong[0]} is {tuple(state[wrong[0]].shape)} there, {tuple(own[wrong[0]].shape)} here" if wrong
                  else f"it has no {missing[0]}")
        return (f"its model differs from this run's ({detail}): use the model config of the run it came from "
                "(model.* in its config.json)")
    model.load_state_dict({k: state[k] for k in own if k not in new_head}, strict=not new_head)
    if new_head:
        log.info("init_from: the label head (%d tensors) is new: initialised, not loaded", len(new_head))
    return None


def _pieces(sp) -> list[str]:
    """The vocabulary, piece by id: the same ids mean the same text."""
    return [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
