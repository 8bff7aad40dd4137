"""Consolidated fp32 weights: from a running engine, or from a checkpoint on disk."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .checkpoint import MARKER, CheckpointError, complete_checkpoints, damaged_files, read_marker

EXPORT_FORMAT = "opt-scale-export-v1"


def gather_full_state_dict(engine, keep: bool = True) -> dict[str, torch.Tensor]:
    """Full fp32 copy of the module's state in host memory, on the ranks that
    pass ``keep`` (the others get ``{}``); every rank must call.

    Under ZeRO-3 each parameter is gathered from its partitions (a
    collective); otherwise the local module already holds whole tensors.
    The copy goes to the CPU: a second full model on the GPU of every rank
    is what ZeRO-3 exists to avoid."""
    module = engine.module

    def copy() -> dict[str, torch.Tensor]:
        if not keep:
            return {}
        return {k: v.detach().to("cpu", torch.float32, copy=True) for k, v in module.state_dict().items()}

    params = list(module.parameters())
    if params and hasattr(params[0], "ds_id"):
        import deepspeed
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            return copy()
    return copy()


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory (its newest complete checkpoint)."""
    path = Path(path)
    if (path / MARKER).is_file():
        return path
    for root in (path / "checkpoints", path):
        found = complete_checkpoints(root)
        if found:
            return found[0]
    raise FileNotFoundError(f"{path}: no complete checkpoint (a step_XXXXXXXX directory with {MARKER})")


def consolidate(tag_dir: Path) -> dict[str, torch.Tensor]:
    """fp32 weights recovered by DeepSpeed's own zero_to_fp32 from the partitions."""
    if not any(tag_dir.glob("*zero_pp_rank_*")):
        # Plain data parallel (train.ds_config=ddp, fp32): no partitions; the
        # model states file holds the whole module.
        states = torch.load(tag_dir / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
        return {k: v.float() for k, v in states["module"].items()}
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    state = get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
    return {k: v.float() for k, v in state.items()}


def split_aliases(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tied weights (the MLM head's projection is the text embedding) share
    storage; safetensors stores each tensor once, aliases in the metadata."""
    unique, aliases, by_ptr = {}, {}, {}
    for name in sorted(state):
        t = state[name]
        key = (t.data_ptr(), t.shape, t.stride())
        if key in by_ptr:
            aliases[name] = by_ptr[key]
        else:
            by_ptr[key] = name
            unique[name] = t.contiguous()
    return unique, aliases


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Write ``model.safetensors`` + ``config.json`` (+ tokenizer, VQ) to ``out_dir``."""
    tag_dir = find_checkpoint(checkpoint)
    # zero_to_fp32 reads whatever bytes it finds: a flipped bit becomes a
    # weight off by 1e37, exported without complaint. Check them first.
    problems = damaged_files(tag_dir)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckpointError(f"checkpoint {tag_dir} is damaged: {problems[0]}{more}; nothing exported")
    marker = read_marker(tag_dir)
    client = torch.load(next(tag_dir.glob("*model_states.pt")), map_location="cpu", weights_only=False)
    config = client.get("config")
    if config is None:
        raise ValueError(f"{tag_dir}: the checkpoint carries no config (not written by opt-train?)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    unique, aliases = split_aliases(consolidate(tag_dir))
    run_dir = tag_dir.parent.parent
    # No absolute path leaves the machine in an export: the source is named by
    # its run and checkpoint, the config's paths by their last component.
    meta = {"format": EXPORT_FORMAT, "task": config["train"]["task"], "step": str(marker["step"]),
            "aliases": json.dumps(aliases), "source": f"{run_dir.name}/{tag_dir.parent.name}/{tag_dir.name}"}
    save_file(unique, str(out / "model.safetensors"), metadata=meta)
    for name in ("tokenizer.model",):
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, out / name)
            config["data"]["tokenizer"] = name
    vq_path = config["model"]["vq"].get("checkpoint")
    if vq_path and Path(vq_path).is_file():
        shutil.copyfile(vq_path, out / "vq.safetensors")
        config["model"]["vq"]["checkpoint"] = "vq.safetensors"
    config = without_absolute_paths(config)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    from .model_card import write_model_card
    write_model_card(out, config, int(marker["step"]), run_dir, len(unique), sum(t.numel() for t in unique.values()))
    readable_by_group(out)
    return out


def without_absolute_paths(value):
    """``value`` (a config) with each absolute path, alone or in a comma list,
    reduced to its last component (where a file was is not part of a model)."""
    if isinstance(value, dict):
        return {k: without_absolute_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_absolute_paths(v) for v in value]
    if isinstance(value, str) and "/" in value and any(p.strip().startswith("/") for p in value.split(",")):
        return ",".join(Path(p.strip()).name if p.strip().startswith("/") else p for p in value.split(","))
    return value


def readable_by_group(directory: Path) -> None:
    """The export's files readable (its directory searchable) by the group, whatever the umask:
    a model is exported to be shared."""
    import stat
    for path in [directory, *directory.iterdir()]:
        extra = stat.S_IRGRP | (stat.S_IXGRP if path.is_dir() else 0)
        path.chmod(path.stat().st_mode | extra)


def load_export_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The exported tensors with tied names restored, and the metadata."""
    from safetensors import safe_open
    path = Path(path)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{path} is not an opt-export file")
    state = load_file(str(path))
    for alias, name in json.loads(meta["aliases"]).items():
        state[alias] = state[name]
    return state, meta
