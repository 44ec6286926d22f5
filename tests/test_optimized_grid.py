"""Known-answer tests of the solver-aware optimized step grid (genspace.sampling.optimized_grid).

Oracle: the exact denoiser of GaussianMixture.random(2, 8, seed=0), float64, σ ∈ [0.002, 80] + the
final denoise. Checks: (a) the differentiable solvers equal the ode.py samplers on fixed grids and
their σ-gradients equal finite differences; (b) for every tunable method the optimized grid is a
valid grid whose objective is ≤ both initial grids' and which, on fresh noise from an independent
seed, has a lower final-sample error than the Karras and log-SNR grids at a 10-NFE budget;
(c) sample(grid="optimized") tunes the grid for its own method.
"""

from __future__ import annotations

import pytest
import torch

from genspace.core.gmm import GaussianMixture
from genspace.sampling import ode, sample
from genspace.sampling.api import methods
from genspace.sampling.grids import karras_sigmas, log_snr_uniform_sigmas
from genspace.sampling.optimized_grid import METHODS, grid_error, optimized_sigmas, reference_solution, solve

F64 = torch.float64
SMIN, SMAX = 0.002, 80.0
SAMPLERS = {
    "euler": ode.sample_euler,
    "heun": ode.sample_heun,
    "dpm-solver-2": ode.sample_dpm_solver_2,
    "dpmpp-2m": ode.sample_dpmpp_2m,
    "dpmpp-3m": ode.sample_dpmpp_3m,
    "unipc": ode.sample_unipc,
}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def gmm():
    return GaussianMixture.random(2, 8, seed=0)


# ------------------------------------------------------------------------- (a) the differentiable path
CASES = [(m, {}) for m in SAMPLERS] + [
    ("unipc", {"order": 2}),
    ("unipc", {"order": 4, "variant": "bh1"}),
    ("unipc", {"order": 1}),
    ("unipc", {"corrector": False}),
]


@pytest.mark.parametrize("method,opts", CASES, ids=[f"{m}{o}" for m, o in CASES])
def test_solve_equals_the_ode_sampler(gmm, method, opts):
    x = SMAX * torch.randn(32, 2, generator=gen(1), dtype=F64)
    uneven = torch.tensor([SMAX, 31.0, 9.0, 4.5, 1.1, 0.6, 0.07, 0.02, SMIN, 0.0], dtype=F64)
    for grid in (karras_sigmas(10, SMIN, SMAX), uneven, karras_sigmas(6, SMIN, SMAX)[:-1]):  # last: no final 0
        expected = SAMPLERS[method](gmm, x, grid, **opts)
        torch.testing.assert_close(solve(gmm, x, grid, method, **opts), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", ["dpmpp-2m", "dpmpp-3m", "unipc"])
def test_objective_gradient_matches_finite_differences(gmm, method):
    """∂J/∂σ_k by autograd through the solver weights equals the central difference of J (ode.py path)."""
    x = SMAX * torch.randn(16, 2, generator=gen(2), dtype=F64)
    grid = karras_sigmas(6, SMIN, SMAX)
    ref = reference_solution(gmm, x, SMIN, SMAX, 64)
    s = grid.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(grid_error(gmm, s, x, method=method, reference=ref), [s])

    def j(g):  # the same objective with the ode.py sampler (floats, no autograd)
        return float((SAMPLERS[method](gmm, x, g) - ref).pow(2).mean())

    for k in (1, 2, 3, 4):
        step = 1e-6 * float(grid[k])
        up, down = grid.clone(), grid.clone()
        up[k] += step
        down[k] -= step
        fd = (j(up) - j(down)) / (2 * step)
        assert float(grad[k]) == pytest.approx(fd, rel=1e-4, abs=1e-9), (k, float(grad[k]), fd)


# ------------------------------------------------------------------------- (b) the optimized grids
def _steps_for(method: str, nfe: int) -> int:
    return methods()[method].max_steps(nfe)


@pytest.fixture(scope="module")
def fresh(gmm):
    """Fresh evaluation noise (seed 99, independent of the optimization seed 7) and its reference."""
    x = SMAX * torch.randn(600, 2, generator=gen(99), dtype=F64)
    return x, reference_solution(gmm, x, SMIN, SMAX, 300)


@pytest.mark.parametrize("method", list(METHODS))
def test_optimized_grid_at_10_nfe(gmm, fresh, method):
    n = _steps_for(method, 10)
    assert METHODS[method][1](n) <= 10
    x_opt = SMAX * torch.randn(96, 2, generator=gen(7), dtype=F64)
    grid = optimized_sigmas(gmm, n, SMIN, SMAX, x_init=x_opt, method=method, iterations=25, reference_steps=128)
    # a valid grid with exact endpoints
    assert grid.dtype == F64 and grid.shape == (n + 1,)
    assert grid[0] == SMAX and grid[-2] == SMIN and grid[-1] == 0 and (grid[1:] < grid[:-1]).all()
    # never worse than either initialisation on the optimization states
    ref = reference_solution(gmm, x_opt, SMIN, SMAX, 128)
    karras, logsnr = karras_sigmas(n, SMIN, SMAX), log_snr_uniform_sigmas(n, SMIN, SMAX)
    with torch.no_grad():
        j = {name: float(grid_error(gmm, g, x_opt, method=method, reference=ref))
             for name, g in (("opt", grid), ("karras", karras), ("log-snr", logsnr))}
    assert j["opt"] <= min(j["karras"], j["log-snr"]), j
    # generalizes: lower final-sample RMS error on fresh noise, with the ode.py sampler itself
    x, x_ref = fresh
    err = {name: float((SAMPLERS[method](gmm, x, g) - x_ref).pow(2).mean().sqrt())
           for name, g in (("opt", grid), ("karras", karras), ("log-snr", logsnr))}
    assert err["opt"] < min(err["karras"], err["log-snr"]), err


# ------------------------------------------------------------------------- (c) the sample() entry point
@pytest.mark.parametrize("method", ["dpmpp-3m", "unipc"])
def test_sample_tunes_the_optimized_grid_for_its_method(gmm, method):
    noise = torch.randn(8, 2, generator=gen(5), dtype=F64)
    _, info = sample(gmm, noise, method=method, nfe=6, sigma_min=SMIN, sigma_max=SMAX, grid="optimized",
                     n_samples=32, iterations=3, reference_steps=32, return_info=True)
    kw = dict(shape=(2,), n_samples=32, iterations=3, reference_steps=32)
    expected = optimized_sigmas(gmm, 6, SMIN, SMAX, method=method, generator=gen(0), **kw)
    other = optimized_sigmas(gmm, 6, SMIN, SMAX, method="euler", generator=gen(0), **kw)
    assert torch.equal(info["sigmas"], expected) and info["nfe"] == 6
    assert not torch.equal(expected, other)


def test_bad_inputs_raise(gmm):
    with pytest.raises(ValueError, match="method"):
        optimized_sigmas(gmm, 4, SMIN, SMAX, shape=(2,), method="rk4")
    with pytest.raises(ValueError, match="order"):
        optimized_sigmas(gmm, 4, SMIN, SMAX, shape=(2,), method="dpmpp-2m", method_options={"order": 2})
    with pytest.raises(ValueError, match="order"):
        optimized_sigmas(gmm, 4, SMIN, SMAX, shape=(2,), method="unipc", method_options={"order": 7})
    with pytest.raises(ValueError, match="decreasing"):
        solve(gmm, torch.zeros(2, 2, dtype=F64), torch.tensor([1.0, 2.0, 0.0], dtype=F64), "unipc")
