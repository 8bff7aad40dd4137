"""The training loop: DeepSpeed engine, streaming loader, checkpoints, logs."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from opt_scale.config import RunConfig
from opt_scale.data.capacity import require_one_batch_per_slot
from opt_scale.data.collate import mel_on_device
from opt_scale.data.loader import DataCursor, TrainLoader, gather_local_states
from opt_scale.data.sources import resolve_mixture
from opt_scale.data.tokenizer import Tokenizer
from opt_scale.model.layers import compile_blocks
from opt_scale.tasks.registry import FINETUNE, build_task_module, load_frozen_vq, trains_opt
from opt_scale.utils.config_tools import ConfigError, to_dict
from opt_scale.utils.logging_setup import setup_logging

from . import distributed
from .checkpoint import Checkpointer, ensure_writable, resolve_resume, tag_for
from .ds_config import build_ds_config, offloads_optimizer, zero_stage
from .export import gather_full_state_dict
from .finite_weights import check_finite_weights
from .init_from import load_initial_weights
from .provenance import launch_record, record_launch
from .launcher_watch import watch_launcher
from .metrics import RunLogger, Window, peak_memory_bytes
from .optim import build_optimizer, build_scheduler
from .peak import peak_tflops
from .periodic_eval import PeriodicEvaluator
from .preemption import PreemptionHandler
from .run_dir import claim_run_dir
from .throughput import batch_train_flops, modality_tokens
from .state import TrainState, all_rng_states, restore_rng_state
from .trackers import Trackers

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
    substituted_samples: int = 0  # stand-ins for missing or corrupt samples (all ranks; see data/substitutes.py)


def fill_vocab(cfg: RunConfig, tokenizer: Tokenizer) -> None:
    if cfg.model.text.vocab_size == 0:
        cfg.model.text.vocab_size = tokenizer.vocab_size
    elif cfg.model.text.vocab_size != tokenizer.vocab_size:
        raise ConfigError(f"config key 'model.text.vocab_size' is {cfg.model.text.vocab_size} but the tokenizer "
                          f"{tokenizer.path} has {tokenizer.vocab_size} pieces; set it to 0 to follow the tokenizer")


def fill_labels(cfg: RunConfig) -> None:
    """tasks.label.names from data.labels (a vqa or classify run): the head's
    size, and, through the run's config.json, every later reader's vocabulary."""
    if not cfg.data.labels:
        return
    try:
        names = json.loads(Path(cfg.data.labels).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"config key 'data.labels': cannot read {cfg.data.labels} ({exc})") from None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"config key 'data.labels': {cfg.data.labels} is not a non-empty JSON list of labels")
    if cfg.tasks.label.names and tuple(cfg.tasks.label.names) != tuple(names):
        raise ConfigError(f"config key 'data.labels': {cfg.data.labels} differs from tasks.label.names; "
                          "set one of them")
    if len(set(names)) != len(names):
        raise ConfigError(f"config key 'data.labels': {cfg.data.labels} names a label twice")
    cfg.tasks.label.names = tuple(names)


def build_model(cfg: RunConfig, ds_cfg: dict) -> torch.nn.Module:
    """The task's module as the trainer and the benchmarks train it; to be
    passed to ``deepspeed.initialize`` (train.compile marks ZeRO-3 leaves)."""
    frozen_vq = load_frozen_vq(cfg)  # outside zero.Init: replicated, never partitioned
    if zero_stage(ds_cfg) == 3 and cfg.train.zero_init:
        import deepspeed
        # Parameters are partitioned as each module is built: the xl preset
        # never exists whole on any rank.
        ctx = deepspeed.zero.Init(config_dict_or_path=ds_cfg)
    else:
        ctx = contextlib.nullcontext()
    with ctx:
        model = build_task_module(cfg, frozen_vq)
    if cfg.train.compile:
        blocks = compile_blocks(model, cfg.train.compile_backend)
        log.info("train.compile: %d transformer blocks compiled with %s (on first use)", blocks,
                 cfg.train.compile_backend)
    return model


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def open_sample_log(out_dir: Path, rank: int, world: int, start_step: int):
    """Record of the sample keys each step trained on (auditing exact resume:
    no sample twice, none skipped). Steps after ``start_step`` (the resumed
    checkpoint's; 0 for a fresh run) were trained by a run that was killed and
    are trained again, so their records are dropped first: each step appears
    once. After a change to fewer ranks no rank of this run opens the files of
    the missing ranks: rank 0 drops their abandoned steps too."""
    path = out_dir / "samples" / f"rank{rank}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    gone = [p for p in path.parent.glob("rank*.jsonl") if p.stem[4:].isdigit() and int(p.stem[4:]) >= world] if rank == 0 else []
    for p in [path, *gone]:
        if p.exists():
            kept = [line for line in p.read_text().splitlines(keepends=True)
                    if line.endswith("\n") and json.loads(line)["step"] <= start_step]  # a torn last line is dropped
            tmp = p.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(kept))
            os.replace(tmp, p)
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


def precision_of(ds_cfg: dict) -> str:
    return "bf16" if ds_cfg["bf16"]["enabled"] else "fp16" if ds_cfg["fp16"]["enabled"] else "fp32"


def train(cfg: RunConfig) -> RunSummary:
    try:
        return Trainer(cfg).run()
    except ConfigError:
        # Refused (exit 2) once the process group is up: tear it down here. Left to the
        # interpreter's exit, its threads can abort the process ("terminate called ...").
        distributed.shutdown()
        raise


class Trainer:
    """One training run: set up in the constructor, then :meth:`run`."""

    def __init__(self, cfg: RunConfig):
        # First, so that a stop signal during the slow start-up is recorded, not fatal.
        self.preemption = PreemptionHandler().install()
        watch_launcher()   # a rank whose torchrun is killed exits, instead of training on as an orphan
        self.cfg = cfg
        self.dist_env = distributed.detect()
        distributed.prepare_environment(self.dist_env)
        setup_logging(self.dist_env.rank)
        distributed.init(self.dist_env, cfg.train.dist_timeout_minutes)
        self.world = self.dist_env.world_size
        self.device = distributed.device_for(self.dist_env)
        # Locked for this run, and not another run's (train.resume / train.overwrite): before anything is written.
        self.run_dir_lock = claim_run_dir(cfg.train, self.dist_env.is_main)
        self.out_dir = Path(cfg.train.out_dir)
        self.pretraining = trains_opt(cfg.train.task)  # the OPT module (pre-training or fine-tuning), not the VQ
        self.tokenizer = Tokenizer(cfg.data.tokenizer)
        fill_vocab(cfg, self.tokenizer)
        fill_labels(cfg)
        self.shards = resolve_mixture(cfg.data.train_shards, cfg.data.train_weights, cfg.data.seed)
        self.ds_cfg = build_ds_config(cfg.train, self.world)
        self.global_batch = cfg.train.micro_batch_size * cfg.train.grad_accum * self.world
        require_one_batch_per_slot(self.shards.for_epoch(0), cfg.data, self.world, cfg.train.micro_batch_size)
        if self.dist_env.is_main:
            self._write_run_files()

        ensure_writable(self.out_dir / "checkpoints")
        resume_point = resolve_resume(self.out_dir / "checkpoints", cfg.train.resume, self.world)
        if resume_point is not None and resume_point.universal:
            self.ds_cfg.setdefault("checkpoint", {})["load_universal"] = True
        self._build_engine(resuming=resume_point is not None)
        self.checkpointer = Checkpointer(self.out_dir / "checkpoints", self.engine, cfg.train.keep_checkpoints)
        client = self.checkpointer.load(resume_point)
        if resume_point is not None:
            self.checkpointer.set_aside_newer(resume_point.step)
        self.state = TrainState.from_client(client)
        if client:
            restore_rng_state(client.get("rng"), self.dist_env.rank)
        cursor = DataCursor.from_dict(client["data_cursor"]) if client and client.get("data_cursor") else None
        self.loader = TrainLoader(self.shards, cfg.data, cfg.model, cfg.tasks, self.tokenizer, self.dist_env.rank,
                                  self.world, cfg.train.micro_batch_size, cursor=cursor,
                                  pin_memory=self.device.type == "cuda")
        trackers = (Trackers(cfg.train.report_to, self.out_dir, to_dict(cfg), resuming=resume_point is not None)
                    if self.dist_env.is_main else None)
        self.logger = RunLogger(trackers, cfg.train.steps)
        launch = launch_record(self.world, self.dist_env.launcher, self.state.step)  # collective: every rank's host
        if self.dist_env.is_main:
            record_launch(self.out_dir, launch, self.logger.writer, to_dict(cfg))
        self.evaluator = PeriodicEvaluator(cfg, self.engine, self.model.vq if self.pretraining else None,
                                           self.tokenizer, self.logger.writer, self.dist_env.is_main)
        self.sample_log = (open_sample_log(self.out_dir, self.dist_env.rank, self.world, self.state.step)
                           if cfg.train.log_samples else None)
        self.peak, peak_source = peak_tflops(precision_of(self.ds_cfg), cfg.train.peak_tflops)
        if self.dist_env.is_main and self.pretraining:
            log.info("MFU peak: %s TFLOP/s per rank (%s)", f"{self.peak:.1f}" if self.peak else "unknown",
                     peak_source)

    def _write_run_files(self) -> None:
        """config.json and a copy of the tokenizer: what export and evaluation read."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "config.json").write_text(json.dumps(to_dict(self.cfg), indent=2))
        if Path(self.tokenizer.path).resolve() != (self.out_dir / "tokenizer.model").resolve():
            shutil.copyfile(self.tokenizer.path, self.out_dir / "tokenizer.model")
        epoch = self.shards.for_epoch(0)
        log.info("run %s: world %d (%s), %d shards / %d samples per epoch, ZeRO stage %d, precision %s",
                 self.out_dir, self.world, self.dist_env.launcher, len(epoch), sum(s.num_samples for s in epoch),
                 zero_stage(self.ds_cfg), precision_of(self.ds_cfg))
        if self.shards.weighted:
            for line in self.shards.describe():
                log.info("data mixture: %s", line)

    def _build_engine(self, resuming: bool = False) -> None:
        import deepspeed
        torch.manual_seed(self.cfg.train.seed)
        self.model = build_model(self.cfg, self.ds_cfg)
        if self.cfg.train.init_from and not resuming:
            load_initial_weights(self.model, self.cfg.train.init_from, self.tokenizer, self.dist_env.rank)
        elif self.cfg.train.task in FINETUNE and not resuming and self.dist_env.is_main:
            log.warning("--task %s without train.init_from: fine-tuning a randomly initialised model (a baseline "
                        "for what pre-training buys)", self.cfg.train.task)
        optimizer = build_optimizer(self.model, self.cfg.train, offloads_optimizer(self.ds_cfg))
        scheduler = build_scheduler(optimizer, self.cfg.train)
        self.engine, _, _, self.scheduler = deepspeed.initialize(model=self.model, optimizer=optimizer,
                                                                 lr_scheduler=scheduler, config=self.ds_cfg)

    # -- the loop ---------------------------------------------------------

    def run(self) -> RunSummary:
        cfg, state = self.cfg, self.state
        first_step, self.first_loss, self.last_loss = state.step, None, None
        self.window, self.bad_streak, self.data_wait = Window(), 0, 0.0
        self.substituted = 0
        self.window_start = loop_start = time.perf_counter()
        last_ckpt = None
        while state.step < cfg.train.steps:
            keys = self._train_step()
            state.step += 1
            state.samples_seen += self.global_batch
            self.window.steps += 1
            if self.sample_log is not None:
                self.sample_log.write(json.dumps({"step": state.step, "keys": keys}) + "\n")
                self.sample_log.flush()
            self._check_step_applied()
            check_finite_weights(self.engine, state.step)
            if state.step % cfg.train.log_every == 0 or state.step == cfg.train.steps:
                self._log_window(first_step)
            if self.pretraining and self.evaluator.enabled(state.step):
                self.evaluator.run(state.step)
            if cfg.train.checkpoint_every and state.step % cfg.train.checkpoint_every == 0:
                last_ckpt = self.save()
            # Collective (every rank, every step): stop together once any rank got SIGUSR1/SIGTERM.
            if state.step < cfg.train.steps and self.preemption.should_stop(state.step):
                break
        loop_seconds = time.perf_counter() - loop_start
        # Nothing trained since the resume (a finished run started again): its
        # checkpoint is already this step's, and re-saving would delete it first.
        trained = state.step > first_step
        if trained and (last_ckpt is None or not last_ckpt.name.endswith(f"{state.step:08d}")):
            last_ckpt = self.save()
        elif not trained:
            last_ckpt = self.out_dir / "checkpoints" / tag_for(state.step)
        # A run stopped by a signal is not finished: no export (and no time spent on it in the grace period).
        if cfg.train.task == "vq" and not self.preemption.stop_signal:
            self._export_vq()
        self.loader.close()
        self.logger.close()
        self.preemption.release()
        samples = (state.step - first_step) * self.global_batch
        return RunSummary(steps=state.step, first_loss=self.first_loss or float("nan"),
                          last_loss=self.last_loss or float("nan"), samples_per_s=samples / max(loop_seconds, 1e-9),
                          skipped_steps=state.skipped_steps, checkpoint=str(last_ckpt),
                          tensorboard=str(self.out_dir / "tensorboard"),
                          stop_signal=self.preemption.stop_signal.name if self.preemption.stop_signal else "",
                          substituted_samples=self.substituted)

    def _train_step(self) -> list[str]:
        """One optimizer step over ``grad_accum`` micro-batches; the sample keys it used."""
        cfg, keys = self.cfg, []
        for _ in range(cfg.train.grad_accum):
            t0 = time.perf_counter()
            batch = next(self.loader)
            self.data_wait += time.perf_counter() - t0
            keys += batch.get("keys", [])
            if self.pretraining:
                self.window.total({f"tokens/{m}": n for m, n in modality_tokens(batch, cfg.model).items()})
                self.window.total({f"flops/{p}": f for p, f in batch_train_flops(batch, cfg.model).items()})
            batch["step"] = torch.tensor(self.state.step)  # tasks.schedule=sample draws the step's task from it
            # data.mel_on_device: the batch holds waveforms, turned into log-mel here, on the device.
            out = self.engine(mel_on_device(to_device(batch, self.device), cfg.model.audio.n_mels))
            loss = out["loss"]
            if self.state.step + 1 in cfg.train.inject_nan_at:
                loss = loss * float("nan")
            self.engine.backward(loss)
            self.engine.step()  # DeepSpeed applies the optimizer at the accumulation boundary
            self.window.mean({("loss/total" if k == "loss" else k): float(v.detach())
                              for k, v in out.items() if k.startswith(("loss", "acc", "vq/", "contrastive/"))})
        return keys

    def _check_step_applied(self) -> None:
        """DeepSpeed discards a step whose gradients are not finite; count it,
        and stop after ``train.max_bad_steps`` in a row."""
        if self.engine.was_step_applied():
            self.bad_streak = 0
            return
        self.state.skipped_steps += 1
        self.bad_streak += 1
        log.warning("step %d skipped: non-finite loss or gradients (%d in a row)", self.state.step, self.bad_streak)
        if self.bad_streak >= self.cfg.train.max_bad_steps:
            raise FloatingPointError(
                f"{self.bad_streak} consecutive steps had non-finite loss/gradients (train.max_bad_steps="
                f"{self.cfg.train.max_bad_steps}); stopping. Lower train.lr or check the data; resume from the "
                f"last checkpoint with train.resume=auto")

    def _log_window(self, first_step: int) -> None:
        """Reduce the window over ranks; write TensorBoard and the console line (collective)."""
        elapsed = time.perf_counter() - self.window_start
        self.window.total({"data/substituted": self.loader.new_substitutes()})
        means, totals = self.window.reduce()
        self.substituted += int(totals.pop("data/substituted"))
        means.update({
            "train/lr": self.scheduler.get_last_lr()[0],
            "train/grad_norm": float(self.engine.get_global_grad_norm() or 0.0),
            "train/skipped_steps": self.state.skipped_steps,
            "train/epoch": self.loader.epoch,
            "data/substituted_samples": self.substituted,
            "throughput/samples_per_s": self.window.steps * self.global_batch / elapsed,
            "throughput/data_wait_fraction": self.data_wait / elapsed,
            "memory/peak_bytes": peak_memory_bytes(),
        })
        means.update(throughput_scalars(totals, elapsed, self.peak, self.world))
        self.logger.scalars(self.state.step, means)
        self.logger.console(self.state.step, means, first_step)
        self.first_loss = means["loss/total"] if self.first_loss is None else self.first_loss
        self.last_loss = means["loss/total"]
        self.window, self.data_wait, self.window_start = Window(), 0.0, time.perf_counter()

    def save(self) -> Path:
        """Checkpoint with step, RNG and every rank's data cursor (collective)."""
        client_state = {**self.state.to_client(), "rng": all_rng_states(), "config": to_dict(self.cfg),
                        "data_cursor": self.loader.global_cursor(gather_local_states(self.loader)).to_dict()}
        return self.checkpointer.save(self.state.step, client_state)

    def _export_vq(self) -> None:
        from opt_scale.model.vq_io import save_vq
        state_dict = gather_full_state_dict(self.engine, keep=self.dist_env.is_main)  # collective
        if self.dist_env.is_main:
            prefix, path = "tokenizer.", self.out_dir / "vq.safetensors"
            tokenizer = self.model.tokenizer  # its config has the resolution resolved
            save_vq({k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}, tokenizer.cfg,
                    tokenizer.grid, path)
            log.info("VQ tokenizer: %s (use it with --set model.vq.checkpoint=%s)", path, path)
            from opt_scale.engine.vq_report import report_vq
            from opt_scale.model.vq_io import load_vq
            held_out = bool(self.cfg.data.eval_shards)
            # The saved file, not self.model: under ZeRO-3 this rank holds only a partition of its weights.
            report_vq(load_vq(path), self.cfg.data.eval_shards or self.cfg.data.train_shards, held_out,
                      self.cfg.model.vision.image_size, self.out_dir / "vq_reconstructions.png",
                      self.logger.writer, self.state.step)
