"""train.report_to: the same figures in TensorBoard, W&B (offline) and MLflow,
and a relaunch of a run continuing its W&B and MLflow runs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from opt_scale.config import load_config
from opt_scale.engine.trackers import IDS_FILE, Trackers
from opt_scale.utils.config_tools import ConfigError

from .conftest import OFFLINE_TRACKING


def mlflow_client(run_dir):
    import os
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient
    return MlflowClient(tracking_uri=(run_dir / "mlruns").resolve().as_uri())


def wandb_runs(run_dir, run_id: str) -> list:
    """The offline W&B run directories of ``run_id`` (one per launch)."""
    return sorted((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))


def wandb_log(run_dir, run_id: str) -> bytes:
    return b"".join(f.read_bytes() for d in wandb_runs(run_dir, run_id) for f in d.glob("run-*.wandb"))


def test_an_unknown_backend_is_refused_by_key():
    with pytest.raises(ConfigError, match=r"train.report_to.*'neptune'.*tensorboard, wandb, mlflow"):
        load_config("tiny", ["train.report_to=tensorboard,neptune"])


def test_the_engine_reports_to_every_backend(trained_run):
    """The shared 2-rank run reports to all three: its losses (every step), its
    evaluation, its config and its provenance record reach each of them."""
    ids = json.loads((trained_run / IDS_FILE).read_text())
    client = mlflow_client(trained_run)
    history = client.get_metric_history(ids["mlflow"], "loss/total")
    assert [m.step for m in history] == [1, 2, 3, 4]
    assert all(np.isfinite(m.value) for m in history)
    run = client.get_run(ids["mlflow"])
    assert run.data.params["train.steps"] == "4" and run.data.params["model.text.max_len"] == "40"
    assert "eval/retrieval/text_to_image/R_at_1" in run.data.metrics, sorted(run.data.metrics)
    assert run.info.status == "FINISHED"
    info = [a.path for a in client.list_artifacts(ids["mlflow"], "run/info")]
    assert info == ["run/info/step_00000000.md"]
    assert b"loss/total" in wandb_log(trained_run, ids["wandb"])
    assert len(wandb_runs(trained_run, ids["wandb"])) == 1


def test_a_relaunch_continues_the_same_runs_and_a_fresh_run_starts_new_ones(tmp_path, monkeypatch):
    for k, v in OFFLINE_TRACKING.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    backends = ("tensorboard", "wandb", "mlflow")
    config = {"train": {"lr": 0.001, "report_to": list(backends)}}

    first = Trackers(backends, tmp_path, config, resuming=False)
    first.add_scalar("loss/total", 2.0, 10)
    first.add_text("run/info", "a <record>", 10)
    first.add_image("vq/reconstructions", np.zeros((8, 8, 3), dtype=np.uint8), 10)
    first.close()
    ids = json.loads((tmp_path / IDS_FILE).read_text())

    again = Trackers(backends, tmp_path, config, resuming=True)  # a resume or a Slurm requeue
    again.add_scalar("loss/total", 1.0, 20)
    again.close()
    assert json.loads((tmp_path / IDS_FILE).read_text()) == ids

    client = mlflow_client(tmp_path)
    assert [(m.step, m.value) for m in client.get_metric_history(ids["mlflow"], "loss/total")] == [(10, 2.0), (20, 1.0)]
    assert client.get_run(ids["mlflow"]).data.params["train.lr"] == "0.001"
    assert len(wandb_runs(tmp_path, ids["wandb"])) == 2  # two launches of one W&B run
    assert b"loss/total" in wandb_log(tmp_path, ids["wandb"])
    assert list(tmp_path.glob("tensorboard/events.out.tfevents.*"))

    fresh = Trackers(backends, tmp_path, config, resuming=False)
    fresh.close()
    new_ids = json.loads((tmp_path / IDS_FILE).read_text())
    assert new_ids["mlflow"] != ids["mlflow"] and new_ids["wandb"] != ids["wandb"]
