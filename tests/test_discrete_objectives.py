"""Masked / block-diffusion / AR objectives and the NELBO estimator, against exact enumerations."""

import itertools
import math

import numpy as np
import pytest
import torch

from genspace.discrete.likelihood import ar_likelihood, nelbo
from genspace.discrete.objectives import (
    ar_nll,
    bd3_attention_mask,
    bd3_logits_fn,
    block_nelbo,
    causal_logits_fn,
    masked_logits_fn,
    masked_nelbo,
    sample_times,
    subs_log_probs,
    subs_log_probs_fn,
    token_nll,
)
from genspace.discrete.processes import AbsorbingProcess, UniformProcess
from genspace.discrete.schedules import get_schedule
from genspace.nets.transformer import Transformer, TransformerConfig

K = 3  # data tokens 0..2
MASK = K  # mask id 3
PROC = AbsorbingProcess(K, MASK)


def make_net(time_conditioning=False, seed=0, std=0.3, vocab=K + 1):
    torch.manual_seed(seed)
    net = Transformer(TransformerConfig(vocab_size=vocab, dim=32, depth=2, n_heads=4, time_conditioning=time_conditioning))
    net = net.double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
    return net.eval()


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------
# exact references


def exact_masked_nelbo(logits_fn, x0, schedule, *, time_agnostic=False, nodes=48):
    """NELBO(x0) = ∫₀¹ (1/a) Σ_S a^|S| (1−a)^(L−|S|) Σ_{ℓ∈S} nll_ℓ(S, t(a)) da, all 2^L masks enumerated.

    Time-agnostic models: the a-integral of a^(k−1)(1−a)^(L−k) is the Beta function
    (k−1)!(L−k)!/L!, no quadrature. Otherwise Gauss–Legendre on a ∈ [0, 1].
    """
    length = x0.shape[1]
    pats = torch.tensor(list(itertools.product([False, True], repeat=length)))[1:]  # (2^L − 1, L) non-empty
    k = pats.sum(1)
    x_t = torch.where(pats, MASK, x0.expand(len(pats), -1))

    def masked_sums(t):
        nll = token_nll(logits_fn(x_t, torch.full((len(pats),), t, dtype=torch.float64)), x0.expand(len(pats), -1), MASK)
        return torch.where(pats, nll, 0.0).sum(1)  # (P,)

    if time_agnostic:
        f = math.factorial
        beta = torch.tensor([f(int(j) - 1) * f(length - int(j)) / f(length) for j in k], dtype=torch.float64)
        return float((beta * masked_sums(0.5)).sum().detach())
    a_nodes, w_nodes = np.polynomial.legendre.leggauss(nodes)
    total = 0.0
    for a, w in zip((a_nodes + 1) / 2, w_nodes / 2):
        t = float(schedule.t_of_alpha(torch.tensor(1.0 - a, dtype=torch.float64)))
        probs = a ** (k - 1).double() * (1 - a) ** (length - k).double()  # (1/a)·a^k(1−a)^(L−k)
        total += w * float((probs * masked_sums(t)).sum())
    return total


def masked_sum(fn, x_t, x0, pats, t):
    """Σ_{ℓ masked} −log x_θ(x_t, t)[x0^ℓ] for each of the rows x_t (P, L) with mask patterns pats."""
    logits = fn(x_t, torch.full((len(x_t),), t, dtype=torch.float64))
    return torch.where(pats, token_nll(logits, x0.expand(len(x_t), -1), MASK), 0.0).sum(1)


def oracle(p_joint, length):
    """Exact conditionals of a distribution over {0..K−1}^L as a logits_fn (time-agnostic)."""
    seqs = torch.tensor(list(itertools.product(range(K), repeat=length)))  # (K^L, L)
    onehot = torch.nn.functional.one_hot(seqs, K + 1).double()  # (K^L, L, V)

    def fn(x_t, t):
        compat = ((x_t[:, None, :] == MASK) | (x_t[:, None, :] == seqs[None])).all(-1)  # (B, K^L)
        w = compat.double() * p_joint[None]  # (B, K^L)
        probs = torch.einsum("bs,slv->blv", w, onehot)  # (B, L, V)
        return torch.log(probs / probs.sum(-1, keepdim=True))  # mask column: log 0 = −inf

    return fn, seqs


def random_joint(length, seed):
    p = torch.rand(K**length, generator=gen(seed), dtype=torch.float64) + 0.05
    return p / p.sum()


# ----------------------------------------------------------------------------------------------
# SUBS


def test_subs_invariants():
    logits = torch.randn(2, 5, K + 1, generator=gen(0), dtype=torch.float64)
    x_t = torch.tensor([[0, MASK, 2, MASK, 1], [MASK, MASK, MASK, 0, 0]])
    lp = subs_log_probs(logits, x_t, MASK)
    torch.testing.assert_close(lp.logsumexp(-1), torch.zeros(2, 5, dtype=torch.float64))  # normalized
    assert torch.isneginf(lp[..., MASK]).all()  # zero masking probability
    unmasked = x_t != MASK
    onehot = torch.nn.functional.one_hot(x_t.clamp_max(K - 1), K + 1).bool()
    assert (lp[unmasked][onehot[unmasked]] == 0).all()  # carry-over: log 1 at x_t
    assert torch.isneginf(lp[unmasked][~onehot[unmasked]]).all()  # and −inf elsewhere
    # carry-over ignores the logits; masked rows are log_softmax without the mask token
    lp2 = subs_log_probs(logits + 5 * torch.randn(logits.shape, generator=gen(1), dtype=torch.float64), x_t, MASK)
    torch.testing.assert_close(lp2[unmasked], lp[unmasked])
    ref = torch.log_softmax(logits[..., :K], -1)
    torch.testing.assert_close(lp[~unmasked][:, :K], ref[~unmasked])
    torch.testing.assert_close(subs_log_probs_fn(lambda x, t: logits, MASK)(x_t, torch.ones(2)), lp)
    x0 = torch.tensor([[0, 1, 2, 2, 1], [0, 1, 2, 0, 0]])
    nll = token_nll(logits, x0, MASK)
    torch.testing.assert_close(nll[~unmasked], -lp.gather(-1, x0[..., None])[..., 0][~unmasked])


def test_antithetic_times_are_evenly_spread_and_uniform():
    u = sample_times((8,), generator=gen(3))
    gaps = torch.diff(torch.sort(u).values)
    torch.testing.assert_close(gaps, torch.full((7,), 1 / 8, dtype=torch.float64))
    means = torch.stack([sample_times((3, 2), generator=gen(s))[0, 1] for s in range(400)])
    assert abs(float(means.mean()) - 0.5) < 4 * (1 / math.sqrt(12 * 400))  # each entry is marginally U[0, 1)
    with pytest.raises(ValueError, match="time_sampling"):
        sample_times((2,), sampling="sobol")


# ----------------------------------------------------------------------------------------------
# masked NELBO


def test_masked_nelbo_at_fixed_t_matches_the_exact_mask_expectation():
    net = make_net(time_conditioning=True)
    fn = masked_logits_fn(net)
    sched = get_schedule("cosine")
    x0 = torch.tensor([[2, 0, 1]])
    t = 0.6
    alpha = float(sched.alpha(torch.tensor(t)))
    pats = torch.tensor(list(itertools.product([False, True], repeat=3)))
    x_t = torch.where(pats, MASK, x0.expand(8, -1))
    with torch.no_grad():
        nll = masked_sum(fn, x_t, x0, pats, t)
        prob = torch.tensor([alpha ** int((~p).sum()) * (1 - alpha) ** int(p.sum()) for p in pats], dtype=torch.float64)
        exact = float(sched.weight(torch.tensor(t, dtype=torch.float64)) * (prob * nll).sum())
        r = 4000
        est = masked_nelbo(fn, x0.expand(r, -1), process=PROC, schedule=sched, t=torch.full((r,), t), generator=gen(5)).nll
    assert abs(float(est.mean()) - exact) < 4 * float(est.std()) / math.sqrt(r)


def test_masked_nelbo_expectation_is_the_floored_integral():
    """E[loss] = (1 − t_min)⁻¹ ∫_{t_min}^1 w(t) E_t[S] dt, checked by quadrature + enumeration."""
    net = make_net(time_conditioning=True, seed=2)
    fn = masked_logits_fn(net)
    sched = get_schedule("linear")
    x0 = torch.tensor([[1, 1, 0]])
    t_min = 0.05
    pats = torch.tensor(list(itertools.product([False, True], repeat=3)))[1:]
    x_t = torch.where(pats, MASK, x0.expand(7, -1))
    nodes, weights = np.polynomial.legendre.leggauss(40)
    exact = 0.0
    with torch.no_grad():
        for s, w in zip(nodes, weights):
            t = t_min + (1 - t_min) * (s + 1) / 2
            nll = masked_sum(fn, x_t, x0, pats, t)
            k = pats.sum(1).double()
            exact += w / 2 * float(((1 - t) ** (3 - k) * t**k * nll).sum()) / t
        r = 4000
        est = masked_nelbo(fn, x0.expand(r, -1), process=PROC, schedule=sched, t_min=t_min, generator=gen(7)).nll
    assert abs(float(est.mean()) - exact) < 4 * float(est.std()) / math.sqrt(r)


def test_prompt_and_padding_are_never_noised_nor_scored():
    seen = []

    def fn(x_t, t):
        seen.append(x_t.clone())
        return torch.zeros(*x_t.shape, K + 1, dtype=torch.float64)

    x0 = torch.tensor([[0, 1, 2, 0, 1, 2]]).expand(64, -1)
    keep = torch.zeros(64, 6, dtype=torch.bool)
    keep[:, :2] = True
    valid = torch.ones(64, 6, dtype=torch.bool)
    valid[:, 5] = False
    loss = masked_nelbo(fn, x0, process=PROC, t=torch.ones(64), keep=keep, valid=valid, generator=gen(0))
    assert (seen[0][:, :2] == x0[:, :2]).all() and (seen[0][:, 5] == x0[:, 5]).all()
    assert (seen[0][:, 2:5] == MASK).all()  # t = 1: everything else is masked
    torch.testing.assert_close(loss.nll, torch.full((64,), 3 * math.log(K), dtype=torch.float64))  # uniform model, w(1) = 1
    torch.testing.assert_close(loss.n_tokens, torch.full((64,), 3.0, dtype=torch.float64))
    torch.testing.assert_close(loss.per_token, torch.full((64,), math.log(K), dtype=torch.float64))


def test_objectives_reject_bad_inputs():
    fn = masked_logits_fn(make_net())
    x0 = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="absorbing"):
        masked_nelbo(fn, x0, process=UniformProcess(K))
    with pytest.raises(ValueError, match="x0"):
        masked_nelbo(fn, x0.double(), process=PROC)
    with pytest.raises(ValueError, match="keep"):
        masked_nelbo(fn, x0, process=PROC, keep=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="noise window"):
        block_nelbo(bd3_logits_fn(make_net(), 2), x0, block_size=2, process=PROC, clip=(0.8, 0.5))


# ----------------------------------------------------------------------------------------------
# block diffusion


def test_bd3_mask_matches_its_definition():
    length, bs = 7, 3
    m = bd3_attention_mask(length, bs)
    assert m.shape == (14, 14)
    for i in range(14):
        for j in range(14):
            qi, kj = i % length // bs, j % length // bs
            if i < length and j < length:
                want = qi == kj
            elif i < length:
                want = kj < qi
            elif j < length:
                want = False
            else:
                want = kj <= qi
            assert bool(m[i, j]) == want, (i, j)


@pytest.mark.parametrize("time_conditioning", [False, True])
def test_bd3_training_layout_equals_the_per_block_prefix_pass(time_conditioning):
    """The vectorized [x_t ; x0] pass gives each block what the sampler computes on [x0_<b ; x_t^b]."""
    net = make_net(time_conditioning, seed=4)
    bs, length = 3, 8  # last block shorter
    x0 = torch.randint(0, K, (2, length), generator=gen(1))
    x_t = torch.where(torch.rand(2, length, generator=gen(2)) < 0.5, MASK, x0)
    t_tok = torch.tensor([0.9, 0.9, 0.9, 0.4, 0.4, 0.4, 0.7, 0.7], dtype=torch.float64).expand(2, -1)
    got = bd3_logits_fn(net, bs)(x_t, x0, t_tok)
    for b in range(3):
        lo, hi = b * bs, min((b + 1) * bs, length)
        prefix = torch.cat([x0[:, :lo], x_t[:, lo:hi]], 1)
        tt = torch.cat([torch.zeros(2, lo, dtype=torch.float64), t_tok[:, lo:hi]], 1) if time_conditioning else None
        ref = net(prefix, tt, attn_mask="block-causal", block_size=bs)[:, lo:hi]
        torch.testing.assert_close(got[:, lo:hi], ref, rtol=0, atol=1e-12)


def test_block_nelbo_with_one_block_is_the_masked_nelbo():
    net = make_net(time_conditioning=True, seed=5)
    x0 = torch.randint(0, K, (4, 6), generator=gen(3))
    t = torch.tensor([0.2, 0.5, 0.7, 1.0], dtype=torch.float64)
    a = block_nelbo(bd3_logits_fn(net, 6), x0, block_size=6, process=PROC, t=t[:, None], generator=gen(9))
    b = masked_nelbo(masked_logits_fn(net), x0, process=PROC, t=t, generator=gen(9))
    torch.testing.assert_close(a.nll, b.nll, rtol=0, atol=1e-10)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_block_size_one_is_autoregressive_in_expectation(schedule):
    """b′ = 1: E_{t,mask}[w(t)·1(masked)] = (α(lo) − α(hi))/(hi − lo), so the expected loss is that × AR NLL.

    Each one-token block sees only the clean tokens before it, so its masked loss is the AR term
    −log p(x^ℓ | x^{<ℓ}) whatever t (no time conditioning); for the linear schedule the factor is 1
    for any window [t_min, 1] (exactly the AR NLL of the block network's conditionals).
    """
    net = make_net(time_conditioning=False, seed=6)
    sched = get_schedule(schedule)
    x0 = torch.tensor([[2, 0, 1, 1, 0]])
    length = 5
    with torch.no_grad():
        ar = 0.0
        for ell in range(length):
            prefix = torch.cat([x0[:, :ell], torch.tensor([[MASK]])], 1)
            logits = net(prefix, attn_mask="block-causal", block_size=1)[:, -1:]  # (1, 1, V)
            ar += float(token_nll(logits, x0[:, ell : ell + 1], MASK)[0, 0])
        fn = bd3_logits_fn(net, 1)
        at_one = block_nelbo(fn, x0, block_size=1, process=PROC, t=torch.ones(1, length), schedule=sched, generator=gen(0))
        if schedule == "linear":
            assert abs(float(at_one.nll[0]) - ar) < 1e-10  # all masked, w(1) = 1
            full = block_nelbo(fn, x0, block_size=1, process=PROC, clip=(1.0, 1.0), generator=gen(0))
            assert abs(float(full.nll[0]) - ar) < 1e-10  # BD3-LM's "full masking" window: the AR loss itself
            assert "NOT the NELBO" in full.estimator
        r, t_min = 3000, 1e-3
        est = block_nelbo(
            fn, x0.expand(r, -1), block_size=1, process=PROC, schedule=sched, t_min=t_min, generator=gen(1)
        ).nll
    factor = float((sched.alpha(torch.tensor(t_min)) - sched.alpha(torch.tensor(1.0))) / (1 - t_min))
    if schedule == "linear":
        assert factor == pytest.approx(1.0, abs=1e-12)
    assert abs(float(est.mean()) - factor * ar) < 4 * float(est.std()) / math.sqrt(r)


def test_clipped_window_is_labelled_and_reweights():
    net = make_net(seed=7)
    x0 = torch.randint(0, K, (2, 4), generator=gen(4))
    loss = block_nelbo(bd3_logits_fn(net, 2), x0, block_size=2, process=PROC, clip=(0.3, 0.8), generator=gen(2))
    assert "NOT the NELBO" in loss.estimator
    assert loss.t.shape == (2, 2) and bool(((loss.t >= 0.3) & (loss.t <= 0.8)).all())


# ----------------------------------------------------------------------------------------------
# autoregressive


def test_ar_nll_scores_all_tokens_from_a_start_token_and_equals_the_chain_rule():
    net = make_net(seed=8)
    x = torch.randint(0, K, (3, 5), generator=gen(5))
    loss = ar_nll(causal_logits_fn(net), x, start_id=MASK)
    assert loss.n_tokens.tolist() == [5.0, 5.0, 5.0]
    ref = torch.zeros(3, dtype=torch.float64)
    with torch.no_grad():
        for ell in range(5):
            inp = torch.cat([torch.full((3, 1), MASK), x[:, :ell]], 1)
            logits = net(inp, attn_mask="causal")[:, -1]  # one prefix pass per token
            logits[:, MASK] = float("-inf")
            ref -= torch.log_softmax(logits, -1).gather(1, x[:, ell : ell + 1])[:, 0]
    torch.testing.assert_close(loss.nll.detach(), ref, rtol=0, atol=1e-10)


def test_ar_likelihood_of_the_true_conditionals_is_the_true_nll():
    length = 3
    p = random_joint(length, 11)
    seqs = torch.tensor(list(itertools.product(range(K), repeat=length)))

    def ar_oracle(tokens):  # tokens = [start, x0, x1]: p(x_ℓ | x_<ℓ) by marginalizing the joint
        out = torch.zeros(*tokens.shape, K + 1, dtype=torch.float64)
        for ell in range(length):
            prefix = tokens[:, 1 : ell + 1]
            match = (seqs[None, :, :ell] == prefix[:, None]).all(-1).double() * p  # (B, K^L)
            probs = torch.einsum("bs,sv->bv", match, torch.nn.functional.one_hot(seqs[:, ell], K + 1).double())
            out[:, ell] = torch.log(probs / probs.sum(-1, keepdim=True))
        return out

    res = ar_likelihood(ar_oracle, seqs, start_id=MASK)
    torch.testing.assert_close(res.per_sequence, -torch.log(p), rtol=0, atol=1e-12)
    assert not res.is_bound and "exact" in res.estimator and float(res.stderr.abs().max()) == 0.0


# ----------------------------------------------------------------------------------------------
# the NELBO estimator


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_nelbo_estimator_is_unbiased(schedule):
    """Mean of many estimates = quadrature over a × exact expectation over the 2^L masks."""
    net = make_net(time_conditioning=True, seed=9)
    fn = masked_logits_fn(net)
    sched = get_schedule(schedule)
    x0 = torch.tensor([[0, 2, 1]])
    with torch.no_grad():
        exact = exact_masked_nelbo(fn, x0, sched)
    r = 1000
    res = nelbo(fn, x0.expand(r, -1), schedule=sched, process=PROC, n_t=4, generator=gen(3), t_per_call=4)
    est = res.per_sequence
    se = float(est.std()) / math.sqrt(r)
    assert abs(float(est.mean()) - exact) < 4 * se
    # the reported standard error is conservative (stratified draws vary less than the iid formula says)
    assert float(res.stderr.pow(2).mean()) > 0.8 * float(est.var())
    assert "stratified" in res.estimator and "4 t-points" in res.estimator and "float64" in res.estimator


def test_block_nelbo_estimator_is_unbiased():
    net = make_net(time_conditioning=True, seed=10)
    fn = bd3_logits_fn(net, 2)
    sched = get_schedule("linear")
    x0 = torch.tensor([[1, 0, 2, 2]])
    nodes, weights = np.polynomial.legendre.leggauss(40)
    exact = 0.0
    with torch.no_grad():
        for blk in range(2):
            pats = torch.tensor(list(itertools.product([False, True], repeat=2)))[1:]  # masks inside block blk
            full = torch.zeros(3, 4, dtype=torch.bool)
            full[:, 2 * blk : 2 * blk + 2] = pats
            x_t = torch.where(full, MASK, x0.expand(3, -1))
            k = pats.sum(1).double()
            for s, w in zip(nodes, weights):
                a = (s + 1) / 2
                logits = fn(x_t, x0.expand(3, -1), torch.full((3, 4), a, dtype=torch.float64))
                nll = token_nll(logits, x0.expand(3, -1), MASK)
                exact += w / 2 * float((a ** (k - 1) * (1 - a) ** (2 - k) * torch.where(full, nll, 0.0).sum(1)).sum())
    r = 1000
    est = nelbo(fn, x0.expand(r, -1), schedule=sched, process=PROC, n_t=4, generator=gen(4), block_size=2).per_sequence
    assert abs(float(est.mean()) - exact) < 4 * float(est.std()) / math.sqrt(r)


def test_nelbo_of_the_true_conditionals_is_the_true_nll_and_an_elbo_otherwise():
    """True conditionals: NELBO(x) = −log p(x) exactly (it is the any-order AR NLL, every order
    exact). Any time-agnostic model: NELBO_θ(x) ≥ −log p_θ(x), p_θ(x) = mean over orders of the
    product of its conditionals (the continuous-time sampler reveals one token at a time in a
    uniform order), which sums to 1."""
    length = 3
    p = random_joint(length, 12)
    fn, seqs = oracle(p, length)
    sched = get_schedule("linear")
    true_nll = -torch.log(p)
    exact = torch.tensor([exact_masked_nelbo(fn, s[None], sched, time_agnostic=True) for s in seqs], dtype=torch.float64)
    torch.testing.assert_close(exact, true_nll, rtol=0, atol=1e-12)
    # the estimator agrees within its error for the oracle
    res = nelbo(fn, seqs.repeat(40, 1), schedule=sched, process=PROC, n_t=8, generator=gen(6))
    est = res.per_sequence.view(40, -1)
    assert (est.mean(0) - true_nll).abs().max() < 4 * float(est.std(0).max()) / math.sqrt(40) + 1e-9
    assert res.is_bound and res.summary()["perplexity_bound"] == pytest.approx(float(res.perplexity))

    # an imperfect time-agnostic model: the NELBO bounds its own NLL for every sequence
    net = make_net(time_conditioning=False, seed=13)
    mfn = masked_logits_fn(net)
    with torch.no_grad():
        model_p = torch.zeros(len(seqs), dtype=torch.float64)
        for i, s in enumerate(seqs):
            for order in itertools.permutations(range(length)):
                x_t, prob = torch.full((1, length), MASK), 1.0
                for ell in order:
                    probs = subs_log_probs(mfn(x_t, torch.ones(1)), x_t, MASK)[0, ell].exp()
                    prob *= float(probs[s[ell]])
                    x_t[0, ell] = s[ell]
                model_p[i] += prob / math.factorial(length)
        model_nelbo = [exact_masked_nelbo(mfn, s[None], sched, time_agnostic=True) for s in seqs]
        model_nelbo = torch.tensor(model_nelbo, dtype=torch.float64)
    assert float(model_p.sum()) == pytest.approx(1.0, abs=1e-12)
    assert bool((model_nelbo >= -torch.log(model_p) - 1e-12).all())
    assert float((model_nelbo + torch.log(model_p)).max()) > 1e-4  # a strict bound here
    # averaged over the data: cross-entropy ≥ entropy
    assert float((p * model_nelbo).sum()) >= float((p * true_nll).sum())


def test_nelbo_of_a_single_token_is_its_nll():
    net = make_net(seed=14)
    fn = masked_logits_fn(net)
    x0 = torch.tensor([[1]])
    with torch.no_grad():
        nll = float(token_nll(fn(torch.tensor([[MASK]]), torch.ones(1)), x0, MASK)[0, 0])
    with torch.no_grad():
        assert exact_masked_nelbo(fn, x0, get_schedule("linear"), time_agnostic=True) == pytest.approx(nll, abs=1e-12)
        assert exact_masked_nelbo(fn, x0, get_schedule("cosine"), nodes=8) == pytest.approx(nll, abs=1e-12)
    r = 2000
    est = nelbo(fn, x0.expand(r, -1), schedule="linear", process=PROC, n_t=4, generator=gen(8), t_per_call=2).per_sequence
    assert abs(float(est.mean()) - nll) < 4 * float(est.std()) / math.sqrt(r)
