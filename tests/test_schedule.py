"""tasks.schedule: one task per step (as the public OPT code) or all summed."""

import collections

import pytest
import torch

from opt_scale.tasks.config import TASK_NAMES, TasksConfig
from opt_scale.tasks.schedule import TaskSchedule, ViewRows

from .model_fixtures import demo_batch, small_config, small_pretrainer


def test_sample_draws_tasks_in_proportion_to_their_weights_by_seed_and_step_only():
    cfg = TasksConfig(schedule="sample")
    cfg.contrastive.weight = 3.0
    a, b = TaskSchedule(cfg, seed=1), TaskSchedule(cfg, seed=1)
    drawn = [a.task_at(s) for s in range(7000)]
    assert drawn == [b.task_at(s) for s in range(7000)]          # every rank, every resume: the same task
    assert drawn != [TaskSchedule(cfg, seed=2).task_at(s) for s in range(7000)]
    counts = collections.Counter(drawn)
    weights = cfg.weights()
    total = sum(weights.values())
    for task in TASK_NAMES:
        assert counts[task] / 7000 == pytest.approx(weights[task] / total, abs=0.02), task
    w = a.weights(0)
    assert sorted(w.values()) == [0.0] * (len(TASK_NAMES) - 1) + [1.0]


def test_sum_trains_every_task_every_step():
    cfg = TasksConfig()
    assert TaskSchedule(cfg, 0).weights(5) == cfg.weights()
    assert ViewRows.plan(8, set(TASK_NAMES)) == ViewRows(8, 8, 8, 8, 8, 8, 8)
    assert ViewRows.plan(8, {"dtr"}) == ViewRows(1, 8, 1, 8, 1, 1, 1)


def test_a_sampled_step_logs_only_its_task_and_still_reaches_every_module(demo_shards, demo_tokenizer):
    from opt_scale.data.tokenizer import Tokenizer
    cfg = small_config(Tokenizer(str(demo_tokenizer)).vocab_size)
    cfg.tasks.schedule = "sample"
    net = small_pretrainer(cfg)
    batch = demo_batch(demo_shards, demo_tokenizer, cfg, batch_size=4)
    step = next(s for s in range(100) if net.schedule.task_at(s) == "dtr")
    batch["step"] = torch.tensor(step)
    out = net(batch)
    assert [k for k in out if k.startswith("loss/")] == ["loss/dtr"]
    assert float(out["loss"].detach()) == pytest.approx(float(out["loss/dtr"].detach()))
    out["loss"].backward()
    # ZeRO-3 lock-step: every module ran (a parameter with a gradient, even 0, was used).
    unused = [n for n, p in net.named_parameters() if p.grad is None]
    assert not unused, unused
