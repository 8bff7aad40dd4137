"""Peak FLOP/s per device, for model FLOPs utilisation (MFU).

Dense (no sparsity) peaks from the vendors' data sheets. ``train.peak_tflops``
overrides the table (e.g. for a GPU not listed, or to use TF32 peaks for fp32).
On CPUs the peak is estimated from the vector width found in /proc/cpuinfo
(two FMA units per core), the clock, and the threads this rank uses.
"""

from __future__ import annotations

import torch

# name fragment (as in torch.cuda.get_device_name) -> precision -> TFLOP/s
GPU_PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
    "H100 SXM": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
    "H100 80GB HBM3": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
    "H100 NVL": {"bf16": 835.0, "fp16": 835.0, "fp32": 60.0},
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "fp32": 51.0},
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5},
    "L40S": {"bf16": 362.0, "fp16": 362.0, "fp32": 91.6},
    "A10": {"bf16": 125.0, "fp16": 125.0, "fp32": 31.2},
    "V100": {"bf16": 0.0, "fp16": 125.0, "fp32": 15.7},
}


def gpu_peak_tflops(name: str, precision: str) -> float | None:
    for fragment, peaks in GPU_PEAK_TFLOPS.items():
        if fragment in name:
            return peaks.get(precision) or None
    return None


def cpu_peak_tflops(threads: int) -> float | None:
    """fp32 estimate: threads x GHz x FLOPs/cycle (2 FMA units x vector lanes x 2)."""
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return None
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
    mhz = [float(line.split(":")[1]) for line in text.splitlines() if line.startswith("cpu MHz")]
    if not mhz:
        return None
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    return threads * (max(mhz) / 1e3) * 2 * lanes * 2 / 1e3


def peak_tflops(precision: str, override: float = 0.0) -> tuple[float | None, str]:
    """Per-rank peak and where it came from."""
    if override > 0:
        return override, "train.peak_tflops"
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        return gpu_peak_tflops(name, precision), name
    return cpu_peak_tflops(torch.get_num_threads()), f"CPU estimate ({torch.get_num_threads()} threads)"
