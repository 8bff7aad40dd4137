"""Checks of the console scripts' flags, run before any model is loaded.

Each raises a UsageError naming the flag (``opt_scale.utils.cli_errors``
prints it as one line, exit 2); paths are checked by
``opt_scale.utils.input_paths``.
"""

from __future__ import annotations

from pathlib import Path

from opt_scale.utils.cli_errors import UsageError
from opt_scale.utils.input_paths import describe, existing_dir


def at_least(value: float, minimum: float, flag: str) -> None:
    if value < minimum:
        raise UsageError(f"{flag} must be at least {minimum:g}, got {value:g}")


def usable_device(device: str, flag: str = "--device") -> None:
    """A device string torch understands, on a machine that has it."""
    import torch
    try:
        kind = torch.device(device).type
    except RuntimeError as err:
        raise UsageError(f"{flag} {device!r} is not a torch device (cpu, cuda, cuda:N)") from err
    if kind == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"{flag} {device}: CUDA is not available on this machine; use {flag} cpu")


RUN_OR_CHECKPOINT = "a run directory (train.out_dir) or one of its checkpoints/step_XXXXXXXX"


def checkpoint_source(path: str, key: str, hint: str = f"give {RUN_OR_CHECKPOINT}") -> Path:
    """A checkpoint directory or a run directory holding a complete checkpoint."""
    from opt_scale.engine.export import find_checkpoint
    existing_dir(path, key, hint)
    try:
        return find_checkpoint(path)
    except FileNotFoundError as err:
        raise UsageError(f"{describe(key)}: {err}") from err


def eval_source(path: str, key: str) -> None:
    """An ``opt-export`` directory, or what :func:`checkpoint_source` accepts."""
    if not (Path(path) / "model.safetensors").is_file():
        checkpoint_source(path, key, hint=f"give an opt-export directory or {RUN_OR_CHECKPOINT}")
