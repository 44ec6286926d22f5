"""The token Transformer: masks, rotary positions, time conditioning and the exact KV cache."""

import pytest
import torch

from genspace.nets.transformer import KVCache, Transformer, TransformerConfig, attention_mask

V = 11


def make_net(time_conditioning=False, seed=0, std=0.2, **kw):
    """A float64 dim-32, depth-2 net with every parameter random (so adaLN gates and attention matter)."""
    torch.manual_seed(seed)
    cfg = TransformerConfig(vocab_size=V, dim=32, depth=2, n_heads=4, time_conditioning=time_conditioning, **kw)
    net = Transformer(cfg).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
    return net.eval()


def tokens(b, n, seed=1):
    return torch.randint(0, V, (b, n), generator=torch.Generator().manual_seed(seed))


def test_config_validation():
    with pytest.raises(ValueError, match="n_heads"):
        TransformerConfig(dim=30, n_heads=4)
    with pytest.raises(ValueError, match="n_heads"):
        TransformerConfig(dim=12, n_heads=4)  # head width 3 is odd
    with pytest.raises(ValueError, match="dropout"):
        TransformerConfig(dropout=1.0)
    with pytest.raises(ValueError, match="TransformerConfig"):
        Transformer({"dim": 32})


def test_time_forms_agree_and_output_slice():
    net = make_net(time_conditioning=True)
    x = tokens(3, 7)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    out = net(x, t)
    assert out.shape == (3, 7, V)
    torch.testing.assert_close(net(x, t[:, None].expand(3, 7)), out, rtol=0, atol=1e-12)
    torch.testing.assert_close(net(x, 0.5)[1], out[1], rtol=0, atol=1e-12)
    torch.testing.assert_close(net(x, t, output_slice=slice(2, 5)), out[:, 2:5], rtol=0, atol=1e-12)
    # per-token times act per token: changing the time of token 6 changes every row (bidirectional)
    tt = t[:, None].expand(3, 7).clone()
    tt[:, 6] = 0.0
    assert (net(x, tt) - out).abs().amax() > 1e-6
    with pytest.raises(ValueError, match="time-conditioned"):
        net(x)
    with pytest.raises(ValueError, match="t must be"):
        net(x, torch.zeros(3, 6))


def test_adaln_zero_init_ignores_time_until_trained():
    torch.manual_seed(0)
    net = Transformer(TransformerConfig(vocab_size=V, dim=32, depth=2, n_heads=4, time_conditioning=True)).double()
    x = tokens(2, 5)
    a, b = net(x, torch.tensor([0.0, 0.0])), net(x, torch.tensor([0.7, 1.0]))
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # zero modulations: every block is x + 0·f(x) at init
    with torch.no_grad():
        net.blocks[0].adaLN.weight.normal_(0, 0.1)
    assert (net(x, torch.tensor([0.0, 0.0])) - net(x, torch.tensor([0.7, 1.0]))).abs().amax() > 1e-6


def test_attention_mask_matches_definition():
    q = torch.tensor([[3, 4, 5, 6]])
    k = torch.tensor([[0, 1, 2, 3, 4, 5, 6]])
    causal = attention_mask("causal", q, k)[0, 0]
    block = attention_mask("block-causal", q, k, block_size=3)[0, 0]
    for i, p in enumerate(q[0].tolist()):
        for j, r in enumerate(k[0].tolist()):
            assert bool(causal[i, j]) == (r <= p)
            assert bool(block[i, j]) == (r // 3 <= p // 3)
    assert attention_mask("bidirectional", q, k) is None
    with pytest.raises(ValueError, match="block_size"):
        attention_mask("block-causal", q, k)
    with pytest.raises(ValueError, match="unknown attn_mask"):
        attention_mask("sliding", q, k)


def test_causal_mask_hides_the_future():
    net = make_net()
    x = tokens(2, 8)
    y = x.clone()
    y[:, 5] = (y[:, 5] + 1) % V
    a, b = net(x, attn_mask="causal"), net(y, attn_mask="causal")
    torch.testing.assert_close(a[:, :5], b[:, :5], rtol=0, atol=0)
    assert (a[:, 5:] - b[:, 5:]).abs().amax(-1).min() > 1e-8


def test_block_causal_mask_is_bidirectional_within_blocks_only():
    net = make_net()
    x = tokens(2, 9)
    y = x.clone()
    y[:, 4] = (y[:, 4] + 1) % V  # block 1 of size 3 is positions 3..5
    a, b = net(x, attn_mask="block-causal", block_size=3), net(y, attn_mask="block-causal", block_size=3)
    torch.testing.assert_close(a[:, :3], b[:, :3], rtol=0, atol=0)
    assert (a[:, 3:] - b[:, 3:]).abs().amax(-1).min() > 1e-8  # the whole block (3 before 4 too) and later ones


def test_rope_depends_on_relative_positions_only():
    net = make_net()
    x = tokens(2, 6)
    base = net(x)
    torch.testing.assert_close(net(x, positions=torch.arange(6) + 17), base, rtol=0, atol=1e-10)
    # but positions matter: reversing the order of positions changes the output
    assert (net(x, positions=torch.arange(5, -1, -1)) - base).abs().amax() > 1e-6


@torch.no_grad()
def test_rope_table_equals_the_direct_angles_bit_for_bit():
    # default positions read the cached cos/sin table, explicit ones compute rope_angles: same bits,
    # with and without a cache offset, in float64 and float32
    for dtype in (torch.float64, torch.float32):
        net = make_net().to(dtype)
        x = tokens(2, 9)
        assert torch.equal(net(x), net(x, positions=torch.arange(9)))
        cache_a, cache_b = net.new_cache(), net.new_cache()
        net(x[:, :4], cache=cache_a)
        net(x[:, :4], positions=torch.arange(4), cache=cache_b)
        a = net(x[:, 4:], cache=cache_a, attn_mask="causal")
        b = net(x[:, 4:], positions=torch.arange(4, 9), cache=cache_b, attn_mask="causal")
        assert torch.equal(a, b)
    assert "_rope_tables" not in "".join(net.state_dict())


def test_per_row_positions_equal_separate_calls():
    net = make_net()
    x = tokens(2, 5)
    pos = torch.stack([torch.arange(5), torch.tensor([0, 2, 4, 6, 8])])  # (B, N)
    out = net(x, positions=pos, attn_mask="causal")
    for i in range(2):
        torch.testing.assert_close(out[i], net(x[i : i + 1], positions=pos[i], attn_mask="causal")[0], rtol=0, atol=1e-12)


def test_tensor_masks_equal_string_masks():
    net = make_net()
    x = tokens(2, 6)
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    ref = net(x, attn_mask="causal")
    torch.testing.assert_close(net(x, attn_mask=causal), ref, rtol=0, atol=1e-12)
    additive = torch.zeros(6, 6, dtype=torch.float64).masked_fill(~causal, float("-inf"))
    torch.testing.assert_close(net(x, attn_mask=additive), ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(net(x, attn_mask=causal.expand(2, 6, 6)), ref, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="attn_mask tensor"):
        net(x, attn_mask=causal[:5])


@pytest.mark.parametrize("time_conditioning", [False, True])
def test_incremental_causal_decoding_matches_the_full_pass(time_conditioning):
    net = make_net(time_conditioning)
    x = tokens(3, 10)
    t = torch.rand(3, 10, generator=torch.Generator().manual_seed(2), dtype=torch.float64) if time_conditioning else None
    with torch.no_grad():
        full = net(x, t, attn_mask="causal")
        cache = net.new_cache()
        outs, start = [], 0
        for size in (3, 1, 1, 2, 1, 2):  # chunks of several sizes, as a prompt then single tokens
            tt = None if t is None else t[:, start : start + size]
            outs.append(net(x[:, start : start + size], tt, attn_mask="causal", cache=cache))
            start += size
    assert len(cache) == 10
    torch.testing.assert_close(torch.cat(outs, dim=1), full, rtol=0, atol=1e-12)


@pytest.mark.parametrize("time_conditioning", [False, True])
def test_cached_block_calls_match_the_uncached_prefix(time_conditioning):
    """Block diffusion: clean blocks in the cache, the noisy block attends to cache + itself."""
    net = make_net(time_conditioning)
    bs, n_blocks = 3, 4
    clean = tokens(2, bs * n_blocks, seed=3)
    noisy = tokens(2, bs * n_blocks, seed=4)
    with torch.no_grad():
        cache = net.new_cache(capacity=2)  # small hint: the buffers must grow
        for b in range(n_blocks):
            lo, hi = b * bs, (b + 1) * bs
            prefix = torch.cat([clean[:, :lo], noisy[:, lo:hi]], dim=1)
            t_pre = torch.zeros(prefix.shape, dtype=torch.float64)
            t_pre[:, lo:] = 0.3 + 0.1 * b
            ref = net(prefix, t_pre if time_conditioning else None, attn_mask="block-causal", block_size=bs)[:, lo:]
            # read-only call on the noisy block
            got = net(noisy[:, lo:hi], t_pre[:, lo:] if time_conditioning else None, cache=cache, commit=0)
            torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)
            assert len(cache) == lo
            # fused call: [clean block b ; noisy block b+1], committing the clean block only
            if b + 1 < n_blocks:
                nxt = torch.cat([clean[:, lo:hi], noisy[:, hi : hi + bs]], dim=1)
                t_n = torch.zeros(nxt.shape, dtype=torch.float64)
                t_n[:, bs:] = 0.3 + 0.1 * (b + 1)
                tn = t_n if time_conditioning else None
                fused = net(nxt, tn, attn_mask="block-causal", block_size=bs, cache=cache, commit=bs)
                prefix2 = torch.cat([clean[:, :hi], noisy[:, hi : hi + bs]], dim=1)
                t2 = torch.zeros(prefix2.shape, dtype=torch.float64)
                t2[:, hi:] = 0.3 + 0.1 * (b + 1)
                ref2 = net(prefix2, t2 if time_conditioning else None, attn_mask="block-causal", block_size=bs)[:, lo:]
                torch.testing.assert_close(fused, ref2, rtol=0, atol=1e-12)
                assert len(cache) == hi


def test_truncate_rolls_back_exactly():
    net = make_net()
    x = tokens(2, 8)
    with torch.no_grad():
        full = net(x, attn_mask="causal")
        cache = KVCache()
        net(x[:, :5], attn_mask="causal", cache=cache)
        net(tokens(2, 3, seed=9), attn_mask="causal", cache=cache)  # a wrong continuation
        assert len(cache) == 8
        cache.truncate(5)
        torch.testing.assert_close(cache.positions, torch.arange(5)[None])
        out = net(x[:, 5:], attn_mask="causal", cache=cache)
    torch.testing.assert_close(out, full[:, 5:], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="truncate"):
        cache.truncate(9)


def test_cache_errors():
    net = make_net()
    x = tokens(2, 4)
    cache = net.new_cache()
    with pytest.raises(ValueError, match="inference"):
        net(x, cache=cache)  # autograd on
    with torch.no_grad():
        net(x, cache=cache)
        with pytest.raises(ValueError, match="batch"):
            net(tokens(3, 2), cache=cache)
        with pytest.raises(ValueError, match="commit"):
            net(x[:, :2], cache=cache, commit=3)
    with pytest.raises(ValueError, match="max_len"):
        make_net(max_len=5)(tokens(1, 6))


def test_tied_embeddings_and_gradients_reach_every_parameter():
    net = make_net(time_conditioning=True, tie_embeddings=True).train()
    assert net.head.weight is net.embed.weight
    x = tokens(2, 6)
    net(x, torch.tensor([0.2, 0.8]), attn_mask="causal").square().sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
