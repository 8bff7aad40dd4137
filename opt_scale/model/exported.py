"""Load an ``opt-export`` directory as a ready single-process model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from opt_scale.config import RunConfig
from opt_scale.data.tokenizer import Tokenizer
from opt_scale.engine.export import load_export_state
from opt_scale.tasks.pretrainer import OPTPretrainer
from opt_scale.tasks.registry import load_frozen_vq, trains_opt
from opt_scale.utils.config_tools import from_dict


@dataclass
class ExportedModel:
    config: RunConfig
    net: OPTPretrainer
    tokenizer: Tokenizer


def load_exported(directory: str | Path, device: str | torch.device = "cpu") -> ExportedModel:
    d = Path(directory)
    raw = json.loads((d / "config.json").read_text())
    raw["data"]["tokenizer"] = str(d / raw["data"]["tokenizer"])
    if raw["model"]["vq"].get("checkpoint"):
        raw["model"]["vq"]["checkpoint"] = str(d / raw["model"]["vq"]["checkpoint"])
    cfg = from_dict(RunConfig, raw)
    if not trains_opt(cfg.train.task):
        raise ValueError(f"{d} holds a VQ tokenizer, not an OPT export")
    net = OPTPretrainer(cfg.model, cfg.tasks, vq=load_frozen_vq(cfg))
    state, _ = load_export_state(d / "model.safetensors")
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{d}: weights do not fit the model (missing {missing[:5]}, unexpected {unexpected[:5]})")
    return ExportedModel(cfg, net.to(device).eval(), Tokenizer(cfg.data.tokenizer))
