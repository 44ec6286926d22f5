"""Masked-diffusion token samplers and the exact token oracle: known answers.

Exactness is tested against the enumerable oracle of ``genspace.discrete.oracle``: sample
distributions are compared with the K^L table by a chi-square test (cells with expected count
< 5 pooled) and by a total-variation bound derived from the sample size n over N cells:
E[TV] ≤ ½·sqrt((N − 1)/n) (Cauchy–Schwarz) and, TV changing by ≤ 1/n per sample, McDiarmid's
P(TV > E[TV] + ε) ≤ exp(−2nε²).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from scipy import stats

from genspace.core.random import StackedGenerator
from genspace.data.sources import CopySource
from genspace.discrete.oracle import TokenDistribution
from genspace.discrete.samplers import (
    bit_reversal_key,
    classifier_free_guidance,
    dilated_scores,
    sample_ancestral,
    sample_first_hitting,
    sample_semi_ar,
    sample_threshold,
    sample_tokens,
    sample_topk,
    token_method_names,
    token_methods,
)

F64 = torch.float64
K, L, MASK = 3, 3, 3  # data ids 0..2, mask id 3
N_SAMPLES = 6000


def tv_bound(n: int, cells: int, delta: float = 1e-3) -> float:
    return 0.5 * math.sqrt((cells - 1) / n) + math.sqrt(math.log(1 / delta) / (2 * n))


def chi2_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    n = counts.sum()
    expected = probs * n
    small = expected < 5
    obs, exp = counts[~small], expected[~small]
    if small.any():
        obs = torch.cat([obs, counts[small].sum()[None]])
        exp = torch.cat([exp, expected[small].sum()[None]])
    stat = float(((obs - exp) ** 2 / exp).sum())
    return float(stats.chi2.sf(stat, len(obs) - 1))


@pytest.fixture(scope="module")
def dist():
    return TokenDistribution.random(K, L, seed=3, scale=1.5)


def product_of_marginals(dist: TokenDistribution) -> torch.Tensor:
    m = dist.posterior_marginals(torch.full((1, L), MASK), MASK)[0]  # (L, K)
    return torch.einsum("a,b,c->abc", m[0], m[1], m[2]).reshape(-1)


def subs(logits: torch.Tensor, x_t: torch.Tensor, mask_id: int) -> torch.Tensor:
    """SUBS log-probs from raw logits (test-local; the official one lives in objectives.py)."""
    logits = logits.to(F64).clone()
    logits[..., mask_id] = -math.inf
    lp = torch.log_softmax(logits, -1)
    own = torch.full_like(lp, -math.inf).scatter_(-1, x_t[..., None], 0.0)
    return torch.where((x_t != mask_id)[..., None], own, lp)


def tiny_net(vocab: int, length: int, mask_id: int, seed: int = 0, d: int = 6):
    """A small random per-row network (token + position embedding, mean mixing over positions,
    time input), element-wise ops only so each row is computed identically in any batch."""
    g = torch.Generator().manual_seed(seed)
    emb, pos = torch.randn(vocab, d, generator=g, dtype=F64), torch.randn(length, d, generator=g, dtype=F64)
    w, tw = torch.randn(d, vocab, generator=g, dtype=F64) * 2, torch.randn(d, generator=g, dtype=F64)

    def fn(x_t, t):
        h = emb[x_t] + pos[: x_t.shape[1]] + t.to(F64)[:, None, None] * tw  # (B, L, d)
        h = h + h.mean(1, keepdim=True)
        logits = (torch.tanh(h)[..., :, None] * w).sum(-2)  # (B, L, V)
        return subs(logits, x_t, mask_id)

    return fn


# ----------------------------------------------------------------------------- the oracle
def test_oracle_posteriors_and_ratios_by_brute_force(dist):
    table = dist.probs.reshape(K, K, K)
    # absorbing posteriors: direct conditioning of the table
    x_t = torch.tensor([[MASK, 1, MASK], [2, MASK, 0], [MASK, MASK, MASK], [1, 0, 2]])
    post = dist.posterior_marginals(x_t, MASK)
    for b, row in enumerate(x_t.tolist()):
        sel = table.clone()
        for pos, v in enumerate(row):
            if v != MASK:
                idx = [slice(None)] * L
                keep = torch.zeros(K, dtype=torch.bool)
                keep[v] = True
                idx[pos] = ~keep
                sel[tuple(idx)] = 0
        sel = sel / sel.sum()
        for pos in range(L):
            other = tuple(a for a in range(L) if a != pos)
            assert torch.allclose(post[b, pos], sel.sum(other), atol=1e-12)
    # uniform ratios: p_t by applying the token kernel α I + (1 − α)/K along every axis
    t = 0.37
    a = 1 - t
    kern = a * torch.eye(K, dtype=F64) + (1 - a) / K
    pt = table
    for axis in range(L):
        pt = torch.movedim(torch.tensordot(torch.movedim(pt, axis, -1), kern, dims=1), -1, axis)
    states = torch.tensor(list(itertools.product(range(K), repeat=L)))
    ratios = dist.uniform_ratios(states, t, "linear")
    for n, s in enumerate(states.tolist()):
        for pos in range(L):
            for y in range(K):
                s2 = list(s)
                s2[pos] = y
                assert math.isclose(float(ratios[n, pos, y]), float(pt[tuple(s2)] / pt[tuple(s)]), rel_tol=1e-10)
    # uniform posterior p(x0 | x_t) ∝ p(x0) Π q_t(x_t | x0), marginalized
    post_u = dist.uniform_posterior_marginals(states[:5], t, "linear")
    q = torch.where(dist.sequences[None] == states[:5, None], a + (1 - a) / K, (1 - a) / K).prod(-1)  # (5, N)
    w = dist.probs * q
    w = w / w.sum(-1, keepdim=True)
    assert torch.allclose(post_u, torch.einsum("bn,nlk->blk", w, dist._onehot), atol=1e-12)
    with pytest.raises(ValueError):
        dist.posterior_marginals(torch.tensor([[0, 5, 1]]), MASK)
    with pytest.raises(ValueError):
        TokenDistribution(torch.ones(40), 4, 3)  # 40 ≠ 4^3


# ----------------------------------------------------------------------------- exactness
def test_first_hitting_is_exact_and_parallel_unmasking_is_not(dist):
    fn = dist.log_probs_fn(MASK)
    n = N_SAMPLES
    x, info = sample_first_hitting(fn, (n, L), mask_id=MASK, generator=torch.Generator().manual_seed(0))
    assert info["nfe"] == L  # one call per token
    bound = tv_bound(n, K**L)
    assert chi2_pvalue(dist.histogram(x), dist.probs) > 1e-3
    assert dist.total_variation(x) < bound
    # unmasking all tokens at once from the factorized marginals (ancestral with one step) samples
    # the product of the marginals, not the joint: the table is strongly correlated
    prod = product_of_marginals(dist)
    assert 0.5 * float((prod - dist.probs).abs().sum()) > 0.3
    xp, info_p = sample_ancestral(fn, (n, L), mask_id=MASK, steps=1, generator=torch.Generator().manual_seed(1))
    assert info_p["nfe"] == 1
    assert chi2_pvalue(dist.histogram(xp), prod) > 1e-3  # exactly the product
    assert chi2_pvalue(dist.histogram(xp), dist.probs) < 1e-12
    assert dist.total_variation(xp) > 0.3 - bound
    # top-k with a random order and one token per step is also exact (chain rule in a random order)
    xr, _ = sample_topk(fn, (n, L), mask_id=MASK, steps=L, order="random", generator=torch.Generator().manual_seed(2))
    assert chi2_pvalue(dist.histogram(xr), dist.probs) > 1e-3
    # so is the fixed dilated order (the chain rule in the order 0, 2, 1)
    xd, info_d = sample_topk(fn, (n, L), mask_id=MASK, steps=L, order="dilated", generator=torch.Generator().manual_seed(4))
    assert info_d["nfe"] == L and chi2_pvalue(dist.histogram(xd), dist.probs) > 1e-3
    # and so is left-to-right semi-AR with blocks of one token (exact autoregressive sampling)
    xs, info_s = sample_semi_ar(fn, (n, L), mask_id=MASK, block_length=1, steps=L, generator=torch.Generator().manual_seed(3))
    assert info_s["nfe"] == L
    assert chi2_pvalue(dist.histogram(xs), dist.probs) > 1e-3


def test_ancestral_converges_with_steps(dist):
    fn = dist.log_probs_fn(MASK)
    n = N_SAMPLES
    tvs = []
    for steps in (2, 8, 64):
        x, _ = sample_ancestral(fn, (n, L), mask_id=MASK, steps=steps, time_independent=True, generator=torch.Generator().manual_seed(steps))
        tvs.append(dist.total_variation(x))
    assert tvs[0] > tvs[1] > tvs[2]
    assert tvs[2] < tv_bound(n, K**L) and tvs[0] > 0.15


def test_temperature_tempers_the_token_distribution():
    # L = 1: every sampler draws one token from p^(1/τ) (normalized)
    p = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=F64)
    one = TokenDistribution(p, 4, 1)
    fn = one.log_probs_fn(4)
    tau = 0.5
    target = p ** (1 / tau) / (p ** (1 / tau)).sum()
    n = 4000
    for sampler, kw in ((sample_ancestral, {"steps": 3}), (sample_first_hitting, {}), (sample_topk, {"steps": 1})):
        x, _ = sampler(fn, (n, 1), mask_id=4, temperature=tau, generator=torch.Generator().manual_seed(5), **kw)
        counts = torch.bincount(x[:, 0], minlength=4).to(F64)
        assert chi2_pvalue(counts, target) > 1e-3
        assert chi2_pvalue(counts, p) < 1e-10
    x0, _ = sample_topk(fn, (8, 1), mask_id=4, steps=1, temperature=0.0, generator=torch.Generator().manual_seed(5))
    assert (x0 == 0).all()  # τ = 0: argmax


# ----------------------------------------------------------------------------- caching and NFE
def test_ancestral_caching_skips_calls_without_changing_samples(dist):
    fn = dist.log_probs_fn(MASK)
    x_init = torch.full((2, L), MASK)
    changed = []
    x_c, info_c = sample_ancestral(
        fn, x_init, mask_id=MASK, steps=40, time_independent=True, generator=torch.Generator().manual_seed(7),
        callback=lambda d: changed.append(d["x"].clone()),
    )
    x_n, info_n = sample_ancestral(fn, x_init, mask_id=MASK, steps=40, generator=torch.Generator().manual_seed(7))
    assert torch.equal(x_c, x_n)  # reuse of a time-independent output changes nothing
    assert info_n["nfe"] == info_n["steps"] == len(changed)  # one call per step (it stops once all are unmasked)
    # a call happens at step 0 and after every step that changed a token (while masks remain)
    states = [x_init] + changed
    expected = 1 + sum(
        1 for i in range(1, len(changed)) if not torch.equal(states[i], states[i - 1]) and (states[i] == MASK).any()
    )
    assert info_c["nfe"] == expected < len(changed) // 2


def test_threshold_nfe_adapts():
    point = torch.zeros(K**L, dtype=F64)
    point[5] = 1.0  # a deterministic sequence: every token certain after any context
    det = TokenDistribution(point, K, L)
    x, info = sample_threshold(det.log_probs_fn(MASK), (4, L), mask_id=MASK, threshold=0.9, generator=torch.Generator().manual_seed(0))
    assert info["nfe"] == 1 and (x == det.sequences[5]).all()
    # τ = 1 can never be exceeded: one token per call
    unif = TokenDistribution(torch.ones(K**L), K, L)
    x, info = sample_threshold(unif.log_probs_fn(MASK), (4, L), mask_id=MASK, threshold=1.0, generator=torch.Generator().manual_seed(0))
    assert info["nfe"] == L
    _, info = sample_threshold(unif.log_probs_fn(MASK), (4, L), mask_id=MASK, threshold=0.0, generator=torch.Generator().manual_seed(0))
    assert info["nfe"] == 1


# ----------------------------------------------------------------------------- schedules, orders, blocks
def test_topk_counts_and_blocks():
    fn = tiny_net(6, 12, 5)
    counts = []
    _, info = sample_topk(fn, (3, 12), mask_id=5, steps=4, generator=torch.Generator().manual_seed(0),
                          callback=lambda d: counts.append(d["unmasked"].sum(-1).tolist()))
    assert info["nfe"] == 4 and counts == [[3, 3, 3]] * 4  # linear: 12 tokens / 4 steps
    counts = []
    sample_topk(fn, (1, 12), mask_id=5, steps=5, schedule="cosine", generator=torch.Generator().manual_seed(0),
                callback=lambda d: counts.append(d["unmasked"].sum().item()))
    # cumulative ⌈12·cos(π(1 − j/5)/2)⌉ = ⌈12 sin(πj/10)⌉: 4, 8, 10, 12, 12
    assert counts == [4, 4, 2, 2]  # the block is done after 4 steps: no empty fifth call
    assert sum(counts) == 12
    # semi-AR: a prompt of 2 tokens, then 3 blocks of 4, 6 steps (2 per block), left to right
    x_init = torch.full((2, 14), 5)
    x_init[:, :2] = torch.tensor([1, 4])
    chosen = []
    x, info = sample_semi_ar(fn_pad := tiny_net(6, 14, 5), x_init, mask_id=5, block_length=4, steps=6,
                             generator=torch.Generator().manual_seed(1), callback=lambda d: chosen.append(d["unmasked"].clone()))
    assert info["nfe"] == 6 and (x != 5).all() and (x[:, :2] == x_init[:, :2]).all()
    for step, c in enumerate(chosen):
        block = step // 2
        lo, hi = 2 + 4 * block, 2 + 4 * (block + 1)
        assert c[:, lo:hi].sum(-1).tolist() == [2, 2] and c.sum().item() == 4
    with pytest.raises(ValueError):
        sample_semi_ar(fn_pad, x_init, mask_id=5, block_length=4, steps=2)  # fewer steps than blocks
    # threshold inside blocks: every call unmasks inside the leftmost unfinished block only
    chosen = []
    sample_semi_ar(fn_pad, x_init, mask_id=5, block_length=4, rule="threshold", threshold=0.5,
                   generator=torch.Generator().manual_seed(1), callback=lambda d: chosen.append(d["unmasked"].clone()))
    for c in chosen:
        for row in c:
            blocks = {(int(p) - 2) // 4 for p in row.nonzero()}
            assert len(blocks) <= 1


def test_orders_pick_their_most_confident_position():
    # three masked positions with fixed distributions over 5 data tokens (mask id 5):
    #   pos 0 [.64,.30,.02,.02,.02]: highest top probability
    #   pos 1 [.60,.10,.10,.10,.10]: largest margin top1 − top2
    #   pos 2 [.55,.45,0,0,0]:       lowest entropy
    table = torch.tensor(
        [[0.64, 0.30, 0.02, 0.02, 0.02], [0.60, 0.10, 0.10, 0.10, 0.10], [0.55, 0.45, 0.0, 0.0, 0.0]], dtype=F64
    )

    def fn(x_t, t):
        logits = torch.cat([table.log(), torch.zeros(3, 1, dtype=F64)], -1).expand(x_t.shape[0], 3, 6)
        return subs(logits, x_t, 5)

    for order, first in (("low-confidence", 0), ("margin", 1), ("entropy", 2)):
        picks = []
        sample_topk(fn, (2, 3), mask_id=5, steps=3, order=order, temperature=0.0, generator=torch.Generator().manual_seed(0),
                    callback=lambda d: picks.append(d["unmasked"].clone()))
        assert picks[0].sum(-1).tolist() == [1, 1] and picks[0][:, first].all(), order
    firsts = []
    sample_topk(fn, (600, 3), mask_id=5, steps=3, order="random", generator=torch.Generator().manual_seed(0),
                callback=lambda d: firsts.append(d["unmasked"].clone()))
    counts = firsts[0].sum(0).to(F64)
    assert chi2_pvalue(counts, torch.full((3,), 1 / 3, dtype=F64)) > 1e-3


def test_bit_reversal_order():
    order = lambda n: torch.argsort(bit_reversal_key(torch.arange(n))).tolist()  # noqa: E731
    assert order(1) == [0] and order(2) == [0, 1]
    assert order(8) == [0, 4, 2, 6, 1, 5, 3, 7]
    assert order(6) == [0, 4, 2, 1, 5, 3]  # 8's order without 6 and 7
    for n in range(1, 70):
        o = order(n)
        assert sorted(o) == list(range(n))  # a permutation
        assert o == [i for i in order(128) if i < n]  # the restriction of a longer span's order
        # its first 2^j positions (2^j ≤ n) are a grid of stride 2^(⌈log2 n⌉ − j): as spread as can be
        bits = max(1, (n - 1).bit_length())
        for j in range(bits + 1):
            if 2**j <= n and 2 ** (bits - j) * (2**j - 1) < n:
                assert sorted(o[: 2**j]) == list(range(0, 2**bits, 2 ** (bits - j)))[: 2**j]
    # scores: higher first, exact in float64, and the bit count does not change the order
    x = torch.arange(1000)
    assert torch.equal(torch.argsort(-dilated_scores(x)), torch.argsort(bit_reversal_key(x)))
    assert bit_reversal_key(torch.tensor([0, 1, 2, 3])).tolist() == [0, 2, 1, 3]  # 2 bits
    assert bit_reversal_key(torch.tensor([0, 1, 2, 3, 8])).tolist() == [0, 8, 4, 12, 1]  # 4 bits: the same keys × 4
    with pytest.raises(ValueError, match="positions in"):
        bit_reversal_key(torch.tensor([-1, 2]))


def test_dilated_order_reveals_spread_positions():
    fn = tiny_net(6, 16, 5)
    picks = []
    x, info = sample_topk(fn, (2, 16), mask_id=5, steps=4, order="dilated", generator=torch.Generator().manual_seed(0),
                          callback=lambda d: picks.append(d["unmasked"][0].nonzero().flatten().tolist()))
    assert info["nfe"] == 4 and (x != 5).all()
    assert picks == [[0, 4, 8, 12], [2, 6, 10, 14], [1, 5, 9, 13], [3, 7, 11, 15]]  # never neighbours in one step
    # counted from the first masked position (after a prompt of 3), and within each semi-AR block
    x_init = torch.full((1, 16), 5)
    x_init[:, :3] = torch.tensor([0, 1, 2])
    picks = []
    sample_topk(fn, x_init, mask_id=5, steps=4, order="dilated", generator=torch.Generator().manual_seed(0),
                callback=lambda d: picks.append(d["unmasked"][0].nonzero().flatten().tolist()))
    # 13 positions 0..12 from the prompt on, counts 4, 3, 3, 3; the order is 0, 8, 4, 12, 2, 10, 6, 1, 9, 5, 3, 11, 7
    assert [[p - 3 for p in step] for step in picks] == [[0, 4, 8, 12], [2, 6, 10], [1, 5, 9], [3, 7, 11]]
    picks = []
    sample_semi_ar(fn, (1, 16), mask_id=5, block_length=8, steps=4, order="dilated", generator=torch.Generator().manual_seed(0),
                   callback=lambda d: picks.append(d["unmasked"][0].nonzero().flatten().tolist()))
    assert picks == [[0, 2, 4, 6], [1, 3, 5, 7], [8, 10, 12, 14], [9, 11, 13, 15]]


def test_dilated_order_beats_random_order_on_a_sticky_chain():
    """Several tokens per step are drawn independently from their marginals; the error this adds
    is their dependence given the revealed tokens, largest for neighbours on a sticky Markov
    chain (K = 2, L = 12, P(stay) = 0.9). Driven by the exact denoiser, the dilated order (never
    two neighbours in one step) gives samples of lower exact NLL than the random order with 3
    and 6 steps (with one token per step both are exact: tested above)."""
    k, length, stay = 2, 12, 0.9
    seqs = torch.tensor(list(itertools.product(range(k), repeat=length)))
    same = (seqs[:, 1:] == seqs[:, :-1]).sum(-1)
    logp = -math.log(k) + same * math.log(stay) + (length - 1 - same) * math.log(1 - stay)
    chain = TokenDistribution(logp.exp().to(F64), k, length)
    fn = chain.log_probs_fn(k)
    h = float(-(logp.exp() * logp).sum())

    def nll(order, steps, seed):
        x, _ = sample_topk(fn, (4000, length), mask_id=k, steps=steps, order=order, generator=torch.Generator().manual_seed(seed))
        v = -chain.log_prob(x)
        return float(v.mean()), float(v.std()) / math.sqrt(len(v))

    for steps in (3, 6):
        (mr, sr), (md, sd) = nll("random", steps, 1), nll("dilated", steps, 2)
        assert md + 4 * math.hypot(sr, sd) < mr, (steps, mr, md)
        assert md > h + 4 * sd  # still above the entropy: parallel steps cost something


# ----------------------------------------------------------------------------- conditions and randomness
ALL = [
    ("ancestral", {"steps": 5}),
    ("ancestral", {"steps": 5, "time_independent": True}),
    ("first-hitting", {}),
    ("top-k", {"steps": 4, "order": "low-confidence"}),
    ("top-k", {"steps": 4, "order": "random"}),
    ("top-k", {"steps": 4, "order": "margin"}),
    ("top-k", {"steps": 4, "order": "entropy"}),
    ("top-k", {"steps": 4, "order": "dilated"}),
    ("threshold", {"threshold": 0.3}),
    ("semi-ar", {"block_length": 3, "steps": 4}),
    ("semi-ar", {"block_length": 3, "rule": "threshold", "threshold": 0.3}),
]


@pytest.mark.parametrize("method,options", ALL)
def test_fixed_tokens_and_batch_independence(method, options):
    v, length, mask = 7, 8, 6
    fn = tiny_net(v, length, mask, seed=1)
    x_init = torch.full((3, length), mask)
    x_init[0, :3] = torch.tensor([1, 2, 3])  # a prompt
    x_init[1, [0, 4, 7]] = torch.tensor([5, 0, 2])  # infilling
    x, info = sample_tokens(method, fn, x_init, mask_id=mask, generator=StackedGenerator([10, 11, 12]), **options)
    fixed = x_init != mask
    assert torch.equal(x[fixed], x_init[fixed])
    assert ((x >= 0) & (x < mask)).all()
    assert set(info) >= {"method", "nfe", "steps", "seconds", "tokens_per_s"} and info["nfe"] >= 1
    alone, _ = sample_tokens(method, fn, x_init[1:2], mask_id=mask, generator=StackedGenerator([11]), **options)
    assert torch.equal(alone[0], x[1])  # one seed per sequence: independent of the batch


def test_malformed_inputs_raise():
    fn = tiny_net(5, 4, 4)
    good = torch.full((2, 4), 4)
    with pytest.raises(ValueError):
        sample_topk(fn, good.float(), mask_id=4, steps=2)
    with pytest.raises(ValueError):
        sample_topk(fn, torch.tensor([[0, 9, 4, 4]]), mask_id=4, steps=2, vocab_size=5)  # id outside the vocabulary
    with pytest.raises(ValueError):  # without vocab_size: checked against the first output (an oracle does not fail)
        sample_topk(TokenDistribution(torch.ones(16), 4, 2).log_probs_fn(4), torch.tensor([[6, 4]]), mask_id=4, steps=2)
    with pytest.raises(ValueError):
        sample_topk(fn, good, mask_id=4, steps=2, vocab_size=6)  # the model's V disagrees
    with pytest.raises(ValueError):
        sample_topk(fn, torch.tensor([[0, -1, 4, 4]]), mask_id=4, steps=2)
    with pytest.raises(ValueError):
        sample_topk(fn, good[0], mask_id=4, steps=2)  # not (B, L)
    with pytest.raises(ValueError):
        sample_ancestral(fn, torch.full((1, 4), 7), mask_id=7, steps=2, vocab_size=5)  # mask outside the vocabulary
    with pytest.raises(ValueError):
        sample_topk(fn, good, mask_id=4, steps=2, order="best")
    with pytest.raises(ValueError):
        sample_threshold(fn, good, mask_id=4, threshold=1.5)
    with pytest.raises(ValueError):
        sample_tokens("nope", fn, good, mask_id=4)
    with pytest.raises(ValueError):
        sample_tokens("top-k", fn, good, mask_id=4, steps=2, cfg=3.0)  # unknown option
    with pytest.raises(ValueError):
        sample_first_hitting(lambda x, t: torch.zeros(x.shape[0], 5), good, mask_id=4)  # wrong output shape


def test_registry():
    names = token_method_names()
    assert names == ["ancestral", "first-hitting", "top-k", "threshold", "semi-ar", "sedd-euler", "sedd-tweedie"]
    methods = token_methods()
    assert "steps" in methods["top-k"].options() and "order" in methods["top-k"].options()
    assert "threshold" in methods["threshold"].options() and "steps" not in methods["threshold"].options()
    assert methods["sedd-euler"].model == "score" and methods["ancestral"].model == "log_probs"
    assert all(m.description for m in methods.values())


# ----------------------------------------------------------------------------- classifier-free guidance
def test_classifier_free_guidance():
    v, length, mask = 6, 5, 5
    cond = tiny_net(v, length, mask, seed=2)
    seen = []

    def recording(x_t, t):
        seen.append(x_t.clone())
        return cond(x_t, t)

    x_t = torch.tensor([[1, 2, mask, mask, 0], [3, mask, mask, 4, mask]])
    prompt = torch.tensor([[True, True, False, False, False], [True, False, False, False, False]])
    t = torch.tensor([0.5, 0.7])
    w = 1.5
    guided = classifier_free_guidance(recording, scale=w, mask_id=mask, prompt_mask=prompt)
    out = guided(x_t, t)
    x_u = x_t.masked_fill(prompt, mask)
    assert torch.equal(seen[1], x_u)  # the unconditional branch sees the prompt masked (LLaDA)
    lc, lu = cond(x_t, t), cond(x_u, t)
    masked = x_t == mask
    want = torch.log_softmax((1 + w) * lc[..., :mask] - w * lu[..., :mask], -1)
    assert torch.allclose(out[..., :mask][masked], want[masked], atol=1e-12)
    # SUBS invariants: mask column −inf, unmasked positions one-hot on themselves
    assert torch.isinf(out[..., mask]).all()
    assert torch.equal(out[~masked].argmax(-1), x_t[~masked]) and torch.allclose(out[~masked].exp().sum(-1), torch.ones(1, dtype=F64))
    # w = 0 (llada) and w = 1 (interpolate) give the conditional model
    assert torch.allclose(classifier_free_guidance(cond, scale=0.0, mask_id=mask, prompt_mask=prompt)(x_t, t), lc)
    alt = classifier_free_guidance(cond, scale=1 + w, mask_id=mask, prompt_mask=prompt, convention="interpolate")
    assert torch.allclose(alt(x_t, t), out)  # interpolate with w' = 1 + w is the llada form with w
    batched = classifier_free_guidance(cond, scale=w, mask_id=mask, prompt_mask=prompt, batched=True)
    assert torch.allclose(batched(x_t, t), out)
    null = classifier_free_guidance(cond, scale=w, mask_id=mask, uncond_fn=lambda x, s: cond(x_u, s))
    assert torch.allclose(null(x_t, t), out)
    # a guided sampler keeps the prompt and counts one NFE per guided call
    x, info = sample_topk(guided, x_t, mask_id=mask, steps=2, generator=torch.Generator().manual_seed(0))
    assert info["nfe"] == 2 and torch.equal(x[~masked], x_t[~masked])
    with pytest.raises(ValueError):
        classifier_free_guidance(cond, scale=w, mask_id=mask)  # neither prompt_mask nor uncond_fn


def test_parallel_steps_break_copies_at_the_predicted_rate():
    """The copy source (x_{m+i} = x_i, first half uniform over K). With the exact denoiser, as long
    as the sequence is still valid, a pair (i, m+i) revealed in one step is drawn from two uniform
    marginals and matches with probability 1/K; revealed in different steps, the later token
    copies the earlier. So P(valid) = E[K^(−J)], J the number of pairs that share a step:
    - ancestral, linear schedule: each token's reveal step is uniform over the S steps,
      independently, so P(valid) = (1 − (1 − 1/K)/S)^m;
    - top-k random: the kept positions are consecutive groups of k_j of a uniformly random
      permutation (computed here by enumerating the L! permutations);
    - top-k dilated: i and i + L/2 are neighbours in the bit-reversal order, so with fewer than L
      steps every pair shares a step: P(valid) = K^(−m);
    - one token per call (first-hitting, or dilated with L steps) is exact: P(valid) = 1;
    - on the reversal source the dilated order is exact from 2 steps on (below)."""
    k, length = 2, 8
    m = length // 2
    seqs = torch.tensor(list(itertools.product(range(k), repeat=length)))
    n = 6000

    def valid(source, method, seed, **opts):  # (n,) 1 where a sample driven by the source's exact denoiser is valid
        fn = TokenDistribution(source.log_prob(seqs).exp(), k, length).log_probs_fn(k)
        x, _ = sample_tokens(method, fn, (n, length), mask_id=k, generator=torch.Generator().manual_seed(seed), **opts)
        return torch.isfinite(source.log_prob(x)).double()

    def close(v, expected):
        se = math.sqrt(expected * (1 - expected) / n)
        assert abs(float(v.mean()) - expected) < 4.5 * se, (float(v.mean()), expected, se)

    def by_permutations(group):  # E[K^(−J)] over the L! equally likely orders, groups of `group` consecutive positions
        total = 0.0
        for perm in itertools.permutations(range(length)):
            step = {pos: r // group for r, pos in enumerate(perm)}
            total += k ** -sum(step[i] == step[m + i] for i in range(m))
        return total / math.factorial(length)

    copy, reverse = CopySource(n_symbols=k), CopySource(n_symbols=k, mode="reverse")
    for steps in (2, 4):
        close(valid(copy, "ancestral", steps, steps=steps), (1 - (1 - 1 / k) / steps) ** m)
        close(valid(copy, "top-k", 10 + steps, steps=steps, order="random"), by_permutations(length // steps))
        close(valid(copy, "top-k", 20 + steps, steps=steps, order="dilated"), k ** -m)
    assert bool((valid(copy, "top-k", 30, steps=length, order="dilated") == 1).all())
    assert bool((valid(copy, "first-hitting", 31) == 1).all())
    # the reversal (x_{m+i} = x_{m+1-i}): the bit reversal of L − 1 − i is the complement of that of
    # i, so with an even power-of-two number of steps no pair shares one and the dilated order is
    # exact from 2 calls on; one call reveals every pair together
    for steps in (2, 4):
        assert bool((valid(reverse, "top-k", 40 + steps, steps=steps, order="dilated") == 1).all())
    close(valid(reverse, "top-k", 41, steps=1, order="dilated"), k ** -m)
