"""Model parts: shapes, masks, and padding invariance."""

import torch

from opt_scale.model.audio_encoder import AudioEncoder
from opt_scale.model.config import AudioConfig, CrossConfig, TextConfig, VisionConfig
from opt_scale.model.cross_encoder import CrossModalEncoder
from opt_scale.model.text_encoder import TextEncoder
from opt_scale.model.vision_encoder import VisionEncoder

TOL = dict(atol=1e-5, rtol=1e-4)


def small_shape():
    return dict(layers=2, hidden=32, heads=4, ffn=64)


def test_text_encoder_padding_invariance():
    torch.manual_seed(0)
    enc = TextEncoder(TextConfig(vocab_size=50, max_len=16, **small_shape()), 48).eval()
    ids = torch.randint(5, 50, (2, 7))
    lengths = torch.tensor([7, 4])
    out, valid = enc(ids, lengths)
    padded = torch.cat([ids, torch.randint(5, 50, (2, 5))], 1)  # garbage after the length
    out2, valid2 = enc(padded, lengths)
    assert out.shape == (2, 7, 48) and valid.tolist()[1] == [True] * 4 + [False] * 3
    assert torch.allclose(out[0], out2[0, :7], **TOL)
    assert torch.allclose(out[1, :4], out2[1, :4], **TOL)


def test_audio_encoder_lengths_and_padding_invariance():
    torch.manual_seed(0)
    cfg = AudioConfig(max_seconds=2.0, conv_channels=8, **small_shape())
    enc = AudioEncoder(cfg, 32).eval()
    mel = torch.randn(1, 101, 80)
    out, valid = enc(mel, torch.tensor([101]))
    assert out.shape[1] == cfg.tokens_for_frames(101) == valid.sum()
    # Whatever the padding frames hold, the valid outputs do not change.
    mel2 = torch.cat([mel, torch.randn(1, 40, 80)], 1)
    out2, valid2 = enc(mel2, torch.tensor([101]))
    n = int(valid.sum())
    assert valid2.sum() == valid.sum()
    assert torch.allclose(out[0, :n], out2[0, :n], **TOL)


def test_vision_encoder_patch_mask_changes_only_through_mask_token():
    torch.manual_seed(0)
    enc = VisionEncoder(VisionConfig(image_size=16, patch_size=8, **small_shape()), 32).eval()
    px = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    out, valid = enc(px)
    assert out.shape == (2, 4, 32) and valid.all()
    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[0, 1] = True
    masked, _ = enc(px, mask)
    assert torch.allclose(masked[1], out[1], **TOL) and not torch.allclose(masked[0], out[0], **TOL)


def test_cross_encoder_ignores_padding_and_dropped_modalities():
    torch.manual_seed(0)
    cross = CrossModalEncoder(CrossConfig(**small_shape())).eval()
    B, D = 2, 32
    text, image, audio = torch.randn(B, 5, D), torch.randn(B, 4, D), torch.randn(B, 6, D)
    tv = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    iv = torch.ones(B, 4, dtype=torch.bool)
    av = torch.tensor([[1] * 6, [1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    full, packed, lengths = cross(text, tv, image, iv, audio, av)
    out = cross.split(full, packed, lengths, 5, 4)
    assert lengths.tolist() == [1 + 3 + 4 + 6, 1 + 5 + 4 + 2]
    # Changing padded tokens changes nothing valid.
    text2 = text.clone()
    text2[0, 3:] = 100.0
    audio2 = audio.clone()
    audio2[1, 2:] = -100.0
    out2 = cross.split(*cross(text2, tv, image, iv, audio2, av), 5, 4)
    assert torch.allclose(out.cls, out2.cls, **TOL)
    assert torch.allclose(out.text[0, :3], out2.text[0, :3], **TOL)
    assert (out.text[0, 3:] == 0).all()
    # Dropping a modality equals never having it.
    no_audio = torch.zeros_like(av)
    a = cross.split(*cross(text, tv, image, iv, audio, no_audio), 5, 4)
    b = cross.split(*cross(text, tv, image, iv, audio[:, :1] * 0, no_audio[:, :1]), 5, 4)
    assert torch.allclose(a.cls, b.cls, **TOL) and torch.allclose(a.image, b.image, **TOL)


def test_packed_cross_encoder_matches_unpacked_per_sample():
    """Packing sample-wise equals running each sample alone, unpadded."""
    torch.manual_seed(0)
    cross = CrossModalEncoder(CrossConfig(**small_shape())).eval()
    D = 32
    text, image, audio = torch.randn(2, 5, D), torch.randn(2, 4, D), torch.randn(2, 6, D)
    tv = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    iv = torch.ones(2, 4, dtype=torch.bool)
    av = torch.tensor([[1, 1, 1, 0, 0, 0], [1] * 6], dtype=torch.bool)
    batched = cross.split(*cross(text, tv, image, iv, audio, av), 5, 4)
    single = cross.split(*cross(text[:1, :2], tv[:1, :2], image[:1], iv[:1], audio[:1, :3],
                                            av[:1, :3]), 2, 4)
    assert torch.allclose(batched.cls[0], single.cls[0], **TOL)
    assert torch.allclose(batched.audio[0, :3], single.audio[0], **TOL)
