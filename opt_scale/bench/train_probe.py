"""One rank's part of ``opt-bench step`` / ``scaling``: build engines as the trainer does, time their steps.

Run as every rank of a world (``torchrun ... -m opt_scale.bench.train_probe
--spec S --out R``, or in-process under ``srun``). The model, optimizer,
schedule, DeepSpeed config and loader come from the trainer's own builders
(:mod:`opt_scale.engine`), with an untrained VQ tokenizer of the preset's
shape in place of a trained one (the targets' values do not change the
work). Several DeepSpeed configs can be built side by side in one process
and stepped in turn on the same batches (the order rotates every step), so
that their step times are compared under the same load at the same moment.

Per step, each rank times the batch fetch and, after a barrier, each
engine's forward + backward + optimizer step; a step's time is the slowest
rank's. Warm-up steps are run and not timed. Rank 0 returns the figures.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class ProbeSpec:
    preset: str
    overrides: list[str]          # dotted config overrides (data paths, micro batch, ...)
    ds_configs: dict[str, str]    # label -> DeepSpeed config name or path; one engine each, stepped in turn
    steps: int                    # timed steps
    warmup: int                   # untimed steps first
    work_dir: str                 # where the untrained VQ tokenizer file is written
    peak_tflops: float = 0.0      # per-device peak for MFU; 0: the engine's peak table
    profile: bool = False         # cProfile each engine's timed steps (slows them: attribution, not timing)


def run_probe(spec: ProbeSpec) -> dict | None:
    """Every rank calls this; rank 0 gets the results, the others ``None``."""
    from opt_scale.engine import distributed
    dist_env = distributed.detect()
    distributed.init(dist_env)  # sets DS_ACCELERATOR before deepspeed is first imported
    cfg, tokenizer, shards = _config(spec, dist_env.rank)
    engines, stages, linears = {}, {}, {}
    native_linear = torch.nn.functional.linear
    for label, ds_config in spec.ds_configs.items():
        # ZeRO-3's zero.Init replaces torch.nn.functional.linear for the whole process (DeepSpeed's
        # memory_efficient_linear); each engine is stepped with the F.linear a process of its own would have.
        torch.nn.functional.linear = native_linear
        engines[label], stages[label] = _build_engine(cfg, ds_config, dist_env.world_size)
        linears[label] = torch.nn.functional.linear
    torch.nn.functional.linear = native_linear
    from opt_scale.data.loader import TrainLoader
    loader = TrainLoader(shards, cfg.data, cfg.model, cfg.tasks, tokenizer, dist_env.rank, dist_env.world_size,
                         cfg.train.micro_batch_size)
    timings = _time_steps(spec, cfg, engines, linears, loader, distributed.device_for(dist_env))
    return _report(spec, cfg, engines, stages, timings, dist_env)


def _config(spec: ProbeSpec, rank: int):
    from opt_scale.config import load_config
    from opt_scale.data.sources import resolve_shards
    from opt_scale.data.tokenizer import Tokenizer
    from opt_scale.engine.trainer import fill_vocab
    cfg = load_config(spec.preset, spec.overrides)
    tokenizer = Tokenizer(cfg.data.tokenizer)
    fill_vocab(cfg, tokenizer)
    if cfg.tasks.needs_vq:
        cfg.model.vq.checkpoint = str(write_untrained_vq(cfg, Path(spec.work_dir), rank))
    if spec.peak_tflops:
        cfg.train.peak_tflops = spec.peak_tflops
    return cfg, tokenizer, resolve_shards(cfg.data.train_shards)


def write_untrained_vq(cfg, work_dir: Path, rank: int) -> Path:
    """A randomly initialised VQ tokenizer of the configured shape (one file per rank: no write races)."""
    from opt_scale.model.vq import build_vq
    from opt_scale.model.vq_io import save_vq
    work_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    vq = build_vq(cfg.model)
    path = work_dir / (f"vq-untrained-{vq.cfg.image_size}px-g{vq.grid}-k{cfg.model.vq.codebook_size}"
                       f"-rank{rank}.safetensors")
    save_vq(vq.state_dict(), vq.cfg, vq.grid, path)
    return path


def _build_engine(cfg, ds_config: str, world: int):
    """The trainer's model, optimizer and schedule under ``ds_config``: (engine, ZeRO stage)."""
    import deepspeed

    from opt_scale.engine.ds_config import build_ds_config, offloads_optimizer, zero_stage
    from opt_scale.engine.optim import build_optimizer, build_scheduler
    from opt_scale.engine.trainer import build_model
    cfg.train.ds_config = ds_config
    ds_cfg = build_ds_config(cfg.train, world)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, ds_cfg)
    optimizer = build_optimizer(model, cfg.train, offloads_optimizer(ds_cfg))
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer,
                                      lr_scheduler=build_scheduler(optimizer, cfg.train), config=ds_cfg)
    return engine, zero_stage(ds_cfg)


@dataclass
class StepTimings:
    step_s: dict[str, list[float]]   # engine -> per timed step, this rank
    data_s: list[float]              # batch fetch per timed step, this rank
    loop_s: float                    # wall time of the timed loop
    tokens: dict[str, float]         # modality -> tokens this rank trained on (timed steps)
    flops: dict[str, float]          # part -> training FLOPs this rank did per engine (timed steps)
    samples: int                     # samples this rank trained on per engine (timed steps)
    profiles: dict[str, str] = field(default_factory=dict)  # engine -> top functions (with spec.profile)
    final_loss: dict[str, float] = field(default_factory=dict)  # engine -> its loss at the last step, this rank


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_steps(spec: ProbeSpec, cfg, engines: dict, linears: dict, loader, device) -> StepTimings:
    import torch.distributed as dist

    from opt_scale.data.collate import mel_on_device
    from opt_scale.engine.throughput import batch_train_flops, modality_tokens
    from opt_scale.engine.trainer import to_device
    names = list(engines)
    timings = StepTimings({n: [] for n in names}, [], 0.0, {}, {}, 0)
    profilers = {n: cProfile.Profile() for n in names} if spec.profile else {}
    loop_start = 0.0
    for step in range(spec.warmup + spec.steps):
        timed = step >= spec.warmup
        if step == spec.warmup:
            dist.barrier()
            loop_start = time.perf_counter()
        started = time.perf_counter()
        batch = next(loader)
        fetched = time.perf_counter()
        inputs = to_device(batch, device)
        for i in range(len(names)):
            name = names[(step + i) % len(names)]  # rotate: no engine always goes first
            # On GPU the work is queued: synchronize so each engine's step is timed whole.
            sync(device)
            dist.barrier()
            t0 = time.perf_counter()
            engine = engines[name]
            torch.nn.functional.linear = linears[name]
            profiler = profilers.get(name) if timed else None
            if profiler:
                profiler.enable()
            out = engine(mel_on_device(inputs, cfg.model.audio.n_mels))  # timed: it is the step's work
            engine.backward(out["loss"])
            engine.step()
            sync(device)
            if profiler:
                profiler.disable()
            if timed:
                timings.step_s[name].append(time.perf_counter() - t0)
                timings.final_loss[name] = float(out["loss"].detach())  # after the sync above: no extra wait
        if timed:
            timings.data_s.append(fetched - started)
            timings.samples += len(batch["keys"])
            for key, value in modality_tokens(batch, cfg.model).items():
                timings.tokens[key] = timings.tokens.get(key, 0.0) + value
            for key, value in batch_train_flops(batch, cfg.model).items():
                timings.flops[key] = timings.flops.get(key, 0.0) + value
    dist.barrier()
    timings.loop_s = time.perf_counter() - loop_start
    timings.profiles = {name: top_functions(p, spec.steps) for name, p in profilers.items()}
    return timings


def top_functions(profiler: cProfile.Profile, steps: int, count: int = 15) -> str:
    """The functions with the most own time, as pstats prints them (totals over ``steps`` steps)."""
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text).sort_stats("tottime")
    text.write(f"{steps} steps, {stats.total_tt:.3f} s profiled\n")
    stats.print_stats(count)
    return "\n".join(line for line in text.getvalue().splitlines() if line.strip())


def _report(spec: ProbeSpec, cfg, engines: dict, stages: dict[str, int], timings: StepTimings,
            dist_env) -> dict | None:
    import torch.distributed as dist

    from opt_scale.engine.distributed import collective_device
    from opt_scale.engine.ds_config import resolve_precision
    from opt_scale.engine.metrics import peak_memory_bytes
    from opt_scale.engine.peak import peak_tflops
    from opt_scale.model.flops import part_forward_flops

    from .engine_state import engine_state_bytes
    world = dist_env.world_size
    names = list(engines)
    # A step takes as long as its slowest rank.
    per_step = torch.tensor([timings.step_s[n] for n in names] + [timings.data_s], dtype=torch.float64,
                            device=collective_device())
    dist.all_reduce(per_step, op=dist.ReduceOp.MAX)
    totals = {f"tokens/{k}": v for k, v in timings.tokens.items()} | {f"flops/{k}": v for k, v in timings.flops.items()}
    keys = sorted(totals)
    summed = torch.tensor([totals[k] for k in keys] + [timings.samples, sum(timings.data_s)], dtype=torch.float64,
                          device=collective_device())
    dist.all_reduce(summed)
    local = {"rank": dist_env.rank, "peak_memory_bytes": peak_memory_bytes(),
             "state": {n: engine_state_bytes(e) for n, e in engines.items()}}
    ranks: list = [None] * world
    dist.all_gather_object(ranks, local)
    if dist_env.rank != 0:
        return None
    totals = dict(zip(keys, summed[:len(keys)].tolist()))
    by_kind = {kind: {k.split("/", 1)[1]: v for k, v in totals.items() if k.startswith(kind + "/")}
               for kind in ("tokens", "flops")}
    samples, data_wait_rank_sum = summed[len(keys)].item(), summed[len(keys) + 1].item()
    precision = resolve_precision(cfg.train)
    peak, peak_source = peak_tflops(precision, cfg.train.peak_tflops)
    flops_per_step = sum(by_kind["flops"].values()) / spec.steps
    results = []
    for i, name in enumerate(names):
        step_s = per_step[i].tolist()
        mean_step = statistics.fmean(step_s)
        tflops = flops_per_step / mean_step / 1e12
        results.append({
            "ds_config": name,
            "zero_stage": stages[name],
            "step_s_median": statistics.median(step_s), "step_s_mean": mean_step,
            "step_s_min": min(step_s), "step_s_max": max(step_s), "step_s": step_s,
            "samples_per_s": samples / spec.steps / mean_step,
            "tflops": tflops, "mfu": tflops / (peak * world) if peak else None,
            "state_bytes_per_rank": [r["state"][name]["state_bytes"] for r in ranks],
            "state_detail_per_rank": [r["state"][name] for r in ranks],
        })
    data_s = per_step[len(names)].tolist()
    return {
        "world_size": world, "launcher": dist_env.launcher, "preset": spec.preset, "precision": precision,
        "micro_batch_size": cfg.train.micro_batch_size, "steps": spec.steps, "warmup": spec.warmup,
        "data_workers_per_rank": cfg.data.num_workers, "engines": results,
        "final_loss": timings.final_loss,  # rank 0's
        "loop_s": timings.loop_s, "samples": samples,
        # The whole timed loop (fetch + every engine's step), as the trainer's throughput/* scalars see it.
        "loop_samples_per_s": samples / timings.loop_s,
        "data_wait_fraction": data_wait_rank_sum / world / timings.loop_s,
        "data_s_median": statistics.median(data_s),
        "tokens_per_s": {k: v / timings.loop_s for k, v in by_kind["tokens"].items()},
        "train_flops_per_sample": {k: v / samples for k, v in by_kind["flops"].items()},
        "train_flops_per_sample_at_max_lengths": {k: 3.0 * v for k, v in part_forward_flops(cfg.model).items()},
        "vocab_size": cfg.model.text.vocab_size,
        "peak_tflops_per_rank": peak, "peak_source": peak_source,
        "peak_memory_bytes_per_rank": [r["peak_memory_bytes"] for r in ranks],
        "profiles": timings.profiles,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", required=True, help="ProbeSpec as a JSON file")
    p.add_argument("--out", required=True, help="rank 0 writes the results here (JSON)")
    args = p.parse_args(argv)
    spec = ProbeSpec(**json.loads(Path(args.spec).read_text()))
    result = run_probe(spec)
    if result is not None:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
