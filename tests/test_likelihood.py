"""PF-ODE log-likelihood against the exact Gaussian-mixture oracle; Hutchinson; bits/dim units."""

import math

import pytest
import torch

from genspace.continuous.likelihood import (
    bits_per_dim,
    draw_probes,
    estimate_divergence,
    gaussian_log_prob,
    log_likelihood,
    nats_per_dim,
)
from genspace.continuous.processes import get_process
from genspace.core.gmm import GaussianMixture

F64 = torch.float64


def _noisy_samples(gmm, n, sigma, seed):
    g = torch.Generator().manual_seed(seed)
    return gmm.sample(n, generator=g) + sigma * torch.randn(n, gmm.dim, generator=g, dtype=F64)


# ------------------------------------------------------------------------------ exact oracle
@pytest.mark.parametrize(
    "gmm,sigma_min",
    [(GaussianMixture.ring(8, radius=2.0, std=0.1), 0.02), (GaussianMixture.random(2, 4, seed=1), 0.01)],
    ids=["ring8", "random4"],
)
def test_exact_divergence_matches_oracle_density_2d(gmm, sigma_min):
    # With the oracle's own p_{σmax} as prior only the ODE integration error remains.
    sigma_max = 20.0
    x = _noisy_samples(gmm, 32, sigma_min, seed=0)
    ref = gmm.log_prob(x, sigma_min)
    errs = []
    for tol in (1e-4, 1e-7):
        res = log_likelihood(
            gmm, x, sigma_min=sigma_min, sigma_max=sigma_max, rtol=tol, atol=tol,
            prior_log_prob=lambda z: gmm.log_prob(z, sigma_max),
        )
        errs.append(float((res.log_prob - ref).abs().max()) / gmm.dim)
        assert res.estimator == "exact" and res.nfe > 0 and res.z.shape == x.shape
        assert torch.allclose(res.log_prob, res.prior_log_prob + res.delta_log_prob)
    assert errs[1] < 1e-4  # per dimension, tight tolerance
    assert errs[0] < 1e-2  # per dimension, loose tolerance
    assert errs[1] < errs[0]


def test_default_gaussian_prior_with_large_sigma_max():
    # For σ_max ≫ data scale p_{σmax} ≈ N(0, σ_max² I); the log-density difference is O(|μ|/σ_max).
    gmm = GaussianMixture.random(2, 4, seed=1)
    x = _noisy_samples(gmm, 16, 0.01, seed=1)
    with torch.no_grad():  # the solver enables gradients itself
        res = log_likelihood(gmm, x, sigma_min=0.01, sigma_max=300.0, rtol=1e-6, atol=1e-6)
    assert float((res.log_prob - gmm.log_prob(x, 0.01)).abs().max()) / 2 < 1e-2


def test_prior_std_is_exact_for_gaussian_data():
    # data N(0, s² I): p_σmax = N(0, (s² + σ_max²) I), so prior_std = √(s² + σ_max²) is exact even
    # for a small σ_max, while the default N(0, σ_max² I) is biased.
    s, sigma_max = 0.7, 3.0
    gmm = GaussianMixture([1.0], torch.zeros(1, 3, dtype=F64), torch.full((1,), s**2, dtype=F64))
    x = _noisy_samples(gmm, 8, 0.05, seed=2)
    ref = gmm.log_prob(x, 0.05)
    exact = log_likelihood(gmm, x, sigma_min=0.05, sigma_max=sigma_max, prior_std=math.hypot(s, sigma_max),
                           rtol=1e-7, atol=1e-7)
    assert float((exact.log_prob - ref).abs().max()) < 1e-5
    biased = log_likelihood(gmm, x, sigma_min=0.05, sigma_max=sigma_max, rtol=1e-7, atol=1e-7)
    assert float((biased.log_prob - ref).abs().max()) > 1e-2


def test_exact_divergence_8d():
    gmm = GaussianMixture.random(8, 3, seed=2)
    x = _noisy_samples(gmm, 16, 0.02, seed=3)
    res = log_likelihood(gmm, x, sigma_min=0.02, sigma_max=20.0, rtol=1e-6, atol=1e-6,
                         prior_log_prob=lambda z: gmm.log_prob(z, 20.0))
    assert float((res.log_prob - gmm.log_prob(x, 0.02)).abs().max()) / 8 < 1e-3


def test_hutchinson_log_likelihood_is_unbiased_8d():
    # one point replicated: every row gets its own fixed probe, so the rows are independent estimates
    gmm = GaussianMixture.random(8, 3, seed=2)
    x = _noisy_samples(gmm, 1, 0.02, seed=4).expand(96, 8).clone()
    ref = float(gmm.log_prob(x[:1], 0.02))
    prior = lambda z: gmm.log_prob(z, 20.0)  # noqa: E731
    for probe in ("rademacher", "gaussian"):
        g = torch.Generator().manual_seed(5)
        res = log_likelihood(gmm, x, sigma_min=0.02, sigma_max=20.0, divergence="hutchinson", probe=probe,
                             generator=g, rtol=1e-6, atol=1e-6, prior_log_prob=prior)
        assert res.estimator == f"hutchinson({probe}, n_probes=1)"
        err = res.log_prob - ref
        se = float(err.std()) / math.sqrt(len(err))
        assert abs(float(err.mean())) < 4 * se + 1e-3 * 8, (probe, float(err.mean()), se)
        assert float(err.std()) > 1e-3  # genuinely stochastic


# ------------------------------------------------------------------------------ divergence
def test_exact_divergence_matches_autograd_jacobian_trace():
    gmm = GaussianMixture.random(5, 3, seed=7)
    x = _noisy_samples(gmm, 4, 0.3, seed=8)
    sigma = torch.full((4,), 0.3, dtype=F64)
    out, div = estimate_divergence(lambda y: gmm.denoise(y, sigma), x)
    assert torch.allclose(out, gmm.denoise(x, sigma))
    for i in range(4):
        jac = torch.autograd.functional.jacobian(lambda y: gmm.denoise(y[None], sigma[:1])[0], x[i])
        assert abs(float(torch.trace(jac)) - float(div[i])) < 1e-10


def test_hutchinson_unbiased_and_variances_for_linear_map():
    # div of x ↦ A x is tr A. For ε with E[εεᵀ] = I: Var_gauss(εᵀAε) = 2‖A_s‖_F², and
    # Var_rademacher(εᵀAε) = 2(‖A_s‖_F² − Σ_i A_ii²) ≤ Var_gauss  (A_s = (A + Aᵀ)/2).
    g = torch.Generator().manual_seed(0)
    d, n = 6, 20000
    a = torch.randn(d, d, generator=g, dtype=F64) + 2 * torch.eye(d, dtype=F64)
    a_s = 0.5 * (a + a.T)
    x = torch.zeros(n, d, dtype=F64)
    fn = lambda y: y @ a.T  # noqa: E731
    _, exact = estimate_divergence(fn, x[:3])
    assert torch.allclose(exact, torch.trace(a).expand(3), atol=1e-12)
    theory = {
        "gaussian": 2 * float((a_s**2).sum()),
        "rademacher": 2 * float((a_s**2).sum() - (torch.diagonal(a) ** 2).sum()),
    }
    variances = {}
    for probe in ("gaussian", "rademacher"):
        eps = draw_probes(x, 1, probe=probe, generator=g)
        assert eps.shape == (1, n, d)
        _, est = estimate_divergence(fn, x, eps)
        se = float(est.std()) / math.sqrt(n)
        assert abs(float(est.mean()) - float(torch.trace(a))) < 4 * se
        variances[probe] = float(est.var())
        assert abs(variances[probe] / theory[probe] - 1) < 0.1
    assert variances["rademacher"] < variances["gaussian"]
    # averaging P probes divides the variance by P
    _, est4 = estimate_divergence(fn, x[:5000], draw_probes(x[:5000], 4, probe="gaussian", generator=g))
    assert abs(float(est4.var()) / (theory["gaussian"] / 4) - 1) < 0.15


def test_rademacher_exact_for_diagonal_jacobian():
    a = torch.diag(torch.tensor([1.0, -2.0, 0.5], dtype=F64))
    x = torch.randn(50, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    _, est = estimate_divergence(lambda y: y @ a.T, x, draw_probes(x, 2, probe="rademacher"))
    assert torch.allclose(est, torch.full_like(est, -0.5), atol=1e-12)


def test_add_noise_uses_the_generator():
    gmm = GaussianMixture.ring(4, radius=1.0, std=0.2)
    x = gmm.sample(4, generator=torch.Generator().manual_seed(0))
    a = log_likelihood(gmm, x, sigma_min=0.05, sigma_max=50.0, add_noise=True,
                       generator=torch.Generator().manual_seed(3))
    noisy = x + 0.05 * torch.randn(4, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    b = log_likelihood(gmm, noisy, sigma_min=0.05, sigma_max=50.0)
    assert torch.allclose(a.log_prob, b.log_prob, atol=1e-12)


# ------------------------------------------------------------------------------ units
def test_bits_per_dim_uniform_density_gives_n_bits():
    d = 12
    log_p = torch.full((3,), -d * math.log(2.0), dtype=F64)  # uniform on [−1, 1]^D
    assert torch.allclose(bits_per_dim(log_p, d), torch.full((3,), 8.0, dtype=F64), atol=1e-12)
    assert torch.allclose(nats_per_dim(log_p, d), torch.full((3,), 8 * math.log(2), dtype=F64), atol=1e-12)
    assert torch.allclose(bits_per_dim(log_p, d, n_bits=None), torch.ones(3, dtype=F64), atol=1e-12)
    # uniform on [0, 1]^D has log p = 0 → n_bits bits/dim
    assert abs(bits_per_dim(0.0, d, n_bits=5, data_range=1.0) - 5.0) < 1e-12
    # any number of levels (scikit-learn's digits: 17): the uniform density scores log2(17)
    assert torch.allclose(bits_per_dim(log_p, d, n_levels=17), torch.full((3,), math.log2(17), dtype=F64), atol=1e-12)
    assert torch.allclose(bits_per_dim(log_p, d, n_levels=256), bits_per_dim(log_p, d, n_bits=8), atol=1e-12)


def test_bits_per_dim_matches_discrete_probability_of_a_fine_bin():
    # 1-D density N(0.1, 0.3²) on [−1, 1], 256 bins of width Δ = 2/256: −log₂ P(bin) ≈ bpd(log p(center))
    mu, s, delta = 0.1, 0.3, 2 / 256
    center = -1 + delta * (150 + 0.5)
    cdf = lambda v: 0.5 * (1 + math.erf((v - mu) / (s * math.sqrt(2))))  # noqa: E731
    p_bin = cdf(center + delta / 2) - cdf(center - delta / 2)
    log_p = -0.5 * ((center - mu) / s) ** 2 - math.log(s * math.sqrt(2 * math.pi))
    assert abs(bits_per_dim(log_p, 1) - (-math.log2(p_bin))) < 1e-3


def test_gaussian_log_prob():
    z = torch.tensor([[0.0, 0.0], [1.0, -2.0]], dtype=F64)
    ref = torch.distributions.Normal(0.0, 1.5).log_prob(z).sum(1)
    assert torch.allclose(gaussian_log_prob(z, 1.5), ref)


# ------------------------------------------------------------------------------ errors
def test_bad_inputs():
    gmm = GaussianMixture.ring(4)
    x = torch.zeros(2, 2, dtype=F64)
    with pytest.raises(ValueError, match=r"'trace'.*\['exact', 'hutchinson'\]"):
        log_likelihood(gmm, x, sigma_min=0.1, sigma_max=10.0, divergence="trace")
    with pytest.raises(ValueError, match=r"'uniform'.*\['gaussian', 'rademacher'\]"):
        log_likelihood(gmm, x, sigma_min=0.1, sigma_max=10.0, divergence="hutchinson", probe="uniform")
    with pytest.raises(ValueError, match="n_probes"):
        log_likelihood(gmm, x, sigma_min=0.1, sigma_max=10.0, divergence="hutchinson", n_probes=0)
    with pytest.raises(ValueError, match="sigma_min"):
        log_likelihood(gmm, x, sigma_min=10.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="method"):
        log_likelihood(gmm, x, sigma_min=0.1, sigma_max=10.0, method="rk4")
    with pytest.raises(ValueError, match="at most one"):
        log_likelihood(gmm, x, sigma_min=0.1, sigma_max=10.0, prior_std=2.0, prior_log_prob=lambda z: z.sum(1))

    class VPOracle:  # a denoiser that declares the process it was trained under
        process = get_process("vp")

        def __call__(self, x, sigma):
            return gmm.denoise(x, sigma)

    with pytest.raises(ValueError, match="outside the range"):
        log_likelihood(VPOracle(), x, sigma_min=0.1, sigma_max=1e4)
    with pytest.raises(ValueError, match="dim"):
        bits_per_dim(0.0, 0)
    with pytest.raises(ValueError, match="n_bits"):
        bits_per_dim(0.0, 2, n_bits=0)
    with pytest.raises(ValueError, match="n_levels"):
        bits_per_dim(0.0, 2, n_levels=1)
    with pytest.raises(ValueError, match="data_range"):
        nats_per_dim(0.0, 2, data_range=-1.0)
