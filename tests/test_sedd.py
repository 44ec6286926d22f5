"""SEDD (Lou et al. 2024): score entropy, its likelihood bound and the Euler / Tweedie samplers,
against exact ratios from the enumerable oracle and brute-force enumeration."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

from genspace.core.random import StackedGenerator
from genspace.discrete.oracle import TokenDistribution
from genspace.discrete.processes import AbsorbingProcess, UniformProcess
from genspace.discrete.samplers import sample_tokens
from genspace.discrete.schedules import get_schedule
from genspace.discrete.sedd import (
    antithetic_times,
    euler_probs,
    log_probs_from_score,
    prior_kl,
    sample_sedd_euler,
    sample_sedd_tweedie,
    score_entropy,
    score_from_log_probs,
    sedd_loss,
    tweedie_probs,
)

F64 = torch.float64
K, L = 3, 2
MASK = K
ABSORBING, UNIFORM = AbsorbingProcess(K, MASK), UniformProcess(K)


@pytest.fixture(scope="module")
def dist():
    return TokenDistribution.random(K, L, seed=3, scale=1.5)


def all_states(process, length=L) -> torch.Tensor:
    c = K + 1 if process.kind == "absorbing" else K
    return torch.tensor(list(itertools.product(range(c), repeat=length)))  # mask = K = MASK


def q_t(process, states: torch.Tensor, x0: torch.Tensor, alpha: float) -> torch.Tensor:
    """q_t(x_t | x0) for each row of ``states`` (a product over positions)."""
    a = torch.tensor(alpha, dtype=F64)  # a float64 tensor: torch.where on Python scalars would give float32
    if process.kind == "absorbing":
        per = torch.where(states == MASK, 1 - a, torch.where(states == x0, a, torch.zeros_like(a)))
    else:
        per = torch.where(states == x0, a + (1 - a) / K, (1 - a) / K)
    return per.prod(-1)


def expected_integrand(dist, process, schedule, x0: torch.Tensor, t: float, score_fn=None) -> float:
    """E_{x_t ~ q_t(·|x0)} of the score-entropy integrand, by enumeration of x_t."""
    schedule = get_schedule(schedule)
    score_fn = score_fn or dist.score_fn(process, schedule)
    states = all_states(process, x0.shape[0])
    q = q_t(process, states, x0, float(schedule.alpha(torch.tensor(t, dtype=F64))))
    states, q = states[q > 0], q[q > 0]
    tt = torch.full((len(states),), t, dtype=F64)
    val = score_entropy(score_fn(states, tt), states, x0.expand(len(states), -1), tt, process=process, schedule=schedule)
    return float((q * val).sum())


def integrate(f, lo: float, hi: float, nodes: int = 32, power: int = 3) -> float:
    """∫_lo^hi f by Gauss–Legendre in u with t = lo + (hi − lo)·u^power (absorbs the log
    singularity of the uniform integrand at t → 0)."""
    xs, ws = np.polynomial.legendre.leggauss(nodes)
    u, w = 0.5 * (xs + 1), 0.5 * ws
    return sum(wi * (hi - lo) * power * ui ** (power - 1) * f(lo + (hi - lo) * ui**power) for ui, wi in zip(u, w))


# ----------------------------------------------------------------------------- the loss
@pytest.mark.parametrize("process", [ABSORBING, UNIFORM], ids=["absorbing", "uniform"])
def test_score_entropy_vanishes_at_the_conditional_ratio_and_is_positive_elsewhere(process):
    g = torch.Generator().manual_seed(0)
    sched = get_schedule("log-linear")
    x0 = torch.randint(0, K, (64, 5), generator=g)
    t = torch.rand(64, generator=g, dtype=F64) * 0.9 + 0.05
    x_t = process.sample(x0, sched.alpha(t)[:, None], generator=g)
    alpha = sched.alpha(t)[:, None, None]
    # the conditional ratios r_y = q_t(y | x0)/q_t(x_t | x0) written out per process
    if process.kind == "absorbing":
        r = torch.nn.functional.one_hot(x0, K).to(F64) * alpha / (1 - alpha)
    else:
        q = alpha * torch.nn.functional.one_hot(x0, K) + (1 - alpha) / K
        r = q / q.gather(-1, x_t[..., None])
    exact = score_entropy(r.log(), x_t, x0, t, process=process, schedule=sched)
    assert exact.abs().max() < 1e-12
    bumped = score_entropy(r.log() + 0.3 * torch.randn(r.shape, generator=g, dtype=F64), x_t, x0, t, process=process, schedule=sched)
    read = (x_t == MASK).any(-1) if process.kind == "absorbing" else torch.ones(64, dtype=torch.bool)
    assert (bumped[read] > 1e-6).all() and (bumped[~read] == 0).all()


@pytest.mark.parametrize("process", [ABSORBING, UNIFORM], ids=["absorbing", "uniform"])
def test_exact_ratios_minimize_the_expected_loss(dist, process):
    """E_{x0 | x_t}[score entropy] is minimized by the marginal ratios p_t(y)/p_t(x): zero
    gradient there, and every perturbation increases it."""
    sched = get_schedule("log-linear")
    t = 0.4
    alpha = float(sched.alpha(torch.tensor(t, dtype=F64)))
    states = all_states(process)
    if process.kind == "absorbing":
        states = states[(states == MASK).any(-1)]  # only masked positions are scored
    seqs = dist.sequences  # (N, L)
    tt = torch.full((len(seqs),), t, dtype=F64)
    exact = dist.score_fn(process, sched)(states, torch.full((len(states),), t, dtype=F64))  # (S, L, V)
    g = torch.Generator().manual_seed(1)
    for i, x in enumerate(states):
        post = dist.probs * q_t(process, x.expand(len(seqs), -1), seqs, alpha)
        post = post / post.sum()  # p(x0 | x_t = x)

        def expected(ls):
            vals = score_entropy(ls.expand(len(seqs), -1, -1), x.expand(len(seqs), -1), seqs, tt, process=process, schedule=sched)
            return (post * vals).sum()

        ls = exact[i].clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(expected(ls), ls)
        assert grad.abs().max() < 1e-10
        base = float(expected(exact[i]))
        finite = torch.isfinite(exact[i])
        for _ in range(3):
            delta = 0.2 * torch.randn(exact[i].shape, generator=g, dtype=F64) * finite
            assert float(expected(torch.where(finite, exact[i] + delta, exact[i]))) > base


@pytest.mark.parametrize(
    "process,schedule", [(ABSORBING, "linear"), (ABSORBING, "cosine"), (UNIFORM, "linear"), (UNIFORM, "log-linear")]
)
def test_bound_is_tight_for_exact_ratios(dist, process, schedule):
    """∫_0^1 E[score entropy] dt + KL(q_1 ‖ p_base) = −log p(x0) for every x0 when the ratios are
    exact (the path KL behind the bound vanishes)."""
    for x0 in (torch.tensor([0, 1]), torch.tensor([2, 2])):
        bound = integrate(lambda t: expected_integrand(dist, process, schedule, x0, t), 0.0, 1.0)
        bound += float(prior_kl(x0[None], process=process, schedule=schedule))
        assert bound == pytest.approx(-float(dist.log_prob(x0[None])), abs=2e-5)


def test_one_token_integrand_in_closed_form():
    """L = 1, absorbing: E_{x_t}[integrand] = −α′(t)·(−log p(x0)) at every t (derivation: only
    x_t = mask counts, with probability 1 − α; there Σ_y s_y = r = α/(1−α), s_{x0} = r p(x0),
    so the summand is σ·r·(−log p(x0)) and (1 − α)·σ·r = −α′)."""
    p = torch.tensor([0.6, 0.3, 0.1], dtype=F64)
    one = TokenDistribution(p, 3, 1)
    for schedule in ("linear", "cosine", "log-linear"):
        sched = get_schedule(schedule)
        for t in (0.1, 0.5, 0.93):
            for v in range(3):
                x0 = torch.tensor([v])
                got = expected_integrand(one, ABSORBING, sched, x0, t)
                want = -float(sched.alpha_prime(torch.tensor(t, dtype=F64))) * -math.log(p[v])
                assert got == pytest.approx(want, rel=1e-10)


def test_bound_with_a_wrong_score_exceeds_the_entropy(dist):
    """E_{x0 ~ p}[bound] ≥ E[−log p_θ(x0)] ≥ H(p) for any score network."""
    exact = dist.score_fn(ABSORBING, "linear")
    wrong = lambda x, t: exact(x, t) + 0.5 * torch.sin(3.0 * x.to(F64))[..., None]  # noqa: E731
    entropy = -float((dist.probs * dist.probs.log()).sum())
    total = 0.0
    for n, x0 in enumerate(dist.sequences):
        total += float(dist.probs[n]) * integrate(lambda t: expected_integrand(dist, ABSORBING, "linear", x0, t, wrong), 0.0, 1.0, power=1, nodes=8)
    assert total > entropy + 1e-3


@pytest.mark.parametrize("process,schedule", [(ABSORBING, "log-linear"), (UNIFORM, "linear")])
def test_sedd_loss_is_an_unbiased_estimate_of_the_bound(dist, process, schedule):
    sched = get_schedule(schedule)
    eps = 1e-3
    t_max = 1.0 if process.kind == "absorbing" else 1.0 - eps  # log-linear: α(1) > 0; linear: α(1) = 0
    x0 = torch.tensor([[2, 1]])
    want = integrate(lambda t: expected_integrand(dist, process, sched, x0[0], t), eps, t_max)
    g = torch.Generator().manual_seed(0)
    score = dist.score_fn(process, sched)
    means = torch.stack([sedd_loss(score, x0.expand(500, -1), process=process, schedule=sched, generator=g, eps=eps).mean() for _ in range(24)])
    se = float(means.std() / math.sqrt(len(means)))
    assert abs(float(means.mean()) - want) < 4 * se
    assert se < 0.1 * want  # the estimate is informative


def test_antithetic_times_are_stratified():
    t = antithetic_times(8, generator=torch.Generator().manual_seed(0), eps=0.01, t_max=0.99)
    gaps = torch.diff(torch.sort(t).values)
    assert torch.allclose(gaps, torch.full_like(gaps, 0.98 / 8)) and t.min() >= 0.01 and t.max() < 0.99
    t = antithetic_times(4, generator=StackedGenerator([1, 2, 3, 4]), antithetic=False)
    assert t.shape == (4,) and len(set(t.tolist())) == 4


def test_prior_kl_and_adapters(dist):
    x0 = torch.tensor([[0, 1], [2, 2]])
    assert torch.all(prior_kl(x0, process=UNIFORM, schedule="linear") == 0)
    a1 = 1e-3
    q = torch.tensor([a1 + (1 - a1) / K] + [(1 - a1) / K] * (K - 1), dtype=F64)
    per = float((q * (q * K).log()).sum())
    assert torch.allclose(prior_kl(x0, process=UNIFORM, schedule="log-linear"), torch.full((2,), L * per, dtype=F64))
    assert torch.all(prior_kl(x0, process=ABSORBING, schedule="cosine") == 0)  # α(1) = cos(π/2) = 0
    assert torch.isinf(prior_kl(x0, process=ABSORBING, schedule="log-linear")).all()
    # the absorbing score is α/(1−α) times the denoiser, and back
    x_t = torch.tensor([[MASK, 1], [MASK, MASK], [0, 2]])
    t = torch.tensor([0.3, 0.6, 0.9], dtype=F64)
    lp = dist.log_probs_fn(MASK)(x_t, t)
    score = score_from_log_probs(lp, x_t, t, mask_id=MASK, schedule="log-linear")
    exact = dist.score_fn(ABSORBING, "log-linear")(x_t, t)
    masked = x_t == MASK
    assert torch.allclose(score[masked][:, :K], exact[masked][:, :K], atol=1e-12)
    assert torch.allclose(log_probs_from_score(exact, x_t, mask_id=MASK, vocab_size=K).exp(), lp.exp(), atol=1e-12)


# ----------------------------------------------------------------------------- the samplers' steps
def token_matrices(process, a_s: float, a_t: float):
    """Per-token q_s (K × C) and q_{t|s} (C × C), mask = column K for absorbing."""
    beta = a_t / a_s
    if process.kind == "absorbing":
        qs = torch.zeros(K, K + 1, dtype=F64)
        qs[:, :K] = a_s * torch.eye(K, dtype=F64)
        qs[:, K] = 1 - a_s
        qts = torch.zeros(K + 1, K + 1, dtype=F64)
        qts[:K, :K] = beta * torch.eye(K, dtype=F64)
        qts[:K, K] = 1 - beta
        qts[K, K] = 1.0
        return qs, qts
    kern = lambda a: a * torch.eye(K, dtype=F64) + (1 - a) / K  # noqa: E731
    return kern(a_s), kern(beta)


def exact_one_position(dist, process, sched, x_t: torch.Tensor, t: float, s: float) -> torch.Tensor:
    """p(x_s^ℓ = y | x_t) by enumeration over x0: (L, C)."""
    a_t = float(sched.alpha(torch.tensor(t, dtype=F64)))
    a_s = float(sched.alpha(torch.tensor(s, dtype=F64))) if s > 0 else 1.0
    qs, qts = token_matrices(process, a_s, a_t)
    qt = qs @ qts  # q_t(x_t | x0) per token
    out = []
    for pos in range(L):
        w = torch.zeros(qs.shape[1], dtype=F64)
        for n, x0 in enumerate(dist.sequences.tolist()):
            rest = math.prod(float(qt[x0[j], x_t[j]]) for j in range(L) if j != pos)
            w += dist.probs[n] * rest * qs[x0[pos]] * qts[:, x_t[pos]]
        out.append(w / w.sum())
    return torch.stack(out)


@pytest.mark.parametrize("process", [ABSORBING, UNIFORM], ids=["absorbing", "uniform"])
def test_tweedie_step_is_the_exact_one_position_transition(dist, process):
    sched = get_schedule("log-linear")
    score = dist.score_fn(process, sched)
    states = all_states(process)
    for t, s in ((0.8, 0.5), (0.3, 0.05), (0.2, 0.0)):
        probs = tweedie_probs(score(states, torch.full((len(states),), t, dtype=F64)), states, t, s, process=process, schedule=sched)
        probs = probs / probs.sum(-1, keepdim=True)
        for i in range(0, len(states), 3):
            assert torch.allclose(probs[i], exact_one_position(dist, process, sched, states[i].tolist(), t, s), atol=1e-12)


@pytest.mark.parametrize("process,schedule", [(ABSORBING, "cosine"), (UNIFORM, "log-linear")], ids=["absorbing", "uniform"])
def test_euler_step_has_second_order_local_error(dist, process, schedule):
    """Euler's δ + Δt·Q̄_t differs from the exact transition by O(Δt²): halving Δt divides the
    error by ≈ 4."""
    sched = get_schedule(schedule)
    t = 0.5
    x_t = [MASK, 1] if process.kind == "absorbing" else [0, 2]
    x = torch.tensor([x_t])
    log_score = dist.score_fn(process, sched)(x, torch.tensor([t], dtype=F64))
    errs = []
    for h in (0.02, 0.01, 0.005):
        e = euler_probs(log_score, x, t, h, process=process, schedule=sched)[0]
        errs.append(float((e - exact_one_position(dist, process, sched, x_t, t, t - h)).abs().max()))
    for a, b in zip(errs[:-1], errs[1:]):
        assert 3.5 < a / b < 4.5


def test_euler_is_exact_per_position_for_absorbing_noise_with_linear_alpha(dist):
    """With α linear in t (log-linear σ̄), Δt·σ(t)·s_v = Δt(−α′)/(1 − α_t)·p(v | x_t) equals the
    exact unmasking probability (α_s − α_t)/(1 − α_t)·p(v | x_t): Euler has no local error."""
    sched = get_schedule("log-linear")
    x = torch.tensor([[MASK, 1], [MASK, MASK]])
    t = 0.6
    log_score = dist.score_fn(ABSORBING, sched)(x, torch.full((2,), t, dtype=F64))
    for h in (0.3, 0.05):
        e = euler_probs(log_score, x, t, h, process=ABSORBING, schedule=sched)
        for i in range(2):
            assert torch.allclose(e[i], exact_one_position(dist, ABSORBING, sched, x[i].tolist(), t, t - h), atol=1e-12)


# ----------------------------------------------------------------------------- the samplers
def tv_bound(n: int, cells: int, delta: float = 1e-3) -> float:
    return 0.5 * math.sqrt((cells - 1) / n) + math.sqrt(math.log(1 / delta) / (2 * n))


@pytest.mark.parametrize("process", [ABSORBING, UNIFORM], ids=["absorbing", "uniform"])
def test_samplers_converge_to_the_data_distribution(process):
    d3 = TokenDistribution.random(K, 3, seed=3, scale=1.5)
    sched = get_schedule("log-linear")
    score = d3.score_fn(process, sched)
    n = 6000
    bound = tv_bound(n, K**3)
    for name in ("sedd-euler", "sedd-tweedie"):
        tvs = []
        for steps in (1, 4, 32):
            x, info = sample_tokens(name, score, (n, 3), process=process, schedule=sched, steps=steps,
                                    generator=torch.Generator().manual_seed(steps))
            assert info["nfe"] == steps + 1  # + the final denoising step
            tvs.append(d3.total_variation(x))
        assert tvs[0] > tvs[1] > tvs[2], (name, tvs)
        assert tvs[0] > 0.15 and tvs[2] < bound, (name, tvs)


@pytest.mark.parametrize("process", [ABSORBING, UNIFORM], ids=["absorbing", "uniform"])
def test_tweedie_is_exact_for_one_token(process):
    p = torch.tensor([0.55, 0.3, 0.15], dtype=F64)
    one = TokenDistribution(p, K, 1)
    x, _ = sample_sedd_tweedie(one.score_fn(process, "log-linear"), (5000, 1), process=process, steps=2,
                               generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(x[:, 0], minlength=K).to(F64)
    assert stats.chisquare(counts.numpy(), (p * 5000).numpy()).pvalue > 1e-3


def tiny_score_net(vocab: int, length: int, seed: int = 0, d: int = 5):
    g = torch.Generator().manual_seed(seed)
    emb, pos = torch.randn(vocab, d, generator=g, dtype=F64), torch.randn(length, d, generator=g, dtype=F64)
    w, tw = torch.randn(d, vocab, generator=g, dtype=F64), torch.randn(d, generator=g, dtype=F64)

    def fn(x_t, t):
        h = emb[x_t] + pos + t.to(F64)[:, None, None] * tw
        h = h + h.mean(1, keepdim=True)
        return (torch.tanh(h)[..., :, None] * w).sum(-2)  # (B, L, V) log-ratios

    return fn


@pytest.mark.parametrize("sampler", [sample_sedd_euler, sample_sedd_tweedie])
@pytest.mark.parametrize("process", [AbsorbingProcess(5, 5), UniformProcess(5)], ids=["absorbing", "uniform"])
def test_fixed_tokens_and_batch_independence(sampler, process):
    fn = tiny_score_net(6, 7, seed=4)
    x_init = torch.full((3, 7), 5)
    x_init[0, :2] = torch.tensor([4, 1])
    x_init[2, [1, 5]] = torch.tensor([0, 3])
    x, info = sampler(fn, x_init, process=process, steps=6, mask_id=5, generator=StackedGenerator([1, 2, 3]))
    fixed = x_init != 5
    assert torch.equal(x[fixed], x_init[fixed]) and ((x >= 0) & (x < 5)).all()
    assert info["nfe"] == 7 and info["tokens_per_s"] > 0
    alone, _ = sampler(fn, x_init[2:], process=process, steps=6, mask_id=5, generator=StackedGenerator([3]))
    assert torch.equal(alone[0], x[2])


def test_sedd_sampler_inputs_are_checked():
    fn = tiny_score_net(6, 4)
    with pytest.raises(ValueError):
        sample_sedd_euler(fn, torch.full((1, 4), 5), process=AbsorbingProcess(5, 5), steps=2, mask_id=4)  # not the process's mask
    with pytest.raises(ValueError):
        sample_sedd_euler(fn, torch.full((1, 4), 5), process=UniformProcess(5), steps=2)  # which positions to generate?
    with pytest.raises(ValueError):
        sample_sedd_tweedie(fn, torch.tensor([[7, 5, 5, 5]]), process=AbsorbingProcess(5, 5), steps=2)
    with pytest.raises(ValueError):
        sample_sedd_tweedie(fn, torch.full((1, 4), 5.0), process=AbsorbingProcess(5, 5), steps=2)
    with pytest.raises(ValueError):
        sample_sedd_tweedie(lambda x, t: fn(x, t)[..., :3], (1, 4), process=AbsorbingProcess(5, 5), steps=2)  # V < K
