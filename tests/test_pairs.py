"""Samples that lack a modality (image-text and audio-text pairs): no view
shows the stand-in the loader gives its tower, no loss reads it, and every
part still runs (ZeRO-3 lock-step: see test_zero3_consistency.py)."""

import numpy as np
import pytest
import torch

from opt_scale.data.collate import Collator
from opt_scale.data.decode import SampleDecoder, SampleError
from opt_scale.data.masking import AUDIO, IGNORE_INDEX, IMAGE, MATCHED, TEXT, matching_view_of_present
from opt_scale.data.shard_reader import iter_samples
from opt_scale.data.sources import resolve_shards
from opt_scale.data.tokenizer import Tokenizer

from .model_fixtures import small_config, small_pretrainer


def raw_samples(demo_shards, n: int) -> list[dict]:
    shard = resolve_shards(str(demo_shards / "demo-index.json"))[0]
    out = []
    for raw in iter_samples(shard.url):
        out.append(dict(raw))
        if len(out) == n:
            return out
    return out


def without(raw: dict, modality: str) -> dict:
    drop = {"image": ("jpg",), "audio": ("flac", "wav", "ogg")}[modality]
    return {k: v for k, v in raw.items() if k not in drop}


@pytest.fixture(scope="module")
def parts(demo_shards, demo_tokenizer):
    tok = Tokenizer(str(demo_tokenizer))
    cfg = small_config(tok.vocab_size)
    return cfg, tok, SampleDecoder(cfg.model, tok), raw_samples(demo_shards, 24)


def test_decoder_marks_what_a_sample_has(parts):
    cfg, _, decode, raws = parts
    full, image_text, audio_text = decode(raws[0]), decode(without(raws[0], "audio")), decode(without(raws[0], "image"))
    assert full.present.tolist() == [True, True, True]
    assert image_text.present.tolist() == [True, True, False] and torch.equal(image_text.pixels, full.pixels)
    assert audio_text.present.tolist() == [True, False, True] and torch.equal(audio_text.mel, full.mel)
    assert not audio_text.pixels.any() and not image_text.mel.any()
    assert audio_text.image_uid != full.image_uid  # grouped by its recording instead
    with pytest.raises(SampleError, match="neither an image"):
        decode(without(without(raws[0], "image"), "audio"))


def test_no_view_shows_a_modality_the_sample_lacks(parts):
    cfg, tok, decode, raws = parts
    collate = Collator(cfg.model, cfg.tasks, tok, seed=0)
    seen_labels = {"image": set(), "audio": set()}
    for k, raw in enumerate(raws):
        lacks = ("image", "audio")[k % 2]
        s = decode(without(raw, lacks))
        missing = IMAGE if lacks == "image" else AUDIO
        for epoch in range(6):
            d = collate.draw(s, epoch)
            for name in ("keep", "dtr_keep", "dir_keep", "match_keep"):
                assert not getattr(d, name)[missing], (name, lacks)
            assert d.keep.any() and not d.dtr_keep[TEXT] and not d.dir_keep[IMAGE]
            if d.match_label != IGNORE_INDEX:
                assert d.match_keep.sum() == 2
                seen_labels[lacks].add(d.match_label)
            else:
                assert d.match_keep.sum() <= 1
    # Matched, or the one mismatch the remaining pair can show: its other modality swapped.
    assert seen_labels == {"image": {MATCHED, 2}, "audio": {MATCHED, 1}}


def test_matching_labels_reduce_as_for_a_modality_left_out():
    lacks_audio = np.array([True, True, False])
    # Audio swapped (class 2): the text-image pair agrees. Image swapped (1): it does not.
    assert matching_view_of_present(np.ones(3, bool), 2, 2, lacks_audio)[1] == MATCHED
    assert matching_view_of_present(np.ones(3, bool), 1, 1, lacks_audio)[1] == 1
    keep, label = matching_view_of_present(np.array([True, False, True]), MATCHED, 1, lacks_audio)
    assert label == IGNORE_INDEX and keep.tolist() == [True, False, False]


@pytest.mark.parametrize("lacks", ["audio", "image"])
def test_a_batch_without_a_modality_never_trains_its_tower_on_the_stand_in(parts, lacks):
    """Every part runs (each parameter gets a gradient, as ZeRO-3 needs), and
    the absent modality's tower gets exactly zero: its zeros reach no loss."""
    cfg, tok, decode, raws = parts
    cfg.model.text.vocab_size = tok.vocab_size
    batch = Collator(cfg.model, cfg.tasks, tok, seed=0)([decode(without(r, lacks)) for r in raws[:6]], 0)
    net = small_pretrainer(cfg)
    out = net(batch)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    tower = net.model.audio if lacks == "audio" else net.model.vision
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    assert all(float(p.grad.abs().max()) == 0.0 for p in tower.parameters())
    other = net.model.vision if lacks == "audio" else net.model.audio
    assert any(float(p.grad.abs().max()) > 0 for p in other.parameters())
