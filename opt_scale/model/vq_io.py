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


FORMAT = "opt-scale-vq-v2"  # v2: resolution and grid recorded (v1 tied the grid to the vision patch size)


def save_vq(state: dict[str, torch.Tensor], cfg: VQConfig, grid: int, path: str | Path) -> None:
    """``cfg`` with its ``image_size`` resolved (see :func:`opt_scale.model.vq.build_vq`)."""
    cfg_dict = {**asdict(cfg), "checkpoint": ""}
    meta = {"vq_config": json.dumps(cfg_dict), "grid": str(grid), "format": FORMAT}
    tmp = Path(str(path) + ".tmp")
    save_file({k: v.detach().float().contiguous().cpu() for k, v in state.items()}, str(tmp), metadata=meta)
    tmp.replace(path)


def load_vq(path: str | Path, expect_grid: int | None = None) -> VQTokenizer:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config key 'model.vq.checkpoint': no file {str(path)!r}; train one with "
                          "`opt-train --task vq ...` (it writes <out_dir>/vq.safetensors)")
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") == "opt-scale-vq-v1":
        raise ConfigError(f"config key 'model.vq.checkpoint': {path} is a VQ tokenizer of an older opt-scale "
                          "(format v1, its grid tied to the patch size); train a new one with `opt-train --task vq`")
    if meta.get("format") != FORMAT:
        raise ConfigError(f"config key 'model.vq.checkpoint': {path} is not an opt-scale VQ tokenizer")
    cfg = from_dict(VQConfig, json.loads(meta["vq_config"]))
    grid = int(meta["grid"])
    if expect_grid is not None and grid != expect_grid:
        raise ConfigError(f"config key 'model.vq.checkpoint': the tokenizer's code grid is {grid} x {grid} but "
                          f"the vision tower's patch grid is {expect_grid} x {expect_grid} (model.vision.image_size"
                          " / patch_size): MVM needs one code per patch")
    vq = VQTokenizer(cfg, grid)
    vq.load_state_dict(load_file(str(path)))
    vq.eval().requires_grad_(False)
    return vq
