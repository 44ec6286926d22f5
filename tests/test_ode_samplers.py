"""Deterministic samplers and the public sample() API, against known answers.

- a point mass (D ≡ μ): the PF-ODE solution x(σ) = μ + (σ/σ_max)(x_max − μ) is reproduced exactly;
- a Gaussian: the closed form x(σ) = μ + U diag(√((λ+σ²)/(λ+σ_max²))) Uᵀ (x_max − μ);
- a multi-modal 2-D mixture: the fitted convergence order against a dopri5 solve at rtol 1e-11;
- equivalences between methods; NFE accounting, validation, reproducibility and batch independence.
"""

import math

import pytest
import torch

from genspace.continuous.processes import get_process
from genspace.core.gmm import GaussianMixture
from genspace.core.random import StackedGenerator, randn
from genspace.sampling import ode
from genspace.sampling.api import methods, sample
from genspace.sampling.grids import karras_sigmas, log_snr_uniform_sigmas, trailing_sigmas

F64 = torch.float64
SMIN, SMAX = 0.02, 80.0

FIXED = {
    "euler": (ode.sample_euler, {}, 1),
    "heun": (ode.sample_heun, {}, 2),
    "dpm-solver-2": (ode.sample_dpm_solver_2, {}, 2),
    "dpmpp-2m": (ode.sample_dpmpp_2m, {}, 2),
    "dpmpp-3m": (ode.sample_dpmpp_3m, {}, 3),
    "unipc-2": (ode.sample_unipc, {"order": 2}, 3),  # UniP-2 + UniC: order 3
    "unipc-3": (ode.sample_unipc, {"order": 3}, 4),  # UniP-3 + UniC: order 4
    "unipc-3-bh1": (ode.sample_unipc, {"order": 3, "variant": "bh1"}, 4),
    "unip-3": (ode.sample_unipc, {"order": 3, "corrector": False}, 3),
}


class Counter:
    """An independent call counter (not genspace's CountingDenoiser)."""

    def __init__(self, fn):
        self.fn, self.calls, self.sigmas = fn, 0, []

    def __call__(self, x, sigma):
        self.calls += 1
        self.sigmas.append(sigma)
        return self.fn(x, sigma)


def point_mass(mu):
    return lambda x, sigma: mu.to(x.dtype).expand_as(x).clone()


def gaussian_closed_form(gm, x_max, sigma_max, sigma):
    """PF-ODE solution for one Gaussian component, per eigen-direction."""
    lam, u, mu = gm._lam[0], gm._u[0], gm.means[0]
    y = (x_max - mu) @ u
    return mu + (y * torch.sqrt((lam + sigma**2) / (lam + sigma_max**2))) @ u.T


@pytest.fixture(scope="module")
def gaussian():
    cov = torch.tensor([[0.5, 0.2, 0.0], [0.2, 0.3, 0.1], [0.0, 0.1, 1.5]], dtype=F64)
    return GaussianMixture([1.0], [[0.5, -1.0, 2.0]], cov[None])


@pytest.fixture(scope="module")
def mixture_problem():
    """A 2-D three-component mixture, starting points and a dopri5 reference at σ_min."""
    gmm = GaussianMixture(
        [0.5, 0.3, 0.2], [[-1.5, 0.0], [1.0, 1.0], [1.0, -1.2]], [[0.3, 0.15], [0.2, 0.4], [0.25, 0.25]]
    )
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=F64) * SMAX
    grid = torch.tensor([SMAX, SMIN], dtype=F64)
    ref = ode.sample_adaptive(gmm, x, grid, rtol=1e-11, atol=1e-11)
    return gmm, x, ref


# ----------------------------------------------------------------------------- exact answers
@pytest.mark.parametrize("name", list(FIXED) + ["adaptive"])
def test_point_mass_is_solved_exactly(name):
    """D ≡ μ: x(σ) = μ + (σ/σ_max)(x_max − μ). Euler/Heun steps in σ and the exponential
    integrators (constant D) are exact on any grid."""
    mu = torch.tensor([0.3, -0.7], dtype=F64)
    den = point_mass(mu)
    x = torch.tensor([[40.0, -20.0], [-5.0, 70.0]], dtype=F64)
    grid = karras_sigmas(3, 0.1, SMAX)
    tol = 1e-12
    if name == "adaptive":  # Runge–Kutta in log σ is not exact for e^u: accurate to its tolerance
        fn, kw, tol = ode.sample_adaptive, {"rtol": 1e-9, "atol": 1e-9}, 1e-7
    else:
        fn, kw, _ = FIXED[name]
    at_min = fn(den, x, grid[:-1], **kw)
    assert torch.allclose(at_min, mu + (0.1 / SMAX) * (x - mu), atol=tol, rtol=0)
    assert torch.allclose(fn(den, x, grid, **kw), mu.expand_as(x), atol=tol, rtol=0)


@pytest.mark.parametrize("name", list(FIXED))
def test_gaussian_closed_form_is_reached_at_the_method_order(gaussian, name):
    fn, kw, order = FIXED[name]
    x = torch.tensor([[1.0, -2.0, 0.7], [-0.4, 0.9, 1.3]], dtype=F64) * SMAX
    exact = gaussian_closed_form(gaussian, x, SMAX, SMIN)
    errors = [(fn(gaussian, x, karras_sigmas(n, SMIN, SMAX)[:-1], **kw) - exact).norm().item() for n in (64, 128)]
    assert errors[1] < (5e-2 if order == 1 else 5e-3)
    assert errors[0] / errors[1] > 2 ** (order - 0.3)
    # the step to σ = 0 is the data prediction at σ_min (EDM Algorithm 1), and D is a contraction
    # for a Gaussian, so the error at σ = 0 stays below the error at σ_min plus D's own bias
    grid = karras_sigmas(128, SMIN, SMAX)
    final = fn(gaussian, x, grid, **kw)
    assert torch.allclose(final, gaussian(fn(gaussian, x, grid[:-1], **kw), SMIN), rtol=1e-12, atol=1e-12)
    exact_final = gaussian(exact, SMIN)
    assert (final - exact_final).norm().item() <= errors[1] * (1 + 1e-9)


def test_adaptive_meets_its_tolerance_on_the_gaussian(gaussian):
    x = torch.tensor([[1.0, -2.0, 0.7], [-0.4, 0.9, 1.3]], dtype=F64) * SMAX
    exact = gaussian_closed_form(gaussian, x, SMAX, SMIN)
    grid = torch.tensor([SMAX, SMIN], dtype=F64)
    errors, nfes = [], []
    for tol in (1e-3, 1e-5, 1e-7):
        y, info = ode.sample_adaptive(gaussian, x, grid, rtol=tol, atol=tol, return_info=True)
        errors.append((y - exact).abs().max().item())
        nfes.append(info["nfe"])
        assert errors[-1] < 10 * tol * max(1.0, exact.abs().max().item())
        assert info["sigmas"][0] == SMAX and info["sigmas"][-1] == SMIN
        assert len(info["sigmas"]) == info["steps"] + 1
    assert errors[0] > errors[1] > errors[2]
    assert nfes[0] < nfes[1] < nfes[2]


# ----------------------------------------------------------------------------- convergence order
@pytest.mark.parametrize("name", list(FIXED))
def test_convergence_order_on_a_multimodal_mixture(mixture_problem, name):
    """Slope of log RMS error vs log steps on karras grids from σ_max = 80 to σ_min = 0.02."""
    gmm, x, ref = mixture_problem
    fn, kw, order = FIXED[name]
    steps = [64, 128, 256] if order == 1 else [32, 64, 128]
    rms = []
    for n in steps:
        y = fn(gmm, x, karras_sigmas(n, SMIN, SMAX)[:-1], **kw)
        rms.append((y - ref).pow(2).sum(1).mean().sqrt().item())
    logn = torch.tensor(steps, dtype=F64).log()
    loge = torch.tensor(rms, dtype=F64).log()
    slope = -((logn - logn.mean()) * (loge - loge.mean())).sum() / ((logn - logn.mean()) ** 2).sum()
    assert abs(slope.item() - order) < 0.35, (name, slope.item(), rms)


# ----------------------------------------------------------------------------- equivalences
def test_uni_p2_with_bh2_is_dpmpp_2m(mixture_problem):
    """UniP-2 with B(h) = 1 − e^{−h} and a_1 = 1/2 is DPM-Solver++(2M) (Zhao et al. 2023, §3.3)."""
    gmm, x, _ = mixture_problem
    grid = karras_sigmas(12, SMIN, SMAX)
    a = ode.sample_unipc(gmm, x, grid, order=2, variant="bh2", corrector=False)
    b = ode.sample_dpmpp_2m(gmm, x, grid)
    assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


def test_first_order_methods_coincide(mixture_problem):
    """Euler in σ-space = DDIM(η=0) = DPM-Solver++ 1st order = UniP-1 (Lu et al. 2022b, §3.4)."""
    gmm, x, _ = mixture_problem
    grid = karras_sigmas(10, SMIN, SMAX)
    euler = ode.sample_euler(gmm, x, grid)
    assert torch.allclose(ode.sample_unipc(gmm, x, grid, order=1, corrector=False), euler, rtol=1e-12, atol=1e-12)
    one_step = torch.tensor([SMAX, 1.0], dtype=F64)
    assert torch.allclose(ode.sample_dpmpp_2m(gmm, x, one_step), ode.sample_euler(gmm, x, one_step), rtol=1e-12)
    stochastic = pytest.importorskip("genspace.sampling.stochastic")
    ddim = stochastic.sample_ddim(gmm, x, grid, eta=0.0)
    assert torch.allclose(ddim, euler, rtol=1e-10, atol=1e-10)


def test_unipc_variants_differ_at_higher_order_only(mixture_problem):
    """bh1 and bh2 change the single-node weight B(h)/2 by O(h²) (UniP-2): both are order 3."""
    gmm, x, ref = mixture_problem
    diffs = []
    for n in (32, 64):
        grid = karras_sigmas(n, SMIN, SMAX)[:-1]
        a = ode.sample_unipc(gmm, x, grid, order=2, variant="bh1")
        b = ode.sample_unipc(gmm, x, grid, order=2, variant="bh2")
        diffs.append((a - b).abs().max().item())
    assert diffs[1] > 0 and diffs[0] / diffs[1] > 2**2.7


def test_phi_functions_match_their_integrals():
    for h in (1e-4, 0.3, 0.99, 1.0, 2.5, 20.0):
        tau = torch.linspace(0, h, 200001, dtype=F64)
        for k in range(4):
            integrand = torch.exp(tau - h) * tau**k / math.factorial(k)
            quad = torch.trapezoid(integrand, tau).item()
            assert math.isclose(ode.phi(h, k), quad, rel_tol=1e-6, abs_tol=1e-18), (h, k)
    assert math.isclose(ode.phi(0.5, 0), -math.expm1(-0.5), rel_tol=1e-15)
    assert math.isclose(ode.phi(3.0, 2), 4.5 - 3.0 + 1 - math.exp(-3.0), rel_tol=1e-14)


# ----------------------------------------------------------------------------- NFE and conventions
@pytest.mark.parametrize(
    "name,per_step", [("euler", 1), ("heun", 2), ("dpm-solver-2", 2), ("dpmpp-2m", 1), ("dpmpp-3m", 1), ("unipc-3", 1)]
)
def test_sampler_nfe_per_grid(mixture_problem, name, per_step):
    gmm, x, _ = mixture_problem
    fn, kw, _ = FIXED[name]
    for grid, final_zero in ((karras_sigmas(7, SMIN, SMAX), True), (karras_sigmas(7, SMIN, SMAX)[:-1], False)):
        den = Counter(gmm)
        fn(den, x, grid, **kw)
        n = len(grid) - 1
        assert den.calls == ((n - 1) * per_step + 1 if final_zero else n * per_step)
        assert all(s.shape == (x.shape[0],) and s.dtype == x.dtype for s in den.sigmas)


def test_float32_stays_float32_and_callback_reports_each_step(mixture_problem):
    gmm, x, _ = mixture_problem
    seen = []
    y = ode.sample_dpmpp_3m(gmm, x.float(), karras_sigmas(6, SMIN, SMAX), callback=seen.append)
    assert y.dtype == torch.float32 and y.shape == x.shape
    assert [d["i"] for d in seen] == list(range(6))
    assert seen[0]["sigma"] == SMAX and seen[-1]["sigma_next"] == 0.0
    assert torch.equal(seen[0]["x"], x.float())


def test_bad_inputs_raise_value_error(mixture_problem):
    gmm, x, _ = mixture_problem
    with pytest.raises(ValueError, match="decreasing"):
        ode.sample_euler(gmm, x, torch.tensor([1.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match="only the last may be 0"):
        ode.sample_heun(gmm, x, torch.tensor([2.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="1..4"):
        ode.sample_unipc(gmm, x, karras_sigmas(3, SMIN, SMAX), order=5)
    with pytest.raises(ValueError, match="bh1"):
        ode.sample_unipc(gmm, x, karras_sigmas(3, SMIN, SMAX), variant="bh3")
    with pytest.raises(ValueError, match="floating"):
        ode.sample_euler(gmm, torch.ones(2, 2, dtype=torch.long), karras_sigmas(3, SMIN, SMAX))


def test_adaptive_respects_max_nfe(mixture_problem):
    gmm, x, _ = mixture_problem
    den = Counter(gmm)
    with pytest.raises(ode.NFEBudgetError, match="nfe=15"):
        ode.sample_adaptive(den, x, karras_sigmas(2, SMIN, SMAX), rtol=1e-6, atol=1e-6, max_nfe=15)
    assert den.calls <= 15
    assert issubclass(ode.NFEBudgetError, ValueError)


# ----------------------------------------------------------------------------- sample() API
ALL_METHODS = list(methods())


def test_registry_covers_ode_and_stochastic_methods():
    reg = methods()
    assert {"euler", "heun", "dpmpp-2m", "dpmpp-3m", "unipc", "adaptive"} <= set(reg)
    assert {"ddpm", "ddim", "edm-stochastic", "euler-maruyama", "euler-ancestral", "dpmpp-2m-sde", "dpmpp-3m-sde"} <= set(reg)
    assert not reg["ddim"].stochastic and reg["ddpm"].stochastic and not reg["heun"].stochastic
    assert reg["heun"].nfe_for_steps(5) == 9 and reg["heun"].nfe_for_steps(5, final_zero=False) == 10
    assert reg["euler"].max_steps(7) == 7 and reg["heun"].max_steps(10) == 5 and reg["heun"].max_steps(1) == 1
    for info in reg.values():
        assert callable(info.fn)


@pytest.mark.parametrize("method", [m for m in ALL_METHODS if m != "adaptive"])
@pytest.mark.parametrize("budget", [1, 2, 7, 10])
def test_sample_nfe_is_exact_and_within_budget(mixture_problem, method, budget):
    gmm, _, _ = mixture_problem
    info = methods()[method]
    den = Counter(gmm)
    noise = randn((3, 2), generator=torch.Generator().manual_seed(1), dtype=F64)
    y, out = sample(den, noise, method=method, nfe=budget, sigma_min=SMIN, sigma_max=SMAX,
                    generator=torch.Generator().manual_seed(2), return_info=True)
    assert y.shape == noise.shape and torch.isfinite(y).all()
    assert den.calls == out["nfe"] == info.nfe_for_steps(out["steps"]) <= budget
    assert info.nfe_for_steps(out["steps"] + 1) > budget  # the largest grid that fits
    assert torch.equal(out["sigmas"], karras_sigmas(out["steps"], SMIN, SMAX))


def test_sample_adaptive_budget(mixture_problem):
    gmm, _, _ = mixture_problem
    noise = randn((3, 2), generator=torch.Generator().manual_seed(1), dtype=F64)
    den = Counter(gmm)
    y, out = sample(den, noise, method="adaptive", nfe=500, sigma_min=SMIN, sigma_max=SMAX, rtol=1e-4, atol=1e-4,
                    return_info=True)
    assert den.calls == out["nfe"] <= 500 and out["sigmas"][-1] == 0
    den = Counter(gmm)
    with pytest.raises(ValueError, match="raise nfe"):
        sample(den, noise, method="adaptive", nfe=12, sigma_min=SMIN, sigma_max=SMAX, rtol=1e-6)
    assert den.calls <= 12
    with pytest.raises(ValueError, match="own steps"):
        sample(gmm, noise, method="adaptive", nfe=100, sigma_min=SMIN, sigma_max=SMAX, grid="karras")


def test_sample_scales_noise_by_sigma_max_and_matches_the_sampler(mixture_problem):
    gmm, _, _ = mixture_problem
    noise = randn((4, 2), generator=torch.Generator().manual_seed(3), dtype=F64)
    seen = []
    y = sample(gmm, noise, method="dpmpp-3m", nfe=10, sigma_min=SMIN, sigma_max=SMAX, callback=seen.append)
    assert torch.equal(seen[0]["x"], noise * SMAX)
    assert torch.equal(y, ode.sample_dpmpp_3m(gmm, noise * SMAX, karras_sigmas(10, SMIN, SMAX)))
    mu = torch.tensor([1.0, -2.0], dtype=F64)
    assert torch.allclose(sample(point_mass(mu), noise, method="heun", nfe=5, sigma_min=SMIN, sigma_max=SMAX),
                          mu.expand_as(noise), atol=1e-12)


def test_sample_routes_grid_and_sampler_options(mixture_problem):
    gmm, _, _ = mixture_problem
    noise = randn((2, 2), generator=torch.Generator().manual_seed(4), dtype=F64)
    _, out = sample(gmm, noise, method="euler", nfe=6, sigma_min=SMIN, sigma_max=SMAX, rho=3.0, return_info=True)
    assert torch.equal(out["sigmas"], karras_sigmas(6, SMIN, SMAX, rho=3.0))
    _, out = sample(gmm, noise, method="unipc", nfe=6, sigma_min=SMIN, sigma_max=SMAX, grid="log-snr", order=2,
                    return_info=True)
    assert torch.equal(out["sigmas"], log_snr_uniform_sigmas(6, SMIN, SMAX))
    # edm-stochastic without churn is Heun (EDM Algorithm 2 reduces to Algorithm 1)
    a = sample(gmm, noise, method="edm-stochastic", nfe=9, sigma_min=SMIN, sigma_max=SMAX, s_churn=0.0)
    b = sample(gmm, noise, method="heun", nfe=9, sigma_min=SMIN, sigma_max=SMAX)
    assert torch.allclose(a, b, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="eta"):
        sample(gmm, noise, method="heun", nfe=6, sigma_min=SMIN, sigma_max=SMAX, eta=0.5)
    with pytest.raises(ValueError, match="shift"):
        sample(gmm, noise, method="euler", nfe=6, sigma_min=SMIN, sigma_max=SMAX, grid="trailing", shift=2.0)


def test_sample_explicit_grid_and_process_checks(mixture_problem):
    gmm, _, _ = mixture_problem
    noise = randn((2, 2), generator=torch.Generator().manual_seed(5), dtype=F64)
    grid = torch.tensor([50.0, 5.0, 0.5, 0.0], dtype=F64)
    den = Counter(gmm)
    y = sample(den, noise, method="heun", nfe=5, sigma_min=0.1, sigma_max=SMAX, grid=grid)
    assert den.calls == 5
    assert torch.equal(y, ode.sample_heun(gmm, noise * 50.0, grid))
    with pytest.raises(ValueError, match="more than nfe=4"):
        sample(gmm, noise, method="heun", nfe=4, sigma_min=0.1, sigma_max=SMAX, grid=grid)
    with pytest.raises(ValueError, match="outside"):
        sample(gmm, noise, method="euler", nfe=5, sigma_min=1.0, sigma_max=SMAX, grid=grid)

    class Adapted:  # a denoiser trained under a process exposes .process
        def __init__(self, process):
            self.process = process

        def __call__(self, x, sigma):
            return gmm(x, sigma)

    vp = Adapted(get_process("vp"))
    with pytest.raises(ValueError, match="sigma_max"):
        sample(vp, noise, method="euler", nfe=5, sigma_min=0.01, sigma_max=1000.0)
    table = Adapted(get_process("ddpm-linear"))
    _, out = sample(table, noise, method="euler", nfe=5, sigma_min=0.02, sigma_max=table.process.sigma_max,
                    grid="trailing", return_info=True)
    assert torch.equal(out["sigmas"], trailing_sigmas(5, table.process))
    _, out = sample(vp, noise, method="euler", nfe=5, sigma_min=0.01, sigma_max=50.0, grid="time-uniform",
                    return_info=True)
    t = vp.process.t_of_sigma(out["sigmas"][:-1])
    assert torch.allclose(torch.diff(t), torch.diff(t).mean().expand(4), rtol=1e-6)


def test_sample_validation_names_the_bad_value(mixture_problem):
    gmm, _, _ = mixture_problem
    noise = torch.zeros(2, 2, dtype=F64)
    kw = dict(nfe=5, sigma_min=SMIN, sigma_max=SMAX)
    with pytest.raises(ValueError, match="'eulr'.*euler"):
        sample(gmm, noise, method="eulr", **kw)
    with pytest.raises(ValueError, match="'karas'.*karras"):
        sample(gmm, noise, method="euler", grid="karas", **kw)
    with pytest.raises(ValueError, match="'rhoo'"):
        sample(gmm, noise, method="euler", rhoo=3.0, **kw)
    with pytest.raises(ValueError, match="nfe"):
        sample(gmm, noise, method="euler", nfe=0, sigma_min=SMIN, sigma_max=SMAX)
    with pytest.raises(ValueError, match="nfe"):
        sample(gmm, noise, method="euler", nfe=2.5, sigma_min=SMIN, sigma_max=SMAX)
    with pytest.raises(ValueError, match="sigma_min must be < sigma_max"):
        sample(gmm, noise, method="euler", nfe=5, sigma_min=SMAX, sigma_max=SMIN)
    with pytest.raises(ValueError, match="floating"):
        sample(gmm, torch.zeros(2, 2, dtype=torch.long), method="euler", **kw)


@pytest.mark.parametrize("method", ["euler-ancestral", "dpmpp-2m-sde", "ddpm", "edm-stochastic"])
def test_sample_is_reproducible_with_the_same_seed(mixture_problem, method):
    gmm, _, _ = mixture_problem
    opts = {"s_churn": 20.0} if method == "edm-stochastic" else {}

    def draw(seed):
        noise = randn((4, 2), generator=torch.Generator().manual_seed(seed), dtype=F64)
        return sample(gmm, noise, method=method, nfe=9, sigma_min=SMIN, sigma_max=SMAX,
                      generator=torch.Generator().manual_seed(seed + 100), **opts)

    assert torch.equal(draw(0), draw(0))
    assert not torch.allclose(draw(0), draw(1))


@pytest.mark.parametrize("method", ["euler", "heun", "dpmpp-3m", "unipc", "euler-ancestral", "dpmpp-3m-sde", "ddim"])
def test_sample_is_batch_size_independent_bitwise(mixture_problem, method):
    """Per-sample seeds: a sample is bit-identical alone or in a batch (float64; the GMM oracle
    is batch-independent bitwise on CPU). Not for 'adaptive', whose steps depend on the batch."""
    gmm, _, _ = mixture_problem
    seeds = [3, 5, 7, 11]
    opts = {"eta": 0.7} if method == "ddim" else {}

    def draw(ss):
        noise = randn((len(ss), 2), generator=StackedGenerator(ss), dtype=F64)
        return sample(gmm, noise, method=method, nfe=8, sigma_min=SMIN, sigma_max=SMAX,
                      generator=StackedGenerator([s + 1000 for s in ss]), **opts)

    batch = draw(seeds)
    alone = torch.cat([draw([s]) for s in seeds])
    assert torch.equal(batch, alone)


def test_sample_with_the_optimized_grid_counts_only_sampling_calls(mixture_problem):
    pytest.importorskip("genspace.sampling.optimized_grid")
    gmm, _, _ = mixture_problem
    noise = randn((2, 2), generator=torch.Generator().manual_seed(6), dtype=F64)
    kw = dict(method="heun", nfe=7, sigma_min=SMIN, sigma_max=SMAX, grid="optimized", return_info=True,
              n_samples=4, iterations=0, reference_steps=4)  # no Adam step: cheap
    den = Counter(gmm)
    y, out = sample(den, noise, **kw)
    assert out["steps"] == 4 and out["nfe"] == 7 and out["sigmas"][0] == SMAX and out["sigmas"][-2] == SMIN
    assert torch.equal(y, sample(gmm, noise, **kw)[0])  # the grid is built with a fixed seed
