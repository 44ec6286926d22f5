"""Known-answer tests of the stochastic samplers and of the optimized step grid.

Oracle: genspace.core.gmm.GaussianMixture (exact denoiser, density and samples). Everything runs in
float64 with explicit generators, so every number below is deterministic.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from genspace.core.denoiser import CountingDenoiser
from genspace.core.gmm import GaussianMixture
from genspace.core.random import StackedGenerator, randn_like
from genspace.sampling import ode
from genspace.sampling import stochastic as S
from genspace.sampling.grids import karras_sigmas, log_snr_uniform_sigmas
from genspace.sampling.optimized_grid import grid_error, optimized_sigmas

F64 = torch.float64
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0

# name -> (sampler, options); every sampler of the module, with its stochastic options on
CONFIGS = {
    "ddpm-posterior": (S.sample_ddpm, {"variance": "posterior"}),
    "ddpm-beta": (S.sample_ddpm, {"variance": "beta"}),
    "ddim-eta0.5": (S.sample_ddim, {"eta": 0.5}),
    "edm-churn": (S.sample_edm_stochastic, {"s_churn": 20.0, "s_noise": 1.0}),
    "euler-maruyama": (S.sample_euler_maruyama, {}),
    "euler-ancestral": (S.sample_euler_ancestral, {"eta": 1.0}),
    "dpmpp-2m-sde": (S.sample_dpmpp_2m_sde, {"eta": 1.0}),
    "dpmpp-3m-sde": (S.sample_dpmpp_3m_sde, {"eta": 1.0}),
}
# first-order samplers get 400 log-SNR-uniform steps, the higher-order ones 150 Karras steps
FIRST_ORDER = {"ddpm-posterior", "ddpm-beta", "ddim-eta0.5", "euler-maruyama", "euler-ancestral"}


def long_grid(name: str) -> torch.Tensor:
    if name in FIRST_ORDER:
        return log_snr_uniform_sigmas(400, SIGMA_MIN, SIGMA_MAX)
    return karras_sigmas(150, SIGMA_MIN, SIGMA_MAX)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def energy_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Unbiased energy distance 2E|X−Y| − E|X−X'| − E|Y−Y'| (the within terms skip i = j)."""
    n, m = a.shape[0], b.shape[0]
    return float(
        2 * torch.cdist(a, b).mean()
        - torch.cdist(a, a).sum() / (n * (n - 1))
        - torch.cdist(b, b).sum() / (m * (m - 1))
    )


# ---------------------------------------------------------------------------------- reference solvers
def euler(denoiser, x, sigmas):
    """x ← x + (σ_next − σ)(x − D)/σ; the step to 0 is D."""
    for sigma, sigma_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist()):
        d = denoiser(x, torch.full((x.shape[0],), sigma, dtype=x.dtype))
        x = d if sigma_next == 0 else x + (sigma_next - sigma) * (x - d) / sigma
    return x


def heun(denoiser, x, sigmas):
    """EDM Algorithm 1."""
    b = x.shape[0]
    for sigma, sigma_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist()):
        d = (x - denoiser(x, torch.full((b,), sigma, dtype=x.dtype))) / sigma
        x_next = x + (sigma_next - sigma) * d
        if sigma_next > 0:
            d2 = (x_next - denoiser(x_next, torch.full((b,), sigma_next, dtype=x.dtype))) / sigma_next
            x_next = x + (sigma_next - sigma) * 0.5 * (d + d2)
        x = x_next
    return x


@pytest.fixture(scope="module")
def gmm2():
    return GaussianMixture.random(2, 4, seed=0, scale_range=(0.15, 0.6))


# ---------------------------------------------------------------------------------- (a) equivalences
def test_ddim_eta0_is_euler_in_sigma_space(gmm2):
    sigmas = karras_sigmas(12, SIGMA_MIN, SIGMA_MAX)
    x = SIGMA_MAX * torch.randn(64, 2, generator=gen(0), dtype=F64)
    torch.testing.assert_close(S.sample_ddim(gmm2, x, sigmas, eta=0.0), euler(gmm2, x, sigmas), rtol=0, atol=1e-12)


def test_ddim_eta1_is_ddpm_posterior(gmm2):
    sigmas = karras_sigmas(15, SIGMA_MIN, SIGMA_MAX)
    x = SIGMA_MAX * torch.randn(64, 2, generator=gen(1), dtype=F64)
    a = S.sample_ddim(gmm2, x, sigmas, eta=1.0, generator=gen(7))
    b = S.sample_ddpm(gmm2, x, sigmas, variance="posterior", generator=gen(7))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    # and the draws matter: another seed gives another sample
    assert (S.sample_ddpm(gmm2, x, sigmas, generator=gen(8)) - b).abs().max() > 1e-3


@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
def test_euler_ancestral_is_ddim_eta(gmm2, eta):
    """σ_up = η·σ_next√(σ² − σ_next²)/σ and the Euler step to σ_down is DDIM's Eq. 12 in σ-space."""
    sigmas = karras_sigmas(10, SIGMA_MIN, SIGMA_MAX)
    x = SIGMA_MAX * torch.randn(32, 2, generator=gen(2), dtype=F64)
    a = S.sample_euler_ancestral(gmm2, x, sigmas, eta=eta, generator=gen(3))
    b = S.sample_ddim(gmm2, x, sigmas, eta=eta, generator=gen(3))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("sampler", [S.sample_dpmpp_2m_sde, S.sample_dpmpp_3m_sde])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_dpmpp_sde_first_step_is_ddim(gmm2, sampler, eta):
    """SDE-DPM-Solver++1 with η = 1 is the DDPM posterior step; with η = 0 it is DDIM (= Euler)."""
    sigmas = torch.tensor([5.0, 1.3], dtype=F64)
    x = 5.0 * torch.randn(32, 2, generator=gen(4), dtype=F64)
    a = sampler(gmm2, x, sigmas, eta=eta, generator=gen(5))
    b = S.sample_ddim(gmm2, x, sigmas, eta=eta, generator=gen(5))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "sde,ode_sampler", [(S.sample_dpmpp_2m_sde, ode.sample_dpmpp_2m), (S.sample_dpmpp_3m_sde, ode.sample_dpmpp_3m)]
)
def test_dpmpp_sde_eta0_is_the_ode_solver(gmm2, sde, ode_sampler):
    """η = 0 removes the noise: the SDE solvers reduce to DPM-Solver++(2M)/(3M) of the ODE module."""
    sigmas = karras_sigmas(12, SIGMA_MIN, SIGMA_MAX)
    x = SIGMA_MAX * torch.randn(32, 2, generator=gen(15), dtype=F64)
    torch.testing.assert_close(sde(gmm2, x, sigmas, eta=0.0), ode_sampler(gmm2, x, sigmas), rtol=0, atol=1e-12)


class PolynomialDenoiser:
    """D(x, σ) = Σ_k c_k λ^k with λ = −log σ, independent of x: the PF-ODE/SDE is then linear."""

    def __init__(self, coeffs):
        self.coeffs = [torch.as_tensor(c, dtype=F64) for c in coeffs]  # each (D,)

    def value(self, lam: float) -> torch.Tensor:
        return sum(c * lam**k for k, c in enumerate(self.coeffs))

    def __call__(self, x, sigma):
        lam = -torch.log(sigma)[:, None]
        return sum(c * lam**k for k, c in enumerate(self.coeffs)).expand_as(x).clone()


def exact_step(den: PolynomialDenoiser, x, sigma, sigma_next, eta):
    """Exact transition of dx = (1+η)(x − D)/σ dσ + √(2ησ) dw̄ by Gauss–Legendre quadrature in λ."""
    c = 1 + eta
    lam_s, lam_t = -math.log(sigma), -math.log(sigma_next)
    h = lam_t - lam_s
    nodes, weights = np.polynomial.legendre.leggauss(30)
    u = 0.5 * h * (nodes + 1)
    w = 0.5 * h * weights
    mean = math.exp(-c * h) * x
    for ui, wi in zip(u, w):
        mean = mean + wi * c * math.exp(-c * (h - ui)) * den.value(lam_s + ui)
    var = sum(wi * 2 * eta * math.exp(-2 * c * (h - ui)) * math.exp(-2 * (lam_s + ui)) for ui, wi in zip(u, w))
    return mean, math.sqrt(var)


EXACT_2M = functools.partial(S.sample_dpmpp_2m_sde, solver_type="exact")


@pytest.mark.parametrize("eta", [0.0, 0.5])
@pytest.mark.parametrize("sampler,degree", [(EXACT_2M, 1), (S.sample_dpmpp_3m_sde, 2)])
def test_multistep_sde_exact_for_polynomial_denoiser(sampler, degree, eta):
    """After its start-up steps the k-step method is exact when D is a polynomial of degree k−1 in λ."""
    coeffs = [[0.3, -1.0], [0.7, 0.2], [-0.4, 0.5]][: degree + 1]
    den = PolynomialDenoiser(coeffs)
    sigmas = torch.tensor([10.0, 6.0, 3.1, 2.0, 0.9, 0.5, 0.21, 0.1], dtype=F64)  # uneven steps, no final 0
    x0 = 10.0 * torch.randn(16, 2, generator=gen(6), dtype=F64)
    states = []
    out = sampler(den, x0, sigmas, eta=eta, generator=gen(9), callback=lambda d: states.append(d["x"]))
    states.append(out)
    noise_gen = gen(9)  # replays the sampler's draws: one (16, 2) draw per step when η > 0
    s = sigmas.tolist()
    for i in range(len(s) - 1):
        z = randn_like(x0, noise_gen) if eta > 0 else torch.zeros_like(x0)
        if i < degree:  # start-up steps are lower order
            continue
        mean, std = exact_step(den, states[i], s[i], s[i + 1], eta)
        torch.testing.assert_close(states[i + 1], mean + std * z, rtol=0, atol=1e-11)
    if degree == 2:  # the 2M method is not exact on a quadratic: the test can tell the orders apart
        two = EXACT_2M(den, x0, sigmas, eta=eta, generator=gen(9))
        assert (two - states[-1]).abs().max() > 1e-6


# ---------------------------------------------------------------------------------- exact in distribution
def test_ddpm_beta_variance_is_exact_for_standard_normal_data():
    """For x0 ~ N(0, I), Var(x_s | x_t) = (σ_t² − σ_s²)(1 + σ_s²)/(1 + σ_t²): DDPM with variance="beta"
    samples N(0, (1 + σ_s²) I) exactly at any step count, and the posterior variance does not."""
    gauss = GaussianMixture([1.0], torch.zeros(1, 3), None)
    sigmas = torch.tensor([20.0, 4.0, 1.0, 0.5], dtype=F64)  # three coarse steps, stop at σ = 0.5
    n = 20000
    x = gauss.sample(n, generator=gen(10)) + 20.0 * torch.randn(n, 3, generator=gen(11), dtype=F64)
    target = 1 + 0.5**2
    se = target * math.sqrt(2 / n)  # s.e. of a sample variance of a normal
    var_beta = S.sample_ddpm(gauss, x, sigmas, variance="beta", generator=gen(12)).var(0)
    var_post = S.sample_ddpm(gauss, x, sigmas, variance="posterior", generator=gen(12)).var(0)
    assert ((var_beta - target).abs() < 4 * se).all(), var_beta
    assert ((var_post - target).abs() > 10 * se).all(), var_post


def test_ddpm_posterior_is_exact_for_point_mass_data():
    """For a point mass x0 = μ the bridge posterior is the true reverse transition: x_s ~ N(μ, σ_s² I)."""
    mu = torch.tensor([[1.5, -0.5]], dtype=F64)
    point = GaussianMixture([1.0], mu, torch.tensor([1e-14]))
    sigmas = torch.tensor([30.0, 3.0, 0.8, 0.3], dtype=F64)
    n = 20000
    x = mu + 30.0 * torch.randn(n, 2, generator=gen(13), dtype=F64)
    y = S.sample_ddpm(point, x, sigmas, variance="posterior", generator=gen(14))
    se_var = 0.3**2 * math.sqrt(2 / n)
    assert ((y.var(0) - 0.3**2).abs() < 4 * se_var).all()
    assert ((y.mean(0) - mu[0]).abs() < 4 * 0.3 / math.sqrt(n)).all()


# ---------------------------------------------------------------------------------- (b) distributions
MIXTURES = {"2d-k4": (2, 4, 0), "4d-k3": (4, 3, 1)}
N_SAMPLES, N_REF = 2000, 20000


@pytest.fixture(scope="module")
def mixture_refs():
    """Per mixture: the oracle, exact log-densities of N_REF samples, an exact set for the energy
    distance and that distance's null distribution (8 further exact sets of N_SAMPLES)."""
    refs = {}
    for name, (dim, k, seed) in MIXTURES.items():
        gmm = GaussianMixture.random(dim, k, seed=seed, scale_range=(0.15, 0.6))
        lp_ref = gmm.log_prob(gmm.sample(N_REF, generator=gen(100)))
        ed_ref = gmm.sample(N_SAMPLES, generator=gen(101))
        null = [energy_distance(gmm.sample(N_SAMPLES, generator=gen(200 + j)), ed_ref) for j in range(8)]
        refs[name] = (gmm, lp_ref, ed_ref, torch.tensor(null))
    return refs


@pytest.mark.parametrize("mixture", list(MIXTURES))
@pytest.mark.parametrize("config", list(CONFIGS))
def test_samples_match_mixture(mixture_refs, mixture, config):
    gmm, lp_ref, ed_ref, null = mixture_refs[mixture]
    sampler, opts = CONFIGS[config]
    g = gen(300)
    x = SIGMA_MAX * torch.randn(N_SAMPLES, gmm.dim, generator=g, dtype=F64)
    y = sampler(gmm, x, long_grid(config), generator=g, **opts)
    lp = gmm.log_prob(y)
    diff = float(lp.mean() - lp_ref.mean())
    se = math.sqrt(float(lp.var()) / N_SAMPLES + float(lp_ref.var()) / N_REF)
    assert abs(diff) < 4 * se, f"{config} on {mixture}: mean log p differs by {diff:.4f} (s.e. {se:.4f})"
    ed = energy_distance(y, ed_ref)
    bound = float(null.mean() + 4 * null.std())
    assert ed < bound, f"{config} on {mixture}: energy distance {ed:.5f} above the floor bound {bound:.5f}"


# ---------------------------------------------------------------------------------- (c) Gaussian data
@pytest.mark.parametrize("config", list(CONFIGS))
def test_gaussian_data_is_preserved(config):
    """Exact prior x = x0 + σ_max ε with x0 ~ N(μ, Σ): the samples' mean and covariance are μ, Σ."""
    mu = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=gen(20), dtype=F64))
    cov = q @ torch.diag(torch.tensor([0.2, 0.7, 1.5], dtype=F64)) @ q.T
    gauss = GaussianMixture([1.0], mu[None], cov[None])
    n = 4000
    x = gauss.sample(n, generator=gen(21)) + SIGMA_MAX * torch.randn(n, 3, generator=gen(22), dtype=F64)
    sampler, opts = CONFIGS[config]
    y = sampler(gauss, x, long_grid(config), generator=gen(23), **opts)
    # mean: n (m − μ)ᵀ Σ⁻¹ (m − μ) ~ χ²(3); its 0.9995 quantile is 17.7
    dm = y.mean(0) - mu
    assert float(n * dm @ torch.linalg.solve(cov, dm)) < 17.7
    # covariance entries: s.e. of the sample covariance √((Σ_ii Σ_jj + Σ_ij²)/n)
    se = torch.sqrt((cov.diag()[:, None] * cov.diag()[None, :] + cov**2) / n)
    z = (torch.cov(y.T) - cov) / se
    assert z.abs().max() < 4.5, z


# ---------------------------------------------------------------------------------- (d) reproducibility
@pytest.mark.parametrize("config", list(CONFIGS))
def test_reproducible_and_batch_independent(gmm2, config):
    sampler, opts = CONFIGS[config]
    sigmas = karras_sigmas(10, SIGMA_MIN, SIGMA_MAX)
    x = SIGMA_MAX * torch.randn(16, 2, generator=gen(30), dtype=F64)
    a = sampler(gmm2, x, sigmas, generator=gen(31), **opts)
    b = sampler(gmm2, x, sigmas, generator=gen(31), **opts)
    assert torch.equal(a, b)

    seeds = [40 + i for i in range(6)]
    stacked = StackedGenerator(seeds)
    xb = SIGMA_MAX * randn_like(torch.empty(6, 2, dtype=F64), stacked)
    batch = sampler(gmm2, xb, sigmas, generator=stacked, **opts)
    for i in (0, 3, 5):
        alone = StackedGenerator([seeds[i]])
        xi = SIGMA_MAX * randn_like(torch.empty(1, 2, dtype=F64), alone)
        yi = sampler(gmm2, xi, sigmas, generator=alone, **opts)
        torch.testing.assert_close(yi[0], batch[i], rtol=1e-13, atol=1e-13)


# ---------------------------------------------------------------------------------- (e) EDM Alg. 2
def test_edm_without_churn_is_heun(gmm2):
    sigmas = karras_sigmas(12, SIGMA_MIN, SIGMA_MAX)
    x = SIGMA_MAX * torch.randn(64, 2, generator=gen(50), dtype=F64)
    ref = heun(gmm2, x, sigmas)
    torch.testing.assert_close(S.sample_edm_stochastic(gmm2, x, sigmas, s_churn=0.0), ref, rtol=0, atol=1e-12)
    # churn switched off by the [S_min, S_max] window is Heun too; inside it, it is not
    out = S.sample_edm_stochastic(gmm2, x, sigmas, s_churn=40.0, s_min=100.0, s_max=200.0, generator=gen(51))
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    out = S.sample_edm_stochastic(gmm2, x, sigmas, s_churn=40.0, generator=gen(51))
    assert (out - ref).abs().max() > 1e-3


@pytest.mark.parametrize("config", list(CONFIGS))
def test_nfe_per_step(gmm2, config):
    sampler, opts = CONFIGS[config]
    n = 9
    counting = CountingDenoiser(gmm2)
    x = SIGMA_MAX * torch.randn(8, 2, generator=gen(60), dtype=F64)
    sampler(counting, x, karras_sigmas(n, SIGMA_MIN, SIGMA_MAX), generator=gen(61), **opts)
    assert counting.nfe == (2 * n - 1 if config == "edm-churn" else n)


@pytest.mark.parametrize(
    "call",
    [
        lambda g, x, s: S.sample_ddpm(g, x, s, variance="large"),
        lambda g, x, s: S.sample_ddim(g, x, s, eta=1.5),
        lambda g, x, s: S.sample_dpmpp_2m_sde(g, x, s, solver_type="heun"),
        lambda g, x, s: S.sample_euler_ancestral(g, x, s, eta=-0.1),
        lambda g, x, s: S.sample_dpmpp_2m_sde(g, x, s.flip(0)),  # increasing grid
        lambda g, x, s: S.sample_euler_maruyama(g, x, s[:1]),  # a single σ
        lambda g, x, s: S.sample_edm_stochastic(g, x, s, s_min=2.0, s_max=1.0),
    ],
)
def test_bad_options_raise(gmm2, call):
    x = torch.zeros(2, 2, dtype=F64)
    with pytest.raises(ValueError):
        call(gmm2, x, karras_sigmas(4, SIGMA_MIN, SIGMA_MAX))


# ---------------------------------------------------------------------------------- (f) optimized grid
@pytest.fixture(scope="module")
def optimized(gmm2):
    n = 6
    x = SIGMA_MAX * torch.randn(128, 2, generator=gen(70), dtype=F64)
    grid = optimized_sigmas(gmm2, n, SIGMA_MIN, SIGMA_MAX, x_init=x, method="euler", iterations=30)
    return n, x, grid


def test_optimized_grid_shape_and_objective(gmm2, optimized):
    n, x, grid = optimized
    assert grid.dtype == F64 and grid.shape == (n + 1,)
    assert grid[0] == SIGMA_MAX and grid[-2] == SIGMA_MIN and grid[-1] == 0
    assert (grid[1:] < grid[:-1]).all()
    karras = karras_sigmas(n, SIGMA_MIN, SIGMA_MAX)
    assert float(grid_error(gmm2, grid, x)) <= float(grid_error(gmm2, karras, x))


def test_optimized_grid_beats_karras_on_fresh_noise(gmm2, optimized):
    """Euler with 6 steps: the final-sample error against a fine Heun solve from the same fresh noise
    (test's own solvers) is clearly below the Karras grid's."""
    n, _, grid = optimized
    x = SIGMA_MAX * torch.randn(1000, 2, generator=gen(71), dtype=F64)
    ref = heun(gmm2, x, karras_sigmas(200, SIGMA_MIN, SIGMA_MAX))
    err_opt = (euler(gmm2, x, grid) - ref).pow(2).sum(1).mean()
    err_karras = (euler(gmm2, x, karras_sigmas(n, SIGMA_MIN, SIGMA_MAX)) - ref).pow(2).sum(1).mean()
    assert err_opt < 0.7 * err_karras, (float(err_opt), float(err_karras))


def test_optimized_grid_inputs(gmm2):
    data = lambda n, g: gmm2.sample(n, generator=g)  # noqa: E731
    grid = optimized_sigmas(gmm2, 4, 0.01, 10.0, x_init=data, n_samples=32, iterations=2, generator=gen(80))
    assert grid[0] == 10.0 and grid[-2] == 0.01 and (grid[1:] < grid[:-1]).all()
    a = optimized_sigmas(gmm2, 4, 0.01, 10.0, shape=(2,), n_samples=32, iterations=3, generator=gen(81))
    b = optimized_sigmas(gmm2, 4, 0.01, 10.0, shape=(2,), n_samples=32, iterations=3, generator=gen(81))
    assert torch.equal(a, b)
    torch.testing.assert_close(optimized_sigmas(gmm2, 2, 0.01, 10.0, shape=(2,)), karras_sigmas(2, 0.01, 10.0))
    with pytest.raises(ValueError):
        optimized_sigmas(gmm2, 4, 0.01, 10.0, shape=(2,), method="rk4")
    with pytest.raises(ValueError):
        optimized_sigmas(gmm2, 4, 0.01, 10.0)  # neither x_init nor shape
    with pytest.raises(ValueError):
        optimized_sigmas(gmm2, 4, 10.0, 0.01, shape=(2,))
