"""The loader's fast feature paths give the features of the straightforward code."""

import io

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from opt_scale.data import features
from opt_scale.data.decode import SampleDecoder, SampleError
from opt_scale.presets import base


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


def _jpeg(width: int, height: int) -> bytes:
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


@pytest.mark.parametrize("size", [(512, 384), (384, 512), (160, 120)])  # landscape, portrait, upscaled
def test_decode_image_is_pillows_centre_crop_and_resize(size):
    decoder = SampleDecoder(base().model, tokenizer=None)
    data = _jpeg(*size)
    got = decoder.decode_image(data)
    assert got.shape == (3, 224, 224) and got.dtype == torch.uint8
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    side = min(w, h)
    box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
    want = torch.from_numpy(np.array(img.crop(box).resize((224, 224), Image.Resampling.BILINEAR))).permute(2, 0, 1)
    diff = (got.int() - want.int()).abs()
    assert diff.float().mean() < 1.0 and diff.max() <= 8  # rounding of two implementations of one filter


def _flac(wave: np.ndarray, rate: int = 16_000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def test_read_wave_crops_to_the_preset_and_downmixes():
    decoder = SampleDecoder(base().model, tokenizer=None)  # base: at most 20 s
    long_mono = np.full(25 * 16_000, 0.25, dtype=np.float32)
    assert decoder.read_wave(_flac(long_mono)).shape == (20 * 16_000,)
    stereo = np.stack([np.full(8000, 0.5), np.full(8000, -0.25)], axis=1).astype(np.float32)
    wave = decoder.read_wave(_flac(stereo))
    assert wave.shape == (8000,) and np.allclose(wave, 0.125, atol=1e-4)
    with pytest.raises(SampleError, match="16 kHz"):
        decoder.read_wave(_flac(long_mono[:8000], rate=8000))
