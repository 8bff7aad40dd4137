"""Captioning (greedy, beam) and text-to-image with KV caches."""

import itertools

import pytest
import torch

from opt_scale.model.config import TransformerShape
from opt_scale.model.decoders import CausalDecoder
from opt_scale.model.generation import OPTGenerator, beam_search, greedy

from .model_fixtures import demo_batch, small_config, small_pretrainer


def tiny_decoder(vocab=6, max_len=6, seed=0, qk_norm=False):
    torch.manual_seed(seed)
    dec = CausalDecoder(TransformerShape(layers=2, hidden=16, heads=2, ffn=32, qk_norm=qk_norm), vocab, max_len,
                        16).eval()
    with torch.no_grad():  # a peaky distribution makes search order matter
        dec.tokens.weight.mul_(20)
    memory = torch.randn(2, 5, 16)
    return dec, memory, torch.tensor([5, 3])


def logprob(dec, memory, lengths, seq, bos):
    """Log-probability of ``seq`` (including its eos) without any cache."""
    tokens = torch.tensor([[bos] + seq])
    h = dec.hidden(tokens[:, :-1], memory, lengths)
    logp = torch.log_softmax(h @ dec.tokens.weight.t() + dec.out_bias, -1)
    return float(logp[0, torch.arange(len(seq)), torch.tensor(seq)].sum())


@pytest.mark.parametrize("qk_norm", [False, True])
@torch.no_grad()
def test_greedy_with_kv_cache_equals_recomputing_the_prefix(qk_norm):
    dec, memory, lengths = tiny_decoder(vocab=9, max_len=8, qk_norm=qk_norm)
    bos, eos = 7, 8
    cached = greedy(dec, memory, lengths, bos, eos, max_len=8)
    for b in range(2):
        seq = [bos]
        for _ in range(7):
            h = dec.hidden(torch.tensor([seq]), memory[b:b + 1], lengths[b:b + 1])
            nxt = int((h[0, -1] @ dec.tokens.weight.t() + dec.out_bias).argmax())
            seq.append(nxt)
            if nxt == eos:
                break
        expected = seq[1:]
        expected = expected[: expected.index(eos)] if eos in expected else expected
        assert cached[b] == expected


@torch.no_grad()
def test_beam_search_finds_the_exhaustive_optimum():
    dec, memory, lengths = tiny_decoder(vocab=6, max_len=4)
    bos, eos = 4, 5
    for b in range(2):
        m, n = memory[b:b + 1], lengths[b:b + 1]
        best, best_lp = None, float("-inf")
        for k in range(1, 4):  # sequences of k generated tokens, ending at eos or at max_len - 1
            for body in itertools.product(range(6), repeat=k):
                body = list(body)
                if eos in body[:-1]:
                    continue
                lp = logprob(dec, m, n, body, bos)
                if (body[-1] == eos or k == 3) and lp > best_lp:
                    best, best_lp = body, lp
        found = beam_search(dec, m, n, bos, eos, max_len=4, beam=6 ** 3, length_penalty=0.0)[0]
        assert found == [t for t in best if t != eos]


@torch.no_grad()
def test_beam_of_one_is_greedy():
    dec, memory, lengths = tiny_decoder(vocab=9, max_len=8, seed=3)
    assert beam_search(dec, memory, lengths, 7, 8, 8, beam=1) == greedy(dec, memory, lengths, 7, 8, 8)


@torch.no_grad()
def test_captions_from_any_modality_and_text_to_image(demo_shards, demo_tokenizer):
    from opt_scale.data.tokenizer import Tokenizer
    tok = Tokenizer(str(demo_tokenizer))
    cfg = small_config(tok.vocab_size)
    gen = OPTGenerator(small_pretrainer(cfg), tok)
    batch = demo_batch(demo_shards, demo_tokenizer, cfg, batch_size=3)
    for kwargs in ({"pixels": batch["pixels"]}, {"mel": batch["mel"], "mel_len": batch["mel_len"]},
                   {"pixels": batch["pixels"], "mel": batch["mel"], "mel_len": batch["mel_len"]}):
        for beam in (1, 3):
            caps = gen.caption(**kwargs, beam=beam, max_len=10)
            assert len(caps) == 3 and all(isinstance(c, str) for c in caps)
    images = gen.text_to_image(["a red circle", "a blue square"], top_k=5,
                               generator=torch.Generator().manual_seed(0))
    again = gen.text_to_image(["a red circle", "a blue square"], top_k=5,
                              generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 64, 64) and images.dtype == torch.uint8
    assert torch.equal(images, again)


def teacher_forced_argmax(dec, memory, lengths, bos: int, generated: list[int]) -> list[int]:
    """The decoder's argmax after each prefix of ``[bos] + generated``, in one
    causal pass without any cache."""
    h = dec.hidden(torch.tensor([[bos] + generated]), memory, lengths)
    return (h[0] @ dec.tokens.weight.t() + dec.out_bias).argmax(-1).tolist()


@torch.no_grad()
def test_captions_of_a_trained_model_are_its_greedy_argmax_and_follow_the_image(demo_shards, demo_tokenizer):
    from .trained_small import train_small
    run = train_small(demo_shards, demo_tokenizer)
    gen, tok = OPTGenerator(run.net, run.tokenizer), run.tokenizer
    pixels = demo_batch(demo_shards, demo_tokenizer, small_config(tok.vocab_size), batch_size=8)["pixels"]
    captions = gen.caption(pixels=pixels, max_len=16)
    assert gen.caption(pixels=pixels, max_len=16) == captions  # greedy is deterministic
    assert all(len(c.split()) >= 3 for c in captions), captions  # a trained model says something
    assert len(set(captions)) >= 2, captions  # ... and what depends on the image

    memory, lengths = gen.encode(8, pixels=pixels)
    dec = run.net.text_decoder
    for max_len in (16, 4):
        ids = greedy(dec, memory, lengths, tok.bos_id, tok.eos_id, max_len)
        assert [tok.decode(row) for row in ids] == gen.caption(pixels=pixels, max_len=max_len)
        for b, row in enumerate(ids):
            assert 1 <= len(row) <= max_len - 1 and tok.eos_id not in row  # respects max_len
            expected = teacher_forced_argmax(dec, memory[b:b + 1], lengths[b:b + 1], tok.bos_id, row)
            assert row == expected[:len(row)], b
            if len(row) < max_len - 1:  # stopped early: because eos was the argmax
                assert expected[len(row)] == tok.eos_id, b


@torch.no_grad()
def test_text_to_image_follows_the_prompt_and_the_seed(demo_shards, demo_tokenizer):
    from .trained_small import train_small
    run = train_small(demo_shards, demo_tokenizer)
    gen = OPTGenerator(run.net, run.tokenizer)
    prompts = ["a small red circle on the left", "a large blue square on the right"]
    seeded = lambda s: gen.text_to_image(prompts, top_k=5, generator=torch.Generator().manual_seed(s))  # noqa: E731
    first, again, other = seeded(0), seeded(0), seeded(1)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert not torch.equal(first[0], first[1])  # the two prompts draw different images
    assert first.float().std() > 0.5  # a picture, not a constant
