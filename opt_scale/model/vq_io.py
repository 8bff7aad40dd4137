"""Save and load the frozen VQ tokenizer as one self-describing safetensors file."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from opt_scale.utils.config_tools import ConfigError, from_dict

from .config import VQConfig
from .vq import VQTokenizer


def save_vq(state: dict[str, torch.Tensor], cfg: VQConfig, patch_size: int, path: str | Path) -> None:
    cfg_dict = {**asdict(cfg), "checkpoint": ""}
    meta = {"vq_config": json.dumps(cfg_dict), "patch_size": str(patch_size), "format": "opt-scale-vq-v1"}
    tmp = Path(str(path) + ".tmp")
    save_file({k: v.detach().float().contiguous().cpu() for k, v in state.items()}, str(tmp), metadata=meta)
    tmp.replace(path)


def load_vq(path: str | Path, expect_patch_size: int | None = None) -> VQTokenizer:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config key 'model.vq.checkpoint': no file {str(path)!r}; train one with "
                          "`opt-train --task vq ...` (it writes <out_dir>/vq.safetensors)")
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != "opt-scale-vq-v1":
        raise ConfigError(f"config key 'model.vq.checkpoint': {path} is not an opt-scale VQ tokenizer")
    cfg = from_dict(VQConfig, json.loads(meta["vq_config"]))
    patch = int(meta["patch_size"])
    if expect_patch_size is not None and patch != expect_patch_size:
        raise ConfigError(f"config key 'model.vq.checkpoint': tokenizer grid is {patch} px but "
                          f"model.vision.patch_size is {expect_patch_size}")
    vq = VQTokenizer(cfg, patch)
    vq.load_state_dict(load_file(str(path)))
    vq.eval().requires_grad_(False)
    return vq
