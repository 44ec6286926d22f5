"""A step grid optimized for one denoiser and one deterministic solver.

In the spirit of "Align Your Steps" (Sabour, Fidler & Kreis 2024) and of optimal step-size
distillation: the grid is a free parameter of the sampler, so choose it, using only the denoiser,
to make a cheap solve agree with an accurate one. Multistep solvers (DPM-Solver++(2M/3M), UniPC)
weight past data predictions by functions of the step ratios, so their best grid differs from
Euler's: the grid is tuned *through the solver it will be used with*.

Objective (documented once, here). For starting states x_b at σ_max (b = 1..B) let Φ_s(x_b) be the
sample that the solver ``method`` produces on the grid s = (σ_max = s_0 > s_1 > … > s_{n−1} = σ_min, 0)
(the final step σ_min → 0 is the denoise x ← D(x, σ_min), as in every sampler of
:mod:`genspace.sampling.ode`) and Φ_ref(x_b) the same probability-flow ODE solved from the same x_b
by Heun's method on a fine Karras grid to σ_min, followed by the same denoise. The objective is the
mean squared global error of the final sample,

    J(s) = 1/B Σ_b ‖Φ_s(x_b) − Φ_ref(x_b)‖² / d        (d = elements per example).

Differentiable solvers. The samplers of :mod:`genspace.sampling.ode` convert the grid to Python
floats (their coefficients are computed in double precision from the grid), which cuts autograd.
This module therefore holds tensor re-implementations of the same update formulas (same operation
order; tested to equal the ode.py samplers to 1e-12 on fixed grids) in which every coefficient is a
function of the σ tensor, so ∂J/∂s flows through the solver's weights and through D(x, σ).

Parametrization: log s_k = log σ_max − L·Σ_{j≤k} softmax(θ)_j with L = log(σ_max/σ_min) and θ ∈ R^{n−1},
so every grid is strictly decreasing with exact endpoints. θ starts at the better (lower J) of the
Karras ρ = 7 grid (Karras et al. 2022, Eq. 5) and the log-SNR-uniform grid, and is improved by Adam
with gradients from autograd (no network parameter receives a gradient: only ∂J/∂θ is computed).
The grid with the lowest J among both initial grids and all iterates is returned, so
J(result) ≤ min(J(Karras), J(log-SNR)) holds on the optimization states by construction. The states
come from ``generator`` only (independent of the noise the grid is later used with).
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch

from genspace.core.random import Generator, randn, randn_like
from genspace.sampling.grids import karras_sigmas, log_snr_uniform_sigmas

__all__ = ["optimized_sigmas", "grid_error", "reference_solution", "solve", "METHODS"]

# solver name (as in genspace.sampling.api) -> (its option names, NFE of a grid of n steps ending in 0)
METHODS = {
    "euler": ((), lambda n: n),
    "heun": ((), lambda n: 2 * n - 1),
    "dpm-solver-2": ((), lambda n: 2 * n - 1),
    "dpmpp-2m": ((), lambda n: n),
    "dpmpp-3m": ((), lambda n: n),
    "unipc": (("order", "variant", "corrector"), lambda n: n),
}


# ----------------------------------------------------------------------------- differentiable solvers
def _phi(h: torch.Tensor, k: int) -> torch.Tensor:
    """c_k(h) of :func:`genspace.sampling.ode.phi` for a 0-dim tensor h (same series / recurrence)."""
    if float(h.detach()) < 1.0:
        total, term, j = torch.zeros_like(h), h ** (k + 1) / math.factorial(k + 1), 0
        while True:
            total = total + term
            j += 1
            term = term * (-h / (k + 1 + j))
            if abs(float(term.detach())) <= 1e-18 * abs(float(total.detach())) or j > 60:
                return total
    c = -torch.expm1(-h)
    for m in range(1, k + 1):
        c = h**m / math.factorial(m) - c
    return c


def _check_grid(sigmas: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(sigmas) or sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(f"sigmas must be a 1-D tensor of at least 2 values, got {getattr(sigmas, 'shape', sigmas)}")
    s = sigmas.detach().to(torch.float64)
    if not torch.isfinite(s).all() or (s[:-1] <= 0).any() or s[-1] < 0 or (s[1:] >= s[:-1]).any():
        raise ValueError("sigmas must be finite, strictly decreasing and > 0 (only the last may be 0)")
    return sigmas.to(torch.float64)


def _den(denoiser, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return denoiser(x, sigma.to(x.dtype).expand(x.shape[0]))


def _euler(denoiser, x, s):
    for i in range(s.shape[0] - 1):
        sigma, sigma_next = s[i], s[i + 1]
        denoised = _den(denoiser, x, sigma)
        if float(sigma_next.detach()) == 0:
            x = denoised
        else:
            ratio = sigma_next / sigma
            x = ratio * x + (1 - ratio) * denoised
    return x


def _heun(denoiser, x, s):
    for i in range(s.shape[0] - 1):
        sigma, sigma_next = s[i], s[i + 1]
        denoised = _den(denoiser, x, sigma)
        if float(sigma_next.detach()) == 0:
            x = denoised
            continue
        d = (x - denoised) / sigma
        x_euler = x + (sigma_next - sigma) * d
        d_next = (x_euler - _den(denoiser, x_euler, sigma_next)) / sigma_next
        x = x + (sigma_next - sigma) * 0.5 * (d + d_next)
    return x


def _dpm_solver_2(denoiser, x, s):
    for i in range(s.shape[0] - 1):
        sigma, sigma_next = s[i], s[i + 1]
        denoised = _den(denoiser, x, sigma)
        if float(sigma_next.detach()) == 0:
            x = denoised
            continue
        sigma_mid = torch.sqrt(sigma * sigma_next)
        u = x + (sigma_mid - sigma) * (x - denoised) / sigma
        eps_mid = (u - _den(denoiser, u, sigma_mid)) / sigma_mid
        x = x + (sigma_next - sigma) * eps_mid
    return x


def _dpmpp_2m(denoiser, x, s):
    d_prev, h_prev = None, None
    for i in range(s.shape[0] - 1):
        sigma, sigma_next = s[i], s[i + 1]
        denoised = _den(denoiser, x, sigma)
        if float(sigma_next.detach()) == 0:
            x = denoised
            continue
        h = torch.log(sigma / sigma_next)
        if d_prev is None:
            d_bar = denoised
        else:
            w = 1 / (2 * (h_prev / h))
            d_bar = (1 + w) * denoised - w * d_prev
        x = (sigma_next / sigma) * x + (-torch.expm1(-h)) * d_bar
        d_prev, h_prev = denoised, h
    return x


def _dpmpp_3m(denoiser, x, s):
    hist: list = []
    for i in range(s.shape[0] - 1):
        sigma, sigma_next = s[i], s[i + 1]
        denoised = _den(denoiser, x, sigma)
        hist = (hist + [(-torch.log(sigma), denoised)])[-3:]
        if float(sigma_next.detach()) == 0:
            x = denoised
            continue
        h = torch.log(sigma / sigma_next)
        x = (sigma_next / sigma) * x + _phi(h, 0) * denoised
        if len(hist) >= 2:
            (lam1, d1), (lam0, d0) = hist[-2], hist[-1]
            h1 = lam0 - lam1
            delta1 = (d0 - d1) / h1
            if len(hist) == 3:
                lam2, d2 = hist[0]
                h2 = lam1 - lam2
                curv = (delta1 - (d1 - d2) / h2) / (h1 + h2)
                x = x + _phi(h, 1) * (delta1 + h1 * curv) + _phi(h, 2) * (2 * curv)
            else:
                x = x + _phi(h, 1) * delta1
    return x


def _unipc_update(x, ratio, h, base, diffs, rs, variant):
    """Tensor form of ode._unipc_update / ode._unipc_weights (Zhao et al. 2023, Eq. 5/8, R·a = g)."""
    out = ratio * x + _phi(h, 0) * base
    if not rs:
        return out
    b_h = h if variant == "bh1" else -torch.expm1(-h)
    p = len(rs)
    if p == 1:
        a = [0.5]
    else:
        rs_t = [r if torch.is_tensor(r) else h.new_tensor(r) for r in rs]
        rmat = torch.stack([torch.stack([r ** (k - 1) for r in rs_t]) for k in range(1, p + 1)])
        g = torch.stack([math.factorial(k) * _phi(h, k) / (h**k * b_h) for k in range(1, p + 1)])
        a = list(torch.linalg.solve(rmat, g).unbind(0))
    for a_m, r_m, diff in zip(a, rs, diffs):
        out = out + (b_h * a_m / r_m) * diff
    return out


def _unipc(denoiser, x, s, order: int = 3, variant: str = "bh2", corrector: bool = True):
    if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= 4:
        raise ValueError(f"UniPC order must be an integer in 1..4, got {order!r}")
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"unknown UniPC variant {variant!r}; choose one of ['bh1', 'bh2']")
    n = s.shape[0] - 1
    lams = [-torch.log(s[0])]
    outs = [_den(denoiser, x, s[0])]
    denoised = outs[0]
    x_prev = None
    for i in range(n):
        sigma, sigma_next = s[i], s[i + 1]
        if i > 0:
            denoised = _den(denoiser, x, sigma)
            lams.append(-torch.log(sigma))
            outs.append(denoised)
            if corrector:
                x_start, p_used = x_prev
                lam_s, d_s = lams[-2], outs[-2]
                h_c = lams[-1] - lam_s
                past = list(range(len(lams) - 3, len(lams) - 3 - (p_used - 1), -1))
                rs = [(lams[j] - lam_s) / h_c for j in past] + [1.0]
                diffs = [outs[j] - d_s for j in past] + [outs[-1] - d_s]
                x = _unipc_update(x_start, sigma / s[i - 1], h_c, d_s, diffs, rs, variant)
            lams, outs = lams[-order - 1 :], outs[-order - 1 :]
        if float(sigma_next.detach()) == 0:
            x = denoised
            continue
        p_used = min(order, len(outs))
        h = torch.log(sigma / sigma_next)
        lam_s, d_s = lams[-1], outs[-1]
        past = list(range(len(lams) - 2, len(lams) - 2 - (p_used - 1), -1))
        rs = [(lams[j] - lam_s) / h for j in past]
        diffs = [outs[j] - d_s for j in past]
        x_prev = (x, p_used)
        x = _unipc_update(x, sigma_next / sigma, h, d_s, diffs, rs, variant)
    return x


_SOLVERS = {
    "euler": _euler,
    "heun": _heun,
    "dpm-solver-2": _dpm_solver_2,
    "dpmpp-2m": _dpmpp_2m,
    "dpmpp-3m": _dpmpp_3m,
    "unipc": _unipc,
}


def _check_method(method: str, method_options: Optional[dict]) -> dict:
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    options = dict(method_options or {})
    bad = sorted(set(options) - set(METHODS[method][0]))
    if bad:
        raise ValueError(f"unknown option(s) {bad} for method {method!r}; valid: {list(METHODS[method][0])}")
    return options


def solve(denoiser, x: torch.Tensor, sigmas: torch.Tensor, method: str = "euler", **options) -> torch.Tensor:
    """Run the deterministic sampler ``method`` with every coefficient a function of the σ tensor.

    Equals ``genspace.sampling.ode.sample_<method>(denoiser, x, sigmas, **options)`` (same update
    formulas, same operation order; equal to ~1e-12), but is differentiable in ``sigmas`` (and x).

    Args:
        x: (B, ...) states at sigmas[0]; sigmas: (n+1,) strictly decreasing, ending in 0 or > 0;
        method: one of :data:`METHODS`; options: the sampler's options (UniPC: order, variant,
        corrector). Returns (B, ...) states at sigmas[-1].
    """
    options = _check_method(method, options)
    return _SOLVERS[method](denoiser, x, _check_grid(sigmas), **options)


def reference_solution(denoiser, x: torch.Tensor, sigma_min: float, sigma_max: float, steps: int = 256) -> torch.Tensor:
    """Φ_ref: Heun on a Karras ρ = 7 grid of ``steps`` σ values from σ_max to σ_min, then the denoise.

    x: (B, ...) states at σ_max. Returns (B, ...) final samples (no gradient).
    """
    with torch.no_grad():
        return _heun(denoiser, x, karras_sigmas(steps, sigma_min, sigma_max))


def grid_error(
    denoiser,
    sigmas: torch.Tensor,
    x: torch.Tensor,
    *,
    method: str = "euler",
    method_options: Optional[dict] = None,
    reference: Optional[torch.Tensor] = None,
    reference_steps: int = 256,
) -> torch.Tensor:
    """The objective J(sigmas) of the module docstring, a 0-dim tensor (differentiable in sigmas).

    Args:
        sigmas: (n+1,) decreasing grid ending with 0; x: (B, ...) states at sigmas[0];
        method, method_options: the solver (:data:`METHODS`) and its options;
        reference: Φ_ref(x) if already computed, else it is computed with ``reference_steps``.
    """
    options = _check_method(method, method_options)
    sigmas = _check_grid(sigmas)
    if reference is None:
        reference = reference_solution(denoiser, x, float(sigmas[-2]), float(sigmas[0]), reference_steps)
    out = _SOLVERS[method](denoiser, x, sigmas, **options)
    return (out - reference).pow(2).flatten(1).mean(1).mean()


def _grid_from_logits(theta: torch.Tensor, sigma_min: float, sigma_max: float) -> torch.Tensor:
    log_max, span = math.log(sigma_max), math.log(sigma_max / sigma_min)
    interior = torch.exp(log_max - span * torch.cumsum(torch.softmax(theta, 0), 0)[:-1])
    ends = theta.new_tensor
    return torch.cat([ends([sigma_max]), interior, ends([sigma_min]), ends([0.0])])


def _logits_of(grid: torch.Tensor) -> torch.Tensor:
    increments = -torch.diff(torch.log(grid[:-1]))  # (n−1,) log-σ increments
    return torch.log(increments / increments.sum())


def _is_valid(grid: torch.Tensor, sigma_min: float, sigma_max: float) -> bool:
    s = grid[:-1]
    return bool((s[1:] < s[:-1]).all() and s[0] == sigma_max and s[-1] == sigma_min and torch.isfinite(s).all())


def optimized_sigmas(
    denoiser,
    n: int,
    sigma_min: float,
    sigma_max: float,
    *,
    x_init: Union[None, torch.Tensor, Callable[[int, Generator], torch.Tensor]] = None,
    shape: Optional[tuple[int, ...]] = None,
    method: str = "euler",
    method_options: Optional[dict] = None,
    n_samples: int = 256,
    iterations: int = 50,
    lr: float = 0.05,
    reference_steps: int = 256,
    generator: Generator = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """A σ grid of n values (σ_max … σ_min) plus 0 that minimizes J for ``method`` (module docstring).

    Args:
        denoiser: D(x, σ) in σ-space; must be differentiable in x and σ (autograd).
        n: number of σ values before the appended 0 (= number of steps; NFE n for euler, dpmpp-2m,
            dpmpp-3m and unipc, 2n − 1 for heun and dpm-solver-2).
        x_init: the starting states at σ_max, one of
            - a tensor (B, ...) used as is (``n_samples`` is ignored);
            - a callable ``(n_samples, generator) -> x0`` drawing data, then x = x0 + σ_max·ε
              (the exact prior);
            - None: x = σ_max·ε with ε of shape (n_samples, *shape) (``shape`` required).
        method: the solver the grid is tuned for, one of :data:`METHODS` (euler, heun,
            dpm-solver-2, dpmpp-2m, dpmpp-3m, unipc) — use the grid with that sampler.
        method_options: that sampler's options, e.g. {"order": 2} for unipc (default: its defaults).
        iterations: Adam steps on the logits; lr: their learning rate.
        reference_steps: Heun steps of the reference solve Φ_ref.
        generator: the only source of randomness (draws of ε and of the data sampler); use one
            independent of the noise the grid will be evaluated on.
        dtype: dtype of the states when x_init is not a tensor.
    Returns:
        (n+1,) float64 grid, strictly decreasing from exactly σ_max to exactly σ_min, then 0.
    """
    options = _check_method(method, method_options)
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if not 0 < sigma_min < sigma_max < math.inf:
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    if iterations < 0 or n_samples < 1 or reference_steps < 2 or not lr > 0:
        raise ValueError(
            f"need iterations >= 0, n_samples >= 1, reference_steps >= 2 and lr > 0, got iterations={iterations}, "
            f"n_samples={n_samples}, reference_steps={reference_steps}, lr={lr}"
        )
    n, sigma_min, sigma_max = int(n), float(sigma_min), float(sigma_max)

    if torch.is_tensor(x_init):
        x = x_init.detach()
    elif callable(x_init):
        x0 = x_init(n_samples, generator).detach().to(dtype)
        x = x0 + sigma_max * randn_like(x0, generator)
    elif x_init is None:
        if shape is None:
            raise ValueError("optimized_sigmas needs x_init (tensor or data sampler) or shape when x_init is None")
        x = sigma_max * randn((n_samples, *shape), generator=generator, dtype=dtype)
    else:
        raise ValueError(
            f"x_init must be None, a tensor or a callable (n, generator) -> x0, got {type(x_init).__name__}"
        )

    karras = karras_sigmas(n, sigma_min, sigma_max)
    if n <= 2:  # no interior σ to place
        return karras
    reference = reference_solution(denoiser, x, sigma_min, sigma_max, reference_steps)
    solver = _SOLVERS[method]

    def objective(grid: torch.Tensor) -> torch.Tensor:
        return (solver(denoiser, x, grid, **options) - reference).pow(2).flatten(1).mean(1).mean()

    best_grid, best = None, math.inf
    with torch.no_grad():
        for start in (karras, log_snr_uniform_sigmas(n, sigma_min, sigma_max)):
            value = float(objective(start))
            if value < best or best_grid is None:
                best_grid, best = start, value
    theta = _logits_of(best_grid).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([theta], lr=lr)
    with torch.enable_grad():
        for it in range(iterations):
            grid = _grid_from_logits(theta, sigma_min, sigma_max)
            value = objective(grid)
            if not torch.isfinite(value):
                break
            if float(value.detach()) < best:
                candidate = grid.detach().clone()
                if _is_valid(candidate, sigma_min, sigma_max):
                    best, best_grid = float(value.detach()), candidate
            (grad,) = torch.autograd.grad(value, [theta])
            optimizer.zero_grad(set_to_none=True)
            theta.grad = grad
            optimizer.step()
        else:
            with torch.no_grad():
                grid = _grid_from_logits(theta, sigma_min, sigma_max)
                value = float(objective(grid))
            if value < best and _is_valid(grid, sigma_min, sigma_max):
                best, best_grid = value, grid.clone()
    return best_grid
