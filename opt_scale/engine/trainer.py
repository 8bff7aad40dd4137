"""The training loop: DeepSpeed engine, streaming loader, checkpoints, logs."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from opt_scale.config import RunConfig
from opt_scale.data.loader import DataCursor, TrainLoader, gather_local_states
from opt_scale.data.sources import resolve_shards
from opt_scale.data.tokenizer import Tokenizer
from opt_scale.tasks.registry import build_task_module, load_frozen_vq
from opt_scale.utils.config_tools import ConfigError, to_dict
from opt_scale.utils.logging_setup import setup_logging

from . import distributed
from .checkpoint import Checkpointer, resolve_resume
from .export import gather_full_state_dict
from .ds_config import build_ds_config, offloads_optimizer, zero_stage
from .metrics import RunLogger, Window, peak_memory_bytes
from .optim import build_optimizer, build_scheduler
from .peak import peak_tflops
from .periodic_eval import PeriodicEvaluator
from .preemption import PreemptionHandler
from .throughput import batch_train_flops, modality_tokens
from .state import TrainState, restore_rng_state, rng_state

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    steps: int
    first_loss: float
    last_loss: float
    samples_per_s: float
    skipped_steps: int
    checkpoint: str
    tensorboard: str
    stop_signal: str = ""   # the signal that stopped training before train.steps; "" if it ran to the end


def fill_vocab(cfg: RunConfig, tokenizer: Tokenizer) -> None:
    if cfg.model.text.vocab_size == 0:
        cfg.model.text.vocab_size = tokenizer.vocab_size
    elif cfg.model.text.vocab_size != tokenizer.vocab_size:
        raise ConfigError(f"config key 'model.text.vocab_size' is {cfg.model.text.vocab_size} but the tokenizer "
                          f"{tokenizer.path} has {tokenizer.vocab_size} pieces; set it to 0 to follow the tokenizer")


def build_model(cfg: RunConfig, ds_cfg: dict) -> torch.nn.Module:
    frozen_vq = load_frozen_vq(cfg)  # outside zero.Init: replicated, never partitioned
    if zero_stage(ds_cfg) == 3 and cfg.train.zero_init:
        import deepspeed
        # Parameters are partitioned as each module is built: the xl preset
        # never exists whole on any rank.
        ctx = deepspeed.zero.Init(config_dict_or_path=ds_cfg)
    else:
        ctx = contextlib.nullcontext()
    with ctx:
        return build_task_module(cfg, frozen_vq)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def open_sample_log(out_dir: Path, rank: int):
    """Append-only record of the sample keys each step trained on (auditing
    exact resume: no sample twice, none skipped)."""
    path = out_dir / "samples" / f"rank{rank}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "a")


def throughput_scalars(totals: dict[str, float], elapsed: float, peak: float | None, world: int) -> dict:
    """tokens/s per modality, TFLOP/s per tower and MFU from window totals (summed over ranks)."""
    out = {}
    for key, value in totals.items():
        kind, name = key.split("/", 1)
        if kind == "tokens":
            out[f"throughput/{name}_tokens_per_s"] = value / elapsed
        elif kind == "flops":
            out[f"tflops/{name}"] = value / elapsed / 1e12
    flops = sum(v for k, v in totals.items() if k.startswith("flops/"))
    if flops:
        out["tflops/total"] = flops / elapsed / 1e12
        if peak:
            out["mfu"] = out["tflops/total"] / (peak * world)
    return out


def train(cfg: RunConfig) -> RunSummary:
    # First, so that a stop signal during the slow start-up is recorded, not fatal.
    preemption = PreemptionHandler().install()
    dist_env = distributed.detect()
    distributed.prepare_environment(dist_env)
    setup_logging(dist_env.rank)
    import deepspeed
    distributed.init(dist_env)
    world = dist_env.world_size
    device = distributed.device_for(dist_env)
    out_dir = Path(cfg.train.out_dir)

    tokenizer = Tokenizer(cfg.data.tokenizer)
    fill_vocab(cfg, tokenizer)
    shards = resolve_shards(cfg.data.train_shards)
    ds_cfg = build_ds_config(cfg.train, world)
    if dist_env.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
        if Path(tokenizer.path).resolve() != (out_dir / "tokenizer.model").resolve():
            shutil.copyfile(tokenizer.path, out_dir / "tokenizer.model")
        log.info("run %s: world %d (%s), %d shards / %d samples, ZeRO stage %d, precision %s",
                 out_dir, world, dist_env.launcher, len(shards), sum(s.num_samples for s in shards),
                 zero_stage(ds_cfg), "bf16" if ds_cfg["bf16"]["enabled"] else "fp16" if ds_cfg["fp16"]["enabled"] else "fp32")

    resume_point = resolve_resume(out_dir / "checkpoints", cfg.train.resume, world)
    if resume_point is not None and resume_point.universal:
        ds_cfg.setdefault("checkpoint", {})["load_universal"] = True
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, ds_cfg)
    optimizer = build_optimizer(model, cfg.train, offloads_optimizer(ds_cfg))
    scheduler = build_scheduler(optimizer, cfg.train)
    engine, optimizer, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer,
                                                           lr_scheduler=scheduler, config=ds_cfg)
    checkpointer = Checkpointer(out_dir / "checkpoints", engine, cfg.train.keep_checkpoints)
    client = checkpointer.load(resume_point)
    state = TrainState.from_client(client)
    if client:
        restore_rng_state(client.get("rng"))
    cursor = DataCursor.from_dict(client["data_cursor"]) if client and client.get("data_cursor") else None
    loader = TrainLoader(shards, cfg.data, cfg.model, cfg.tasks, tokenizer, dist_env.rank, world,
                         cfg.train.micro_batch_size, cursor=cursor, pin_memory=device.type == "cuda")
    logger = RunLogger(str(out_dir / "tensorboard"), dist_env.is_main, cfg.train.steps)

    def save() -> Path:
        client_state = {**state.to_client(), "rng": rng_state(), "config": to_dict(cfg),
                        "data_cursor": loader.global_cursor(gather_local_states(loader)).to_dict()}
        return checkpointer.save(state.step, client_state)

    first_step, first_loss, last_loss = state.step, None, None
    global_batch = cfg.train.micro_batch_size * cfg.train.grad_accum * world
    pretraining = cfg.train.task == "pretrain"
    precision = "bf16" if ds_cfg["bf16"]["enabled"] else "fp16" if ds_cfg["fp16"]["enabled"] else "fp32"
    peak, peak_source = peak_tflops(precision, cfg.train.peak_tflops)
    if dist_env.is_main and pretraining:
        log.info("MFU peak: %s TFLOP/s per rank (%s)", f"{peak:.1f}" if peak else "unknown", peak_source)
    sample_log = open_sample_log(out_dir, dist_env.rank) if cfg.train.log_samples else None
    evaluator = PeriodicEvaluator(cfg, engine, model.vq if pretraining else None, tokenizer, logger.writer,
                                  dist_env.is_main)
    window, bad_streak = Window(), 0
    window_start = loop_start = time.perf_counter()
    data_wait = 0.0
    last_ckpt = None
    while state.step < cfg.train.steps:
        step_keys = []
        for _ in range(cfg.train.grad_accum):
            t0 = time.perf_counter()
            batch = next(loader)
            data_wait += time.perf_counter() - t0
            step_keys += batch.get("keys", [])
            if pretraining:
                window.total({f"tokens/{m}": n for m, n in modality_tokens(batch, cfg.model).items()})
                window.total({f"flops/{p}": f for p, f in batch_train_flops(batch, cfg.model).items()})
            out = engine(to_device(batch, device))
            loss = out["loss"]
            if state.step + 1 in cfg.train.inject_nan_at:
                loss = loss * float("nan")
            engine.backward(loss)
            engine.step()  # DeepSpeed applies the optimizer at the accumulation boundary
            window.mean({("loss/total" if k == "loss" else k): float(v.detach())
                         for k, v in out.items() if k.startswith(("loss", "acc", "vq/"))})
        state.step += 1
        state.samples_seen += global_batch
        window.steps += 1
        if sample_log is not None:
            sample_log.write(json.dumps({"step": state.step, "keys": step_keys}) + "\n")
            sample_log.flush()
        if engine.was_step_applied():
            bad_streak = 0
        else:  # DeepSpeed found non-finite gradients and discarded the step
            state.skipped_steps += 1
            bad_streak += 1
            log.warning("step %d skipped: non-finite loss or gradients (%d in a row)", state.step, bad_streak)
            if bad_streak >= cfg.train.max_bad_steps:
                raise FloatingPointError(
                    f"{bad_streak} consecutive steps had non-finite loss/gradients (train.max_bad_steps="
                    f"{cfg.train.max_bad_steps}); stopping. Lower train.lr or check the data; resume from the "
                    f"last checkpoint with train.resume=auto")
        if state.step % cfg.train.log_every == 0 or state.step == cfg.train.steps:
            elapsed = time.perf_counter() - window_start
            means, totals = window.reduce()
            means.update({
                "train/lr": scheduler.get_last_lr()[0],
                "train/grad_norm": float(engine.get_global_grad_norm() or 0.0),
                "train/skipped_steps": state.skipped_steps,
                "train/epoch": loader.epoch,
                "throughput/samples_per_s": window.steps * global_batch / elapsed,
                "throughput/data_wait_fraction": data_wait / elapsed,
                "memory/peak_bytes": peak_memory_bytes(),
            })
            means.update(throughput_scalars(totals, elapsed, peak, world))
            logger.scalars(state.step, means)
            logger.console(state.step, means, first_step)
            first_loss = means["loss/total"] if first_loss is None else first_loss
            last_loss = means["loss/total"]
            window, data_wait, window_start = Window(), 0.0, time.perf_counter()
        if pretraining and evaluator.enabled(state.step):
            evaluator.run(state.step)
        if cfg.train.checkpoint_every and state.step % cfg.train.checkpoint_every == 0:
            last_ckpt = save()
        # Collective (every rank, every step): stop together once any rank got SIGUSR1/SIGTERM.
        if state.step < cfg.train.steps and preemption.should_stop(state.step):
            break
    loop_seconds = time.perf_counter() - loop_start
    if last_ckpt is None or not last_ckpt.name.endswith(f"{state.step:08d}"):
        last_ckpt = save()
    # A run stopped by a signal is not finished: no export (and no time spent on it in the grace period).
    if cfg.train.task == "vq" and not preemption.stop_signal:
        from opt_scale.model.vq_io import save_vq
        state_dict = gather_full_state_dict(engine)
        if dist_env.is_main:
            prefix = "tokenizer."
            save_vq({k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}, cfg.model.vq,
                    cfg.model.vision.patch_size, out_dir / "vq.safetensors")
            log.info("VQ tokenizer: %s (use it with --set model.vq.checkpoint=%s)", out_dir / "vq.safetensors",
                     out_dir / "vq.safetensors")
    logger.close()
    preemption.release()
    samples = (state.step - first_step) * global_batch
    return RunSummary(steps=state.step, first_loss=first_loss or float("nan"), last_loss=last_loss or float("nan"),
                      samples_per_s=samples / max(loop_seconds, 1e-9), skipped_steps=state.skipped_steps,
                      checkpoint=str(last_ckpt), tensorboard=str(out_dir / "tensorboard"),
                      stop_signal=preemption.stop_signal.name if preemption.stop_signal else "")
