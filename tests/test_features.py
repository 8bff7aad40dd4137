"""The loader's fast feature paths give the features of the straightforward code."""

import numpy as np
import pytest
import torch

from opt_scale.data import features


def reference_log_mel(wave: np.ndarray, n_mels: int = 80) -> torch.Tensor:
    """The textbook computation: torch.stft, |X|^2, dense filterbank, log."""
    x = torch.as_tensor(wave, dtype=torch.float32)
    if x.numel() < features.WIN_LENGTH:
        x = torch.nn.functional.pad(x, (0, features.WIN_LENGTH - x.numel()))
    spec = torch.stft(x, n_fft=features.N_FFT, hop_length=features.HOP_LENGTH, win_length=features.WIN_LENGTH,
                      window=torch.hann_window(features.WIN_LENGTH), center=True, pad_mode="reflect",
                      return_complex=True)
    mel = spec.abs().pow(2).T @ features.mel_filterbank(n_mels)
    return (torch.log(mel + 1e-6) - features.LOG_MEL_MEAN) / features.LOG_MEL_STD


@pytest.mark.parametrize("num_samples", [1, 399, 400, 401, 16_159, 160_000])
def test_log_mel_equals_the_stft_reference(num_samples):
    rng = np.random.default_rng(num_samples)
    t = np.arange(num_samples) / features.SAMPLE_RATE
    # A chirp plus noise: energy in every band, and quiet bins where log() is steep.
    wave = (0.3 * np.sin(2 * np.pi * (100 + 3000 * t) * t) + 0.01 * rng.standard_normal(num_samples))
    got = features.log_mel(wave.astype(np.float32))
    want = reference_log_mel(wave.astype(np.float32))
    assert got.shape == want.shape == (features.num_frames(max(num_samples, features.WIN_LENGTH)), 80)
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()


def test_filterbank_bands_cover_every_nonzero_weight():
    dense = features.mel_filterbank(80)
    rebuilt = torch.zeros_like(dense)
    for bin_lo, bin_hi, mel_lo, mel_hi, weights in features.filterbank_bands(80):
        rebuilt[bin_lo:bin_hi, mel_lo:mel_hi] = weights
    assert torch.equal(rebuilt, dense)
