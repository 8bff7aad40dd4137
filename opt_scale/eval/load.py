"""Load a model for evaluation from an ``opt-export`` directory or a DeepSpeed checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

from opt_scale.model.exported import ExportedModel, load_exported


def load_for_eval(path: str | Path, device: str | torch.device = "cpu") -> ExportedModel:
    """An export directory is loaded as is; a checkpoint (or run) directory is
    consolidated in memory by DeepSpeed's zero_to_fp32 first."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return load_exported(path, device)
    import os
    import tempfile
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from opt_scale.engine.export import export_checkpoint
    with tempfile.TemporaryDirectory(prefix="opt-eval-") as tmp:
        export_checkpoint(path, tmp)
        return load_exported(tmp, device)
