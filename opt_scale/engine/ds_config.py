"""DeepSpeed configs: load from ds_configs/, fill from the training config.

The training config owns micro batch, accumulation, clipping and precision;
the DeepSpeed file says ``"auto"`` for them and we fill them in. A file that
states a literal value different from the training config is refused with a
message naming both keys, instead of one silently winning. A key DeepSpeed
does not know (a typo) is refused too (see ds_keys.py).
"""

from __future__ import annotations

from pathlib import Path

import hjson
import torch

from opt_scale.utils.config_tools import ConfigError

from .config import TrainConfig
from .ds_keys import check_known_keys

REPO_DS_CONFIGS = Path(__file__).resolve().parents[2] / "ds_configs"
AUTO = "auto"


def resolve_precision(train: TrainConfig) -> str:
    if train.precision != "auto":
        return train.precision
    return "bf16" if torch.cuda.is_available() else "fp32"


def resolve_path(name: str) -> Path:
    if name == AUTO:
        name = "zero3_gpu" if torch.cuda.is_available() else "zero3_cpu"
    candidates = [Path(name), REPO_DS_CONFIGS / name, REPO_DS_CONFIGS / f"{name}.json"]
    for path in candidates:
        if path.is_file():
            return path
    known = ", ".join(sorted(p.stem for p in REPO_DS_CONFIGS.glob("*.json")))
    raise ConfigError(f"config key 'train.ds_config': no DeepSpeed config {name!r} (known: {known})")


def build_ds_config(train: TrainConfig, world_size: int) -> dict:
    path = resolve_path(train.ds_config)
    with open(path) as f:
        ds = hjson.load(f, object_pairs_hook=dict)
    for key in ("optimizer", "scheduler"):
        if key in ds:
            raise ConfigError(f"{path}: '{key}' is set, but opt-scale builds the optimizer and schedule from "
                              "train.lr / train.warmup_steps / train.weight_decay; remove it from the file")
    precision = resolve_precision(train)
    owned = {
        "train_micro_batch_size_per_gpu": (train.micro_batch_size, "train.micro_batch_size"),
        "gradient_accumulation_steps": (train.grad_accum, "train.grad_accum"),
        "train_batch_size": (train.micro_batch_size * train.grad_accum * world_size,
                             "train.micro_batch_size x train.grad_accum x world size"),
        "gradient_clipping": (train.grad_clip, "train.grad_clip"),
        "bf16.enabled": (precision == "bf16", "train.precision"),
        "fp16.enabled": (precision == "fp16", "train.precision"),
    }
    for dotted, (value, owner) in owned.items():
        node, leaf = _node(ds, dotted)
        current = node.get(leaf, AUTO)
        if current == AUTO:
            node[leaf] = value
        elif current != value:
            raise ConfigError(f"{path}: '{dotted}' is {current!r} but {owner} gives {value!r}; "
                              f"set it to \"auto\" or make the two agree")
    if precision == "fp16":
        ds["fp16"].setdefault("loss_scale", 0)  # dynamic loss scaling
    check_known_keys(ds, path)
    return ds


def zero_stage(ds: dict) -> int:
    return int(ds.get("zero_optimization", {}).get("stage", 0))


def offloads_optimizer(ds: dict) -> bool:
    return ds.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none") not in ("none", None)


def _node(ds: dict, dotted: str) -> tuple[dict, str]:
    *parents, leaf = dotted.split(".")
    node = ds
    for p in parents:
        node = node.setdefault(p, {})
    return node, leaf
