"""Log-mel filterbank features: 16 kHz, 25 ms window, 10 ms hop, 80 bins.

Computed in the loader workers (CPU) from the 16 kHz FLAC in the shards.
Written here rather than taken from torchaudio, which is not a dependency.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

SAMPLE_RATE = 16_000
WIN_LENGTH = 400   # 25 ms
HOP_LENGTH = 160   # 10 ms
N_FFT = 512
# Log-mel of speech at 16 kHz sits around this mean/std; a fixed affine keeps
# features O(1) without per-utterance statistics (which would leak length).
LOG_MEL_MEAN = -6.0
LOG_MEL_STD = 4.0


def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)


def mel_to_hz(m: np.ndarray) -> np.ndarray:
    return 700.0 * (10 ** (np.asarray(m) / 2595.0) - 1.0)


@functools.lru_cache(maxsize=8)
def mel_filterbank(n_mels: int = 80, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE,
                   f_min: float = 20.0, f_max: float | None = None) -> torch.Tensor:
    """Triangular HTK-style filters, shape [n_fft // 2 + 1, n_mels]."""
    f_max = f_max or sample_rate / 2
    mels = np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2)
    hz = mel_to_hz(mels)
    bins = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    fb = np.zeros((n_fft // 2 + 1, n_mels), dtype=np.float32)
    for m in range(n_mels):
        lo, centre, hi = hz[m], hz[m + 1], hz[m + 2]
        up = (bins - lo) / max(centre - lo, 1e-9)
        down = (hi - bins) / max(hi - centre, 1e-9)
        fb[:, m] = np.maximum(0.0, np.minimum(up, down))
    return torch.from_numpy(fb)


def num_frames(num_samples: int) -> int:
    """Frames produced for a waveform of ``num_samples`` (centred STFT)."""
    return 1 + num_samples // HOP_LENGTH


def log_mel(wave: np.ndarray | torch.Tensor, n_mels: int = 80) -> torch.Tensor:
    """[num_samples] float waveform at 16 kHz -> [frames, n_mels] normalised log-mel."""
    x = torch.as_tensor(wave, dtype=torch.float32)
    if x.numel() < WIN_LENGTH:
        x = torch.nn.functional.pad(x, (0, WIN_LENGTH - x.numel()))
    window = torch.hann_window(WIN_LENGTH)
    spec = torch.stft(x, n_fft=N_FFT, hop_length=HOP_LENGTH, win_length=WIN_LENGTH, window=window,
                      center=True, pad_mode="reflect", return_complex=True)
    power = spec.abs().pow(2).T  # [frames, bins]
    mel = power @ mel_filterbank(n_mels)
    return (torch.log(mel + 1e-6) - LOG_MEL_MEAN) / LOG_MEL_STD


def frames_for_seconds(seconds: float) -> int:
    return num_frames(int(math.ceil(seconds * SAMPLE_RATE)))
