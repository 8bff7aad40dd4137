"""model.<part>.qk_norm: cosine attention with a learned per-head scale."""

import math

import torch

from opt_scale.model.layers import QK_SCALE_INIT, CrossAttention, SelfAttention


def reference(q, k, v, scale, key_lengths):
    """softmax(scale * cos(q, k)) v, keys past each row's length masked."""
    logits = scale[:, None, None] * torch.nn.functional.normalize(q, dim=-1) @ \
        torch.nn.functional.normalize(k, dim=-1).transpose(-1, -2)
    mask = torch.arange(k.shape[2])[None, :] >= key_lengths[:, None]
    logits = logits.masked_fill(mask[:, None, None, :], float("-inf"))
    return torch.softmax(logits, -1) @ v


def test_self_and_cross_attention_are_scaled_cosine_attention():
    torch.manual_seed(0)
    D, H = 16, 2
    attn = SelfAttention(D, H, qk_norm=True)
    with torch.no_grad():
        attn.qk_norm.log_scale.copy_(torch.tensor([math.log(3.0), math.log(30.0)]))
    x, lengths = torch.randn(2, 7, D), torch.tensor([7, 4])
    q, k, v = attn.qkv(x).view(2, 7, 3, H, D // H).permute(2, 0, 3, 1, 4)
    expected = attn.out(reference(q, k, v, torch.tensor([3.0, 30.0]), lengths).transpose(1, 2).reshape(2, 7, D))
    torch.testing.assert_close(attn(x, key_lengths=lengths), expected, rtol=1e-5, atol=1e-6)

    cross = CrossAttention(D, H, memory_hidden=12, qk_norm=True)
    memory, mlen = torch.randn(2, 5, 12), torch.tensor([5, 2])
    q = cross.q(x).view(2, 7, H, D // H).transpose(1, 2)
    k, v = cross.kv(memory).view(2, 5, 2, H, D // H).permute(2, 0, 3, 1, 4)
    expected = cross.out(reference(q, k, v, torch.full((H,), QK_SCALE_INIT), mlen).transpose(1, 2).reshape(2, 7, D))
    torch.testing.assert_close(cross(x, memory, mlen), expected, rtol=1e-5, atol=1e-6)


def test_the_scale_is_learned_and_clamped():
    attn = SelfAttention(16, 2, qk_norm=True)
    x = torch.randn(2, 5, 16)
    attn(x).pow(2).sum().backward()
    assert attn.qk_norm.log_scale.grad is not None and attn.qk_norm.log_scale.grad.abs().sum() > 0
    with torch.no_grad():
        attn.qk_norm.log_scale.fill_(20.0)  # e^20: far past the cap
    q, _ = attn.qk_norm(torch.ones(1, 2, 1, 8))
    torch.testing.assert_close(q.norm(dim=-1), torch.full((1, 2, 1), 100.0))
