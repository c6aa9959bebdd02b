"""Attention against a naive softmax(Q K^T / sqrt(d)) V, with padding and causal masks, cross-
attention, the KV cache and rotary embeddings."""

import math

import torch

from strata.nn.attention import KVCache, LayerCache, MultiHeadAttention, causal_mask, padding_mask
from strata.nn.rotary import apply_rotary, rotary_tables


def naive(att: MultiHeadAttention, x, context=None, mask=None):
    """Reference: project, split heads, softmax(Q K^T / sqrt(d) masked) V, merge, project."""
    src = x if context is None else context
    B, T, C = x.shape
    H, D = att.n_heads, att.head_dim
    q = att.q(x).view(B, T, H, D).transpose(1, 2)
    k, v = att.kv(src).chunk(2, dim=-1)
    k = k.view(B, src.shape[1], H, D).transpose(1, 2)
    v = v.view(B, src.shape[1], H, D).transpose(1, 2)
    scores = q @ k.transpose(-2, -1) / math.sqrt(D)  # (B, H, T, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    y = scores.softmax(-1) @ v
    return att.out(y.transpose(1, 2).reshape(B, T, C))


def make(dim=32, heads=4, context_dim=None):
    torch.manual_seed(0)
    return MultiHeadAttention(dim, heads, context_dim=context_dim).eval()


def test_self_attention_matches_naive():
    att = make()
    x = torch.randn(3, 7, 32)
    torch.testing.assert_close(att(x), naive(att, x), atol=1e-5, rtol=1e-5)


def test_causal_matches_naive():
    att = make()
    x = torch.randn(2, 9, 32)
    mask = torch.tril(torch.ones(9, 9, dtype=torch.bool))
    torch.testing.assert_close(att(x, causal=True), naive(att, x, mask=mask), atol=1e-5, rtol=1e-5)


def test_padding_and_causal_masks_match_naive():
    att = make()
    x = torch.randn(3, 6, 32)
    lengths = torch.tensor([6, 4, 1])
    keys = padding_mask(lengths, 6)
    torch.testing.assert_close(att(x, key_mask=keys), naive(att, x, mask=keys[:, None, None, :]),
                               atol=1e-5, rtol=1e-5)
    both = keys[:, None, None, :] & torch.tril(torch.ones(6, 6, dtype=torch.bool))
    torch.testing.assert_close(att(x, key_mask=keys, causal=True), naive(att, x, mask=both), atol=1e-5, rtol=1e-5)


def test_padding_does_not_change_real_positions():
    att = make()
    x = torch.randn(1, 4, 32)
    padded = torch.cat([x, torch.randn(1, 3, 32)], dim=1)
    y = att(padded, key_mask=padding_mask(torch.tensor([4]), 7))[:, :4]
    torch.testing.assert_close(y, att(x), atol=1e-5, rtol=1e-5)


def test_cross_attention_matches_naive_and_caches_keys():
    att = make(context_dim=16)
    x, ctx = torch.randn(2, 5, 32), torch.randn(2, 8, 16)
    keys = padding_mask(torch.tensor([8, 3]), 8)
    ref = naive(att, x, context=ctx, mask=keys[:, None, None, :])
    torch.testing.assert_close(att(x, ctx, key_mask=keys), ref, atol=1e-5, rtol=1e-5)
    cache = LayerCache()
    first = att(x[:, :2], ctx, key_mask=keys, cache=cache)
    second = att(x[:, 2:], ctx, key_mask=keys, cache=cache)
    assert len(cache) == 8  # computed once, not appended again
    torch.testing.assert_close(torch.cat([first, second], 1), ref, atol=1e-5, rtol=1e-5)


def test_kv_cache_one_token_at_a_time_equals_full_causal_pass():
    att = make()
    x = torch.randn(2, 10, 32)
    full = att(x, causal=True)
    cache = LayerCache()
    steps = [att(x[:, :3], causal=True, cache=cache)]  # a prompt of 3, then one token at a time
    steps += [att(x[:, t:t + 1], causal=True, cache=cache) for t in range(3, 10)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
    # Several new tokens against a non-empty cache need the bottom-right causal mask.
    cache = LayerCache()
    a = att(x[:, :4], causal=True, cache=cache)
    b = att(x[:, 4:], causal=True, cache=cache)
    torch.testing.assert_close(torch.cat([a, b], 1), full, atol=1e-5, rtol=1e-5)


def test_cache_reorder_selects_rows():
    cache = KVCache(2)
    cache.self_attn[0].append(torch.arange(3.0).view(3, 1, 1, 1), torch.zeros(3, 1, 1, 1))
    cache.reorder(torch.tensor([2, 2, 0]))
    assert cache.self_attn[0].k.flatten().tolist() == [2.0, 2.0, 0.0]
    assert len(cache) == 1


def test_causal_mask_bottom_right():
    assert causal_mask(2, 4).tolist() == [[True, True, True, False], [True, True, True, True]]


def test_rotary_scores_depend_on_relative_position_only():
    torch.manual_seed(0)
    cos, sin = rotary_tables(8, 64)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(m, n):
        return (apply_rotary(q, cos[m:m + 1], sin[m:m + 1]) * apply_rotary(k, cos[n:n + 1], sin[n:n + 1])).sum()

    torch.testing.assert_close(score(5, 2), score(40, 37), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(score(5, 2), score(5, 4))
    # A rotation keeps the norm.
    torch.testing.assert_close(apply_rotary(q, cos[7:8], sin[7:8]).norm(), q.norm())


def test_the_slow_path_that_records_weights_equals_the_fused_one():
    """record_attention: same outputs as scaled_dot_product_attention (1e-5) for every mask and the
    cache; weights (B, H, T, S) sum to 1 over the keys, 0 at padded keys and above a causal diagonal."""
    from strata.nn.attention import record_attention

    att, cross = make(), make(context_dim=16)
    x, ctx = torch.randn(3, 6, 32), torch.randn(3, 8, 16)
    keys = padding_mask(torch.tensor([6, 4, 1]), 6)
    ctx_keys = padding_mask(torch.tensor([8, 3, 5]), 8)
    calls = [lambda: att(x), lambda: att(x, causal=True), lambda: att(x, key_mask=keys),
             lambda: att(x, key_mask=keys, causal=True), lambda: cross(x, ctx, key_mask=ctx_keys)]
    fast = [f() for f in calls]
    with record_attention(att) as maps, record_attention(cross) as cross_maps:
        slow = [f() for f in calls]
    for a, b in zip(fast, slow):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    full, causal, padded, both = maps[""]
    (crossed,) = cross_maps[""]
    assert full.shape == (3, 4, 6, 6) and crossed.shape == (3, 4, 6, 8)
    for w in (full, causal, padded, both, crossed):
        torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]))
    above = torch.ones(6, 6, dtype=torch.bool).triu(1)
    assert (causal[..., above] == 0).all() and (both[..., above] == 0).all() and (full[..., above] > 0).all()
    assert (padded[1, :, :, 4:] == 0).all() and (padded[2, :, :, 1:] == 0).all()
    assert (crossed[1, :, :, 3:] == 0).all()
    assert att.recorded is None and len(att(x)) == 3  # the context ends: back to the fused kernels

    cache = LayerCache()  # one new token at a time against a cache: one row of weights per step
    with record_attention(att) as maps:
        steps = [att(x[:, :3], causal=True, cache=cache)] + [att(x[:, t:t + 1], causal=True, cache=cache)
                                                              for t in range(3, 6)]
    torch.testing.assert_close(torch.cat(steps, 1), fast[1], atol=1e-5, rtol=1e-5)
    assert [tuple(w.shape[-2:]) for w in maps[""]] == [(3, 3), (1, 4), (1, 5), (1, 6)]
    torch.testing.assert_close(maps[""][-1][:, :, 0], causal[:, :, -1])


def test_record_attention_names_each_layer_of_a_model_and_keeps_its_logits():
    from strata.models.transformer import GPT, GPTConfig
    from strata.nn.attention import record_attention

    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=50, context_size=16, n_layer=2, n_head=2, dim=16)).eval()
    tokens = torch.randint(0, 50, (2, 10))
    fast, _ = gpt(tokens)
    with record_attention(gpt) as maps:
        slow, _ = gpt(tokens)
    torch.testing.assert_close(slow, fast, atol=1e-5, rtol=1e-5)
    assert list(maps) == ["blocks.0.attn", "blocks.1.attn"] and maps["blocks.1.attn"][0].shape == (2, 2, 10, 10)
