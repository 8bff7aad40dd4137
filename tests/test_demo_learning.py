"""Slow (``make test-slow``, ``pytest -m slow``): the demo's recipe end to
end, against the Must-show thresholds of issue #12 (learning fidelity).

Runs ``scripts/demo.sh`` then ``scripts/demo_eval.sh`` into a temporary
directory (about 10 minutes on 2 cores), or reads an existing demo output
when ``OPT_DEMO_DIR`` names one (``OPT_DEMO_DIR=runs/demo make test-slow``
after ``make demo demo-eval``)."""

import json
import os
import subprocess
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from .conftest import BIN, REPO

pytestmark = pytest.mark.slow

SIX_DIRECTIONS = ("text->image", "image->text", "text->audio", "audio->text", "image->audio", "audio->image")
TASKS = ("mlm", "mvm", "mam", "dtr", "dir", "matching", "contrastive")


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    given = os.environ.get("OPT_DEMO_DIR")
    if given:
        return Path(given) if Path(given).is_absolute() else REPO / given
    out = tmp_path_factory.mktemp("demo") / "demo"
    env = {**os.environ, "DEMO_DIR": str(out), "VENV": str(BIN.parent)}
    for script in ("scripts/demo.sh", "scripts/demo_eval.sh"):
        subprocess.run(["bash", str(REPO / script)], cwd=REPO, env=env, check=True, timeout=3600)
    return out


def read_eval(demo_dir: Path, name: str) -> dict:
    return json.loads((demo_dir / "eval" / f"{name}.json").read_text())


def test_retrieval_recall_at_5_is_at_least_90_in_all_six_directions(demo_dir):
    result = read_eval(demo_dir, "retrieval")  # "recall": opt-eval's default protocol
    low = {d: result["recall"][d]["R@5"] for d in SIX_DIRECTIONS if result["recall"][d]["R@5"] < 90}
    assert not low, f"R@5 below 90% ({result['protocol']} protocol, {result['samples']} samples): {low}"


def test_matching_accuracy_is_at_least_0_8_and_beats_its_content_blind_baseline(demo_dir):
    result = read_eval(demo_dir, "matching")
    blind = result["content_blind_accuracy"]
    assert result["accuracy"]["random"] >= 0.8, result["accuracy"]
    assert all(acc > blind for acc in result["accuracy"].values()), (result["accuracy"], blind)


def test_every_task_loss_falls(demo_dir):
    acc = EventAccumulator(str(demo_dir / "train" / "tensorboard")).Reload()
    for task in TASKS:
        values = [e.value for e in acc.Scalars(f"loss/{task}")]
        assert len(values) >= 2, task
        assert values[-1] < values[0], f"loss/{task}: {values[0]:.3f} -> {values[-1]:.3f}"


def test_image_only_captions_name_the_colour(demo_dir):
    colour = read_eval(demo_dir, "caption")["attributes"]["image"]["attributes"]["colour"]["accuracy"]
    assert colour >= 0.8


@pytest.mark.xfail(strict=True, reason="issue #12: image-only captions name the shape ~30% of the time, not >= 80%")
def test_image_only_captions_name_the_shape(demo_dir):
    shape = read_eval(demo_dir, "caption")["attributes"]["image"]["attributes"]["shape"]["accuracy"]
    assert shape >= 0.8
