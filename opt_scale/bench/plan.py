"""Capacity plan for a GPU cluster, computed on CPU: memory per GPU, fit, communication, step time, loader.

Analytic, from the run config (a preset plus ``--set`` overrides), the
cluster shape and a GPU model; nothing is allocated or timed. Per GPU:

* model states: bf16 parameters (2 bytes), gradients (4: the fp32 gradient
  the optimizer step reads, as DeepSpeed's estimator counts it), optimizer
  states (12: fp32 master + Adam m, v); ZeRO stage 1 partitions the
  optimizer states over the world, 2 also the gradients, 3 also the
  parameters, and stage 3 adds the largest layer gathered whole (its bf16
  parameters and gradients). ``--offload optimizer`` moves the optimizer
  states and gradients to host memory, ``all`` the parameters too (host
  memory is reported per node, with DeepSpeed's 1.5x buffer factor).
  Parameter counts are ``model.flops.part_parameters``. The figure is checked
  against DeepSpeed's ``estimate_zero3_model_states_mem_needs`` (called
  here, with the total and largest-layer parameters): ``ok`` is false if
  they differ by more than 5%;
* activations for the micro batch, with and without per-layer activation
  checkpointing, padded to the maximum lengths (``flops.max_lengths``) and
  packed (mean lengths = maxima x ``--mean-fill``): per transformer layer
  Korthikanti et al. 2022's 34*s*b*h bytes plus the attention scores (5*a*s^2*b
  if materialized, an fp32 log-sum-exp per row if fused, the CUDA default),
  summed over the towers (2 copies), the cross encoder (4 views) and both
  decoders (cross-attention over the cross encoder's sequence), plus the conv
  front ends (see plan_estimates.py);
* fit: model states + activations <= GPU memory less ``--reserve`` (CUDA
  context, allocator fragmentation, NCCL buffers), and the largest micro
  batch that fits;
* communication: ZeRO-3 moves ~3x the bf16 parameters per GPU per step
  (all-gather in forward and again in backward, reduce-scatter of
  gradients; stages 0-2: 2x, all-reduce), x (world-1)/world for a ring, at
  the slowest link used (the inter-node network if nodes > 1, else NVLink);
* step time at the assumed ``--mfu`` from ``flops.train_flops_per_sample``
  (communication taken as hidden behind compute unless it is longer), and
  samples/s for the whole cluster;
* loader: CPU cores per node to decode that many samples
  (``--decode-ms-per-sample``), shard read bandwidth per node and storage for
  ``--samples`` samples (``--sample-bytes``).

Not modelled: the frozen VQ tokenizer (replicated, small next to xl), the
embeddings, pooled outputs and loss heads other than the decoders' (their
logits are never materialized: masked_linear_cross_entropy), ZeRO-3's
prefetch and reduce buckets and parameters kept whole under the persistence
threshold (inside the reserve at these sizes), gradient accumulation,
pipeline/tensor parallelism, and the cost of CPU Adam under offload.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from opt_scale.utils.cli_errors import UsageError

from .plan_estimates import (GATHERED_BYTES, GRAD_BYTES, HOST_BUFFER_FACTOR, OPTIMIZER_BYTES, PARAM_BYTES,
                             activation_bytes, largest_layer_parameters, model_states, scaled_lengths)
from .report import plot_panels, print_table

GiB = 2 ** 30


@dataclass(frozen=True)
class GPU:
    memory_gib: float
    peak_bf16_tflops: float       # dense, from engine/peak.py's data-sheet table
    nvlink_gb_s: float            # intra-node, per GPU per direction
    network_gb_s: float           # inter-node, per GPU (one NIC per GPU)


GPUS: dict[str, GPU] = {
    # H100 SXM: NVLink 4 = 900 GB/s bidirectional; 400 Gb/s InfiniBand NDR per GPU.
    "h100": GPU(80, 989.0, 450.0, 50.0),
    # A100 SXM: NVLink 3 = 600 GB/s bidirectional; 200 Gb/s HDR per GPU.
    "a100": GPU(80, 312.0, 300.0, 25.0),
    # H200: the H100's compute and links with 141 GB of HBM3e.
    "h200": GPU(141, 989.0, 450.0, 50.0),
}
OFFLOADS = ("none", "optimizer", "all")
# Sharded loader, base input sizes, per sample on one core (BENCHMARKS.md, opt-bench loader, 2 workers).
DECODE_MS_PER_SAMPLE = 8.4
# 346 MB of shards per 512 samples (BENCHMARKS.md, opt-bench loader: 1024x768 JPEG + ~30 s FLAC + caption).
SAMPLE_BYTES = 346e6 / 512
# Localized Narratives' Open Images train split.
DEFAULT_SAMPLES = 507_444
# Mean / maximum length per modality, Localized-Narratives-like: captions average ~36-42 words (~50
# SentencePiece tokens of the 128 kept), most narrations outlast the 20 s kept, every image has all its patches.
MEAN_FILL = "0.4,1.0,0.95"
DS_TOLERANCE = 0.05


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "--preset", dest="preset", default="xl", help="preset (tiny ... xl) or a config.json")
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. model.text.max_len=256")
    p.add_argument("--nodes", type=int, default=1, help="nodes")
    p.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node")
    p.add_argument("--gpu", type=str.lower, default="h100", help=f"GPU model: {', '.join(GPUS)} (any case)")
    p.add_argument("--micro-batch", type=int, default=0, help="samples per GPU per step (0: train.micro_batch_size)")
    p.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOPs utilisation")
    p.add_argument("--zero-stage", type=int, default=3, help="ZeRO stage: 0, 1, 2 or 3")
    p.add_argument("--offload", default="none", help=f"CPU offload: {', '.join(OFFLOADS)}")
    p.add_argument("--attention", default="fused", help="fused (flash kernels, the CUDA path) or materialized")
    p.add_argument("--reserve", type=float, default=0.10,
                   help="fraction of GPU memory kept for the CUDA context, allocator fragmentation and NCCL")
    p.add_argument("--mean-fill", default=MEAN_FILL, metavar="TEXT,IMAGE,AUDIO",
                   help="packed: mean / maximum length per modality")
    p.add_argument("--decode-ms-per-sample", type=float, default=DECODE_MS_PER_SAMPLE,
                   help="loader CPU time per sample on one core (BENCHMARKS.md, opt-bench loader)")
    p.add_argument("--sample-bytes", type=float, default=SAMPLE_BYTES, help="average size of a sample in the shards")
    p.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, help="training samples to store")


def check_arguments(args: argparse.Namespace) -> tuple[GPU, tuple[float, float, float]]:
    if args.gpu not in GPUS:
        raise UsageError(f"--gpu {args.gpu!r} is not one of {', '.join(GPUS)}")
    for flag, value in (("--nodes", args.nodes), ("--gpus-per-node", args.gpus_per_node),
                        ("--samples", args.samples)):
        if value < 1:
            raise UsageError(f"{flag} must be >= 1 (got {value})")
    if args.micro_batch < 0:
        raise UsageError(f"--micro-batch must be >= 1, or 0 for train.micro_batch_size (got {args.micro_batch})")
    if args.zero_stage not in (0, 1, 2, 3):
        raise UsageError(f"--zero-stage must be 0, 1, 2 or 3 (got {args.zero_stage})")
    if args.offload not in OFFLOADS:
        raise UsageError(f"--offload {args.offload!r} is not one of {', '.join(OFFLOADS)}")
    if args.offload == "all" and args.zero_stage != 3:
        raise UsageError("--offload all offloads parameters, which needs --zero-stage 3")
    if args.attention not in ("fused", "materialized"):
        raise UsageError(f"--attention {args.attention!r} is not fused or materialized")
    if not 0 < args.mfu <= 1:
        raise UsageError(f"--mfu must be in (0, 1] (got {args.mfu})")
    for flag, value in (("--decode-ms-per-sample", args.decode_ms_per_sample), ("--sample-bytes", args.sample_bytes)):
        if not value > 0:
            raise UsageError(f"{flag} must be > 0 (got {value})")
    if not 0 <= args.reserve < 1:
        raise UsageError(f"--reserve must be in [0, 1) (got {args.reserve})")
    try:
        fill = tuple(float(x) for x in args.mean_fill.split(","))
    except ValueError:
        fill = ()
    if len(fill) != 3 or not all(0 < f <= 1 for f in fill):
        raise UsageError(f"--mean-fill {args.mean_fill!r} must be three fractions in (0, 1]: TEXT,IMAGE,AUDIO")
    return GPUS[args.gpu], fill


def run(args: argparse.Namespace) -> dict:
    from opt_scale.config import load_config
    from opt_scale.model.flops import max_lengths, part_parameters, train_flops_per_sample
    gpu, fill = check_arguments(args)
    cfg = load_config(args.preset, args.overrides)   # a bad key: ConfigError, one line, exit 2
    model = cfg.model
    micro = args.micro_batch or cfg.train.micro_batch_size
    world = args.nodes * args.gpus_per_node
    parts = part_parameters(model, mvm_regress=cfg.tasks.mvm.regress_weight > 0,
                            contrastive_dim=cfg.tasks.contrastive.dim,
                            matching_similarity=cfg.tasks.matching.similarity_features)
    total, largest = sum(parts.values()), largest_layer_parameters(model)
    states = model_states(total, largest, world, args.zero_stage, args.offload)
    host_per_node = states.host * args.gpus_per_node * HOST_BUFFER_FACTOR
    ds = deepspeed_estimate(total, largest, args) if args.zero_stage == 3 else None

    usable = gpu.memory_gib * GiB * (1 - args.reserve)
    padded = max_lengths(model)
    packed = scaled_lengths(padded, fill)
    fused = args.attention == "fused"
    memory_rows = []
    for layout, lengths in (("padded", padded), ("packed", packed)):
        for ckpt in (False, True):
            per_sample = activation_bytes(model, lengths, 1, ckpt, fused)
            free = usable - states.gpu
            memory_rows.append({
                "layout": layout, "checkpointing": "on" if ckpt else "off",
                "act_GiB_per_sample": per_sample / GiB, "act_GiB": micro * per_sample / GiB,
                "total_GiB": (states.gpu + micro * per_sample) / GiB, "usable_GiB": usable / GiB,
                "fits": states.gpu + micro * per_sample <= usable,
                "max_micro_batch": max(0, int(free // per_sample))})

    comm_factor = 3 if args.zero_stage == 3 else 2
    comm_bytes = comm_factor * PARAM_BYTES * total * (world - 1) / world
    link = gpu.network_gb_s if args.nodes > 1 else gpu.nvlink_gb_s
    comm_s = comm_bytes / (link * 1e9)
    step_rows = []
    for layout, lengths in (("padded", padded), ("packed", packed)):
        flops = train_flops_per_sample(model, lengths)
        compute_s = micro * flops / (gpu.peak_bf16_tflops * 1e12 * args.mfu)
        step_s = max(compute_s, comm_s)
        samples_s = world * micro / step_s
        per_node = samples_s / args.nodes
        step_rows.append({
            "layout": layout, "train_TFLOP_per_sample": flops / 1e12, "compute_s": compute_s,
            "comm_GB_per_gpu": comm_bytes / 1e9, "comm_s": comm_s, "comm_hidden": comm_s <= compute_s,
            "step_s": step_s, "samples_per_s": samples_s,
            "loader_cores_per_node": per_node * args.decode_ms_per_sample / 1e3,
            "read_MB_s_per_node": per_node * args.sample_bytes / 1e6,
            "epoch_h": args.samples / samples_s / 3600})

    states_rows = [
        {"state": "parameters (bf16)", "bytes_per_param": PARAM_BYTES, "GiB_per_gpu": states.params / GiB},
        {"state": "gradients (fp32 at the step)", "bytes_per_param": GRAD_BYTES, "GiB_per_gpu": states.grads / GiB},
        {"state": "optimizer (fp32 master, m, v)", "bytes_per_param": OPTIMIZER_BYTES,
         "GiB_per_gpu": states.optimizer / GiB},
        {"state": f"largest layer gathered ({largest / 1e6:.1f}M)", "bytes_per_param": GATHERED_BYTES,
         "GiB_per_gpu": states.gathered / GiB},
        {"state": "total on GPU", "bytes_per_param": None, "GiB_per_gpu": states.gpu / GiB},
    ]
    where = f"{args.nodes}x{args.gpus_per_node} {args.gpu}, ZeRO-{args.zero_stage}, offload {args.offload}"
    host_note = (f"host per node {host_per_node / GiB:.1f} GiB (offloaded states x{HOST_BUFFER_FACTOR:g} buffers)"
                 if states.host else "nothing offloaded")
    print_table(states_rows, title=f"{args.preset}: {total / 1e9:.3f}B parameters; model states per GPU ({where}); "
                                   f"{host_note}")
    check = print_deepspeed_check(ds, states.gpu, host_per_node)
    print_table(memory_rows, title=f"activations, micro batch {micro} ({args.attention} attention; packed = "
                                   f"mean lengths text {packed.text} / image {packed.image} / audio {packed.audio} "
                                   f"of {padded.text} / {padded.image} / {padded.audio}); "
                                   f"usable = {gpu.memory_gib:g} GiB - {args.reserve:.0%} reserve")
    print_table(step_rows, title=f"step at MFU {args.mfu:g} of {gpu.peak_bf16_tflops:g} TFLOP/s, "
                                 f"{'inter-node' if args.nodes > 1 else 'NVLink'} {link:g} GB/s per GPU; loader at "
                                 f"{args.decode_ms_per_sample:g} ms/sample, {args.sample_bytes / 1e3:.0f} kB/sample")
    storage_tb = args.samples * args.sample_bytes / 1e12
    print(f"storage for {args.samples:,} samples: {storage_tb:.3f} TB")
    if args.plot:
        batches = list(range(1, 2 * max(micro, *(r["max_micro_batch"] for r in memory_rows)) + 2))
        series = {f"{r['layout']}, checkpointing {r['checkpointing']}":
                  (batches, [states.gpu / GiB + b * r["act_GiB_per_sample"] for b in batches]) for r in memory_rows}
        plot_panels([(series, "micro batch per GPU", "GiB per GPU", f"{args.preset} on {where}",
                      {f"usable ({gpu.memory_gib:g} GiB - {args.reserve:.0%})": usable / GiB})], args.plot)
    return {"ok": check["ok"], "bench": "plan", "preset": args.preset, "world_size": world,
            "total_params": total, "largest_layer_params": largest, "parts": parts, "micro_batch": micro,
            "model_states": states_rows, "gpu_model_states_bytes": states.gpu,
            "host_bytes_per_node": host_per_node, "deepspeed_check": check, "activations": memory_rows,
            "step": step_rows, "storage_TB": storage_tb, "gpu": vars(gpu) | {"name": args.gpu},
            "config": vars(args) | {"module": None}}


def deepspeed_estimate(total: int, largest: int, args: argparse.Namespace) -> dict:
    """DeepSpeed's own ZeRO-3 estimate (pure arithmetic) for this cluster and offload setting,
    with zero.Init (the trainer builds the model under it)."""
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        from deepspeed.runtime.zero.stage3 import (estimate_zero3_model_states_mem_needs,  # accelerator banner
                                                   estimate_zero3_model_states_mem_needs_all_cold)
    host, gpu, _ = estimate_zero3_model_states_mem_needs(
        total, largest, num_gpus_per_node=args.gpus_per_node, num_nodes=args.nodes,
        cpu_offload=args.offload != "none", cpu_offload_params=args.offload == "all", zero_init=True)
    # The _all_cold variant (the one DeepSpeed documents for a model not built) only prints its table:
    # its GiB per GPU for these options, read back, must be the figure above.
    table = io.StringIO()
    with contextlib.redirect_stdout(table):
        estimate_zero3_model_states_mem_needs_all_cold(total, largest, num_gpus_per_node=args.gpus_per_node,
                                                       num_nodes=args.nodes)
    options = (f"offload_param={'cpu' if args.offload == 'all' else 'none'}",
               f"offload_optimizer={'none' if args.offload == 'none' else 'cpu'}", "zero_init=1")
    all_cold = None
    for line in table.getvalue().splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) == 3 and cells[1].endswith("GB"):
            said = [o.split("=")[0] + "=" + ("cpu" if "cpu" in o.split("=")[1] else o.split("=")[1])
                    for o in cells[2].split(", ")]
            if tuple(said) == options:
                all_cold = float(cells[1][:-2]) * GiB   # printed as GB, computed as /2**30
    return {"gpu_bytes": gpu, "host_bytes_per_node": host, "all_cold_gpu_bytes": all_cold}


def print_deepspeed_check(ds: dict | None, gpu_bytes: float, host_bytes: float) -> dict:
    if ds is None:
        print("DeepSpeed's estimator covers ZeRO-3 only: not checked")
        return {"ok": True, "checked": False}
    ratio = gpu_bytes / ds["gpu_bytes"]
    cold = ds["all_cold_gpu_bytes"]
    cold_ratio = gpu_bytes / cold if cold else None
    # _all_cold prints two decimals: a small model's figure is only known to 0.005 GiB
    cold_ok = cold is not None and abs(gpu_bytes - cold) <= max(DS_TOLERANCE * cold, 0.005 * GiB)
    ok = abs(ratio - 1) <= DS_TOLERANCE and cold_ok
    host_ratio = host_bytes / ds["host_bytes_per_node"] if host_bytes else None
    print(f"DeepSpeed estimate_zero3_model_states_mem_needs: {ds['gpu_bytes'] / GiB:.3f} GiB per GPU, "
          f"{ds['host_bytes_per_node'] / GiB:.1f} GiB host per node; this plan {gpu_bytes / GiB:.3f} GiB per GPU: "
          f"ratio {ratio:.3f} ({'within' if ok else 'OUTSIDE'} {DS_TOLERANCE:.0%})"
          + (f", host ratio {host_ratio:.3f}" if host_ratio is not None else ""))
    print(f"DeepSpeed estimate_zero3_model_states_mem_needs_all_cold (same options): "
          + ("no line for these options" if cold is None else f"{cold / GiB:.2f} GiB per GPU"
             + (f": ratio {cold_ratio:.3f}" if cold_ratio else "")))
    return {"ok": ok, "checked": True, "ratio": ratio, "host_ratio": host_ratio, "all_cold_ratio": cold_ratio,
            "deepspeed_all_cold_gpu_bytes": cold, "tolerance": DS_TOLERANCE,
            "deepspeed_gpu_bytes": ds["gpu_bytes"], "deepspeed_host_bytes_per_node": ds["host_bytes_per_node"],
            "plan_gpu_bytes": gpu_bytes}
