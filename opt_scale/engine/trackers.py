"""Where rank 0's figures go: TensorBoard, Weights & Biases, MLflow (``train.report_to``).

:class:`Trackers` speaks the part of TensorBoard's ``SummaryWriter`` the
engine uses (``add_scalar``, ``add_text``, ``add_image``, ``flush``,
``close``) and hands every call to each backend the run reports to, so the
training loop, the periodic evaluation, the VQ report and the provenance
record write once and reach all of them.

Each backend follows its own tool's conventions: W&B reads ``WANDB_MODE``
(``offline`` on a cluster without internet; ``wandb sync`` uploads later),
``WANDB_PROJECT`` and ``WANDB_ENTITY``, and keeps its files in
``<out_dir>/wandb``; MLflow reads ``MLFLOW_TRACKING_URI`` (default: a file
store in ``<out_dir>/mlruns``) and ``MLFLOW_EXPERIMENT_NAME``. A relaunch of
the same run (resume, Slurm requeue) continues the same W&B and MLflow runs:
their ids are kept in ``<out_dir>/trackers.json``; a fresh run starts new ones.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import uuid
from pathlib import Path

import numpy as np

from opt_scale.data_prep.shard_writer import atomic_write_bytes
from opt_scale.utils.config_tools import ConfigError

BACKENDS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}  # name -> module it needs
EXTRAS = {"tensorboard": "tensorboard", "wandb": "opt-scale[wandb]", "mlflow": "opt-scale[mlflow]"}
IDS_FILE = "trackers.json"
DEFAULT_PROJECT = "opt-scale"


def check_backends(report_to: tuple[str, ...]) -> None:
    """Refuse unknown or uninstalled backends before any rank starts work."""
    for name in report_to:
        if name not in BACKENDS:
            raise ConfigError(f"config key 'train.report_to': unknown backend {name!r} "
                              f"(known: {', '.join(BACKENDS)})")
        if importlib.util.find_spec(BACKENDS[name]) is None:
            raise ConfigError(f"config key 'train.report_to': {name!r} needs the {BACKENDS[name]} package, "
                              f"which is not installed: pip install '{EXTRAS[name]}'")


def flat_config(config: dict, prefix: str = "") -> dict[str, str]:
    """Nested config -> {"train.lr": "0.001", ...}: what MLflow params and W&B filters want."""
    out = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(flat_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
    return out


class _WandbBackend:
    def __init__(self, out_dir: Path, name: str, config: dict, run_id: str):
        import wandb
        self.wandb = wandb
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT), name=name, id=run_id,
                              resume="allow", dir=str(out_dir), config=config)

    def add_scalar(self, key: str, value: float, step: int) -> None:
        self.run.log({key: float(value)}, step=step)

    def add_text(self, key: str, text: str, step: int) -> None:
        self.run.log({key: self.wandb.Html(f"<pre>{_escape(text)}</pre>")}, step=step)

    def add_image(self, key: str, image: np.ndarray, step: int, dataformats: str = "HWC") -> None:
        self.run.log({key: self.wandb.Image(_hwc(image, dataformats))}, step=step)

    def flush(self) -> None:
        pass  # W&B streams on its own

    def close(self) -> None:
        self.run.finish()


class _MLflowBackend:
    def __init__(self, out_dir: Path, name: str, config: dict, run_id: str | None):
        uri = os.environ.get("MLFLOW_TRACKING_URI") or (out_dir / "mlruns").resolve().as_uri()
        if uri.startswith("file:"):
            # MLflow 3 refuses its file store unless asked: it is the one that needs no
            # server and no database, which is what a run directory on a cluster wants.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient
        self.client = MlflowClient(tracking_uri=uri)
        if run_id is None:
            experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_PROJECT)
            found = self.client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
            run_id = self.client.create_run(experiment_id, run_name=name).info.run_id
            params = [Param(k, v[:6000]) for k, v in flat_config(config).items()]  # MLflow's value limit
            for start in range(0, len(params), 100):  # and its batch limit
                self.client.log_batch(run_id, params=params[start:start + 100])
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id

    def add_scalar(self, key: str, value: float, step: int) -> None:
        self.client.log_metric(self.run_id, mlflow_name(key), float(value), step=step)

    def add_text(self, key: str, text: str, step: int) -> None:
        self.client.log_text(self.run_id, text, f"{mlflow_name(key)}/step_{step:08d}.md")

    def add_image(self, key: str, image: np.ndarray, step: int, dataformats: str = "HWC") -> None:
        self.client.log_image(self.run_id, _hwc(image, dataformats), f"{mlflow_name(key)}/step_{step:08d}.png")

    def flush(self) -> None:
        pass  # every call above is already written

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class Trackers:
    """Rank 0's writer: one ``SummaryWriter``-like object over every backend in ``report_to``."""

    def __init__(self, report_to: tuple[str, ...], out_dir: Path, config: dict, resuming: bool):
        check_backends(report_to)
        self.out_dir = Path(out_dir)
        ids = self._load_ids() if resuming else {}
        name = self.out_dir.resolve().name
        self.backends = []
        if "tensorboard" in report_to:
            from torch.utils.tensorboard import SummaryWriter
            self.backends.append(SummaryWriter(str(self.out_dir / "tensorboard")))
        if "wandb" in report_to:
            ids.setdefault("wandb", uuid.uuid4().hex[:16])
            self.backends.append(_WandbBackend(self.out_dir, name, config, ids["wandb"]))
        if "mlflow" in report_to:
            backend = _MLflowBackend(self.out_dir, name, config, ids.get("mlflow"))
            ids["mlflow"] = backend.run_id
            self.backends.append(backend)
        if ids:
            atomic_write_bytes(self.out_dir / IDS_FILE, (json.dumps(ids, indent=1) + "\n").encode())

    def _load_ids(self) -> dict:
        try:
            return json.loads((self.out_dir / IDS_FILE).read_text())
        except (OSError, ValueError):
            return {}  # a run that never reported anywhere but TensorBoard, or a damaged file: start new runs

    def add_scalar(self, key: str, value: float, step: int) -> None:
        for b in self.backends:
            b.add_scalar(key, value, step)

    def add_text(self, key: str, text: str, step: int) -> None:
        for b in self.backends:
            b.add_text(key, text, step)

    def add_image(self, key: str, image: np.ndarray, step: int, dataformats: str = "HWC") -> None:
        for b in self.backends:
            b.add_image(key, image, step, dataformats=dataformats)

    def flush(self) -> None:
        for b in self.backends:
            b.flush()

    def close(self) -> None:
        for b in self.backends:
            b.close()


def mlflow_name(key: str) -> str:
    """A metric name MLflow accepts (alphanumerics, ``_-. :/``): ``eval/retrieval/text->image/R@1``
    becomes ``eval/retrieval/text_to_image/R_at_1``."""
    key = key.replace("->", "_to_").replace("@", "_at_").replace("+", "_and_")
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", key)


def _hwc(image: np.ndarray, dataformats: str) -> np.ndarray:
    image = np.asarray(image)
    return image.transpose(1, 2, 0) if dataformats == "CHW" else image


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
