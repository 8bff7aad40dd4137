"""Loader throughput: the streaming training loader against a naive one, samples/s per core.

Realistic inputs are generated once (as ``opt-bench shards`` does: 1024x768
JPEG photos with sensor noise, 30 s Ogg Vorbis speech at 48 kHz) and built
into shards with ``opt-shards build``'s defaults (short side 384, 16 kHz
FLAC). At a preset's input sizes (``base``: image 224, text 128, audio up to
20 s) the benchmark then times, for each ``--workers`` value:

* ``sharded``: the training loader itself (``TrainLoader``: read tar, decode
  JPEG and FLAC, log-mel, tokenize, draw masks, collate);
* ``naive``: the same steps on the original files, decoding the full-size
  JPEG and the whole Vorbis recording in the worker and resampling it
  (:mod:`.naive_loader`).

Both run in this process, alternately, ``--repeats`` times each. Throughput
is taken in steady state (after every worker has delivered a batch), by wall
clock and by CPU time of the loader process and its workers:
samples per CPU-second is what one dedicated core does, and on a machine
shared with other jobs it is the figure that does not depend on them. The
speed-up is the median over repetitions of the per-repetition ratio.

A per-stage cost table (CPU ms per sample, one core, in-process) says where
the time goes.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psutil

from .report import plot_lines, print_table

MIN_WINDOW_S = 1.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "--preset", dest="preset", default="base",
                   help="preset (or config.json) whose input sizes the loader produces")
    p.add_argument("--workers", default="1,2", help="comma-separated loader worker counts")
    p.add_argument("--batch-size", type=int, default=32, help="samples per batch")
    p.add_argument("--measure-samples", type=int, default=256,
                   help="samples timed per loader and worker count, after the warm-up batches (at least "
                        f"{MIN_WINDOW_S:g} s of them)")
    p.add_argument("--repeats", type=int, default=3, help="alternating repetitions of each measurement")
    p.add_argument("--loaders", default="sharded,naive", help="which loaders to time (comma-separated)")
    p.add_argument("--samples", type=int, default=512, help="narratives in the generated input (and shards)")
    p.add_argument("--audio-seconds", type=float, default=30.0, help="length of each generated recording")
    p.add_argument("--image-size", default="1024x768", help="WxH of the generated JPEGs")
    p.add_argument("--audio-format", default="flac", choices=("flac", "wav"),
                   help="audio format of the shards (opt-shards build --audio-format)")
    p.add_argument("--work-dir", default="runs/bench/loader", help="inputs, shards and tokenizer are cached here")
    p.add_argument("--no-stages", action="store_true", help="skip the per-stage cost table")
    p.add_argument("--mel-on-device", action="store_true",
                   help="data.mel_on_device: the sharded loader ships waveforms; the log-mel it no longer "
                        "computes is timed on --device")
    p.add_argument("--device", default="cpu", help="where --mel-on-device's log-mel is timed (cpu, cuda)")
    p.add_argument("--target", type=float, default=200.0, help="samples/s per core goal of the sharded loader")
    p.add_argument("--target-speedup", type=float, default=5.0, help="goal for sharded / naive throughput")


def run(args: argparse.Namespace) -> dict:
    from .loader_inputs import prepare_loader_inputs
    setup = prepare_loader_inputs(args)
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    loaders = [name.strip() for name in args.loaders.split(",") if name.strip()]
    unknown = set(loaders) - {"sharded", "naive"}
    if unknown:
        raise SystemExit(f"opt-bench loader: unknown --loaders {sorted(unknown)} (known: sharded, naive)")
    timings: dict[tuple[str, int], list[StreamTiming]] = {}
    for rep in range(args.repeats):
        for w in workers:
            # Alternate which loader goes first, so neither always runs after the other's warm caches.
            for name in (loaders if (rep + w) % 2 == 0 else loaders[::-1]):
                timing = time_loader(setup.open_loader(name, w), args.measure_samples, warmup_batches=max(1, w))
                timings.setdefault((name, w), []).append(timing)
                print(f"  rep {rep + 1}/{args.repeats}  {name:7s} workers {w}: {timing.samples_per_s:7.1f} samples/s, "
                      f"{timing.samples_per_cpu_s:7.1f} samples/CPU-s", flush=True)
    rows = [summarise(name, w, runs) for (name, w), runs in timings.items()]
    rows.sort(key=lambda r: (loaders.index(r["loader"]), r["workers"]))
    title = (f"loader throughput, preset {args.preset} ({setup.describe()}), batch {args.batch_size}, "
             f"median of {args.repeats}")
    print_table(rows, ["loader", "workers", "samples_per_s", "samples_per_s_per_core", "samples_per_cpu_s",
                       "cpu_ms_per_sample"], title=title)
    result = {"ok": True, "bench": "loader", "preset": args.preset, "inputs": setup.describe(), "rows": rows,
              "config": vars(args) | {"module": None}}
    verdicts = []
    if "sharded" in loaders:
        best = max(r["samples_per_cpu_s"] for r in rows if r["loader"] == "sharded")
        result["sharded_samples_per_s_per_core"] = best
        verdicts.append(_verdict("sharded loader, samples/s per core (CPU time)", best, args.target))
    if {"sharded", "naive"} <= set(loaders):
        result["speedup"] = speedups(timings, workers)
        print_table(result["speedup"], ["workers", "speedup_cpu", "speedup_wall", "per_repeat_cpu"],
                    title="sharded / naive (median of per-repetition ratios)")
        best_speedup = max(r["speedup_cpu"] for r in result["speedup"])
        verdicts.append(_verdict("sharded / naive, per CPU-second", best_speedup, args.target_speedup))
    result["targets"] = verdicts
    if args.mel_on_device and "sharded" in loaders:
        result["mel_on_device_ms_per_sample"] = device_mel_ms(setup, args.device)
        print(f"log-mel on {args.device}, moved out of the workers: "
              f"{result['mel_on_device_ms_per_sample']:.2f} ms per sample")
    if not args.no_stages:
        from .loader_stages import stage_costs
        result["stages"] = stage_costs(setup, naive="naive" in loaders)
    if args.plot:
        series = {}
        for name in loaders:
            mine = [r for r in rows if r["loader"] == name]
            series[f"{name}: samples/s"] = ([r["workers"] for r in mine], [r["samples_per_s"] for r in mine])
            series[f"{name}: samples/CPU-s"] = ([r["workers"] for r in mine], [r["samples_per_cpu_s"] for r in mine])
        plot_lines(series, "loader workers", "samples / s", f"loader throughput ({args.preset} input sizes)",
                   args.plot, targets={f"goal: {args.target:g} samples/CPU-s (sharded)": args.target})
    return result


def device_mel_ms(setup, device: str, batches: int = 4) -> float:
    """Milliseconds per sample of collate.mel_on_device on ``device`` (the
    training process's share of the work under data.mel_on_device)."""
    import torch

    from opt_scale.data.collate import mel_on_device
    from opt_scale.engine.trainer import to_device
    loader = setup.open_loader("sharded", 0)
    got = [to_device(next(loader), torch.device(device)) for _ in range(batches)]
    mel_on_device(got[0], setup.cfg.model.audio.n_mels)  # warm-up (filterbank cache, CUDA context)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    start = time.perf_counter()
    for batch in got[1:]:
        mel_on_device(batch, setup.cfg.model.audio.n_mels)
    sync()
    return 1000 * (time.perf_counter() - start) / sum(len(b["keys"]) for b in got[1:])


@dataclass
class StreamTiming:
    samples: int
    wall_s: float
    cpu_s: float  # the loader process and its workers

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.wall_s

    @property
    def samples_per_cpu_s(self) -> float:
        return self.samples / self.cpu_s


def time_loader(batches: Iterator[dict], measure_samples: int, warmup_batches: int) -> StreamTiming:
    """Steady-state throughput of an endless batch iterator (its workers shut down after)."""
    try:
        for _ in range(warmup_batches):  # every worker started and delivered once
            next(batches)
        cpu_before, started = process_tree_cpu(), time.perf_counter()
        samples = 0
        # CPU time comes in clock ticks (10 ms): a window of at least MIN_WINDOW_S keeps it meaningful.
        while samples < measure_samples or time.perf_counter() - started < MIN_WINDOW_S:
            samples += len(next(batches)["keys"])
        wall = time.perf_counter() - started
        cpu_after = process_tree_cpu()
        cpu = sum(t - cpu_before.get(pid, 0.0) for pid, t in cpu_after.items())
        return StreamTiming(samples, wall, cpu)
    finally:
        del batches
        gc.collect()  # DataLoader workers stop when their iterator is collected


def process_tree_cpu() -> dict[int, float]:
    """CPU seconds (user + system) of this process and of each of its descendants, by pid."""
    me = psutil.Process()
    out = {}
    for proc in [me, *me.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        out[proc.pid] = times.user + times.system
    return out


def summarise(name: str, workers: int, runs: list[StreamTiming]) -> dict:
    per_s = statistics.median(t.samples_per_s for t in runs)
    per_cpu_s = statistics.median(t.samples_per_cpu_s for t in runs)
    return {"loader": name, "workers": workers, "samples_per_s": round(per_s, 1),
            "samples_per_s_per_core": round(per_s / min(workers or 1, os.cpu_count() or 1), 1),
            "samples_per_cpu_s": round(per_cpu_s, 1), "cpu_ms_per_sample": round(1000 / per_cpu_s, 2),
            "repeats": [{"samples": t.samples, "wall_s": round(t.wall_s, 3), "cpu_s": round(t.cpu_s, 3)}
                        for t in runs]}


def speedups(timings: dict[tuple[str, int], list[StreamTiming]], workers: list[int]) -> list[dict]:
    rows = []
    for w in workers:
        pairs = list(zip(timings[("sharded", w)], timings[("naive", w)]))
        cpu = [s.samples_per_cpu_s / n.samples_per_cpu_s for s, n in pairs]
        wall = [s.samples_per_s / n.samples_per_s for s, n in pairs]
        rows.append({"workers": w, "speedup_cpu": round(statistics.median(cpu), 2),
                     "speedup_wall": round(statistics.median(wall), 2),
                     "per_repeat_cpu": [round(r, 2) for r in cpu]})
    return rows


def _verdict(what: str, value: float, target: float) -> dict:
    met = value >= target
    shortfall = "" if met else f", {100 * (1 - value / target):.0f}% short"
    print(f"{what}: {value:.1f} (target >= {target:g}: {'met' if met else 'MISSED'}{shortfall})")
    return {"what": what, "value": value, "target": target, "met": met}
