"""A step grid optimized for one denoiser and one ODE solver.

In the spirit of "Align Your Steps" (Sabour, Fidler & Kreis 2024) and of optimal step-size
distillation: the grid is a free parameter of the sampler, so choose it, using only the denoiser,
to make a cheap solve agree with an accurate one.

Objective (documented once, here). For starting states x_b at σ_max (b = 1..B) let Φ_s(x_b) be the
sample an n-step solver produces on the grid s = (σ_max = s_0 > s_1 > … > s_{n−1} = σ_min, 0) —
n − 1 steps of the probability-flow ODE dx/dσ = (x − D(x, σ))/σ and the final denoise
x ← D(x, σ_min) — and Φ_ref(x_b) the same ODE solved from the same x_b by Heun's method on a fine
Karras grid to σ_min, followed by the same denoise. The objective is the mean squared global error
of the final sample,

    J(s) = 1/B Σ_b ‖Φ_s(x_b) − Φ_ref(x_b)‖² / d        (d = elements per example).

Parametrization: log s_k = log σ_max − L·Σ_{j≤k} softmax(θ)_j with L = log(σ_max/σ_min) and θ ∈ R^{n−1},
so every grid is strictly decreasing with exact endpoints; θ starts at the Karras ρ = 7 grid
(Karras et al. 2022, Eq. 5). θ is improved by Adam with gradients from autograd through the solver
and the denoiser (no network parameter receives a gradient: only ∂J/∂θ is computed). The grid with
the lowest J among the Karras grid and all iterates is returned, so J(result) ≤ J(Karras) holds on
the optimized samples by construction.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch

from genspace.core.random import Generator, randn, randn_like
from genspace.sampling.grids import karras_sigmas

__all__ = ["optimized_sigmas", "grid_error", "reference_solution"]

_METHODS = ("euler", "heun")


def _solve(denoiser, x: torch.Tensor, sigmas: torch.Tensor, method: str) -> torch.Tensor:
    """Euler or Heun on the PF-ODE in σ-space, differentiable in ``sigmas``; final step = denoise."""
    sigmas = sigmas.to(x.dtype)
    b = x.shape[0]
    d_of = lambda y, s: (y - denoiser(y, s.expand(b))) / s  # noqa: E731
    for i in range(sigmas.shape[0] - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        if i == sigmas.shape[0] - 2:  # σ_min → 0: the denoise step
            return denoiser(x, sigma.expand(b))
        d = d_of(x, sigma)
        x_next = x + (sigma_next - sigma) * d
        if method == "heun":
            x_next = x + (sigma_next - sigma) * 0.5 * (d + d_of(x_next, sigma_next))
        x = x_next
    return x


def reference_solution(denoiser, x: torch.Tensor, sigma_min: float, sigma_max: float, steps: int = 256) -> torch.Tensor:
    """Φ_ref: Heun on a Karras ρ = 7 grid of ``steps`` σ values from σ_max to σ_min, then the denoise.

    x: (B, ...) states at σ_max. Returns (B, ...) final samples (no gradient).
    """
    with torch.no_grad():
        return _solve(denoiser, x, karras_sigmas(steps, sigma_min, sigma_max), "heun")


def grid_error(
    denoiser,
    sigmas: torch.Tensor,
    x: torch.Tensor,
    *,
    method: str = "euler",
    reference: Optional[torch.Tensor] = None,
    reference_steps: int = 256,
) -> torch.Tensor:
    """The objective J(sigmas) of the module docstring, a 0-dim tensor (differentiable in sigmas).

    Args:
        sigmas: (n+1,) decreasing grid ending with 0; x: (B, ...) states at sigmas[0];
        reference: Φ_ref(x) if already computed, else it is computed with ``reference_steps``.
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if reference is None:
        reference = reference_solution(denoiser, x, float(sigmas[-2]), float(sigmas[0]), reference_steps)
    out = _solve(denoiser, x, sigmas, method)
    return (out - reference).pow(2).flatten(1).mean(1).mean()


def _grid_from_logits(theta: torch.Tensor, sigma_min: float, sigma_max: float) -> torch.Tensor:
    log_max, span = math.log(sigma_max), math.log(sigma_max / sigma_min)
    interior = torch.exp(log_max - span * torch.cumsum(torch.softmax(theta, 0), 0)[:-1])
    ends = theta.new_tensor
    return torch.cat([ends([sigma_max]), interior, ends([sigma_min]), ends([0.0])])


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
        n: number of σ values before the appended 0 (= number of steps; NFE n for Euler, 2n − 1 for Heun).
        x_init: the starting states at σ_max, one of
            - a tensor (B, ...) used as is (``n_samples`` is ignored);
            - a callable ``(n_samples, generator) -> x0`` drawing data, then x = x0 + σ_max·ε
              (the exact prior);
            - None: x = σ_max·ε with ε of shape (n_samples, *shape) (``shape`` required).
        method: "euler" or "heun", the solver whose step sizes are optimized.
        iterations: Adam steps on the logits; lr: their learning rate.
        reference_steps: Heun steps of the reference solve Φ_ref.
        generator: the only source of randomness (draws of ε and of the data sampler).
        dtype: dtype of the states when x_init is not a tensor.
    Returns:
        (n+1,) float64 grid, strictly decreasing from exactly σ_max to exactly σ_min, then 0.
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
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

    def objective(grid: torch.Tensor) -> torch.Tensor:
        return grid_error(denoiser, grid, x, method=method, reference=reference)

    with torch.no_grad():
        best_grid, best = karras, float(objective(karras))
    increments = -torch.diff(torch.log(karras[:-1]))  # (n−1,) Karras log-σ increments
    theta = torch.log(increments / increments.sum()).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([theta], lr=lr)
    with torch.enable_grad():
        for it in range(iterations + 1):
            grid = _grid_from_logits(theta, sigma_min, sigma_max)
            value = objective(grid)
            candidate = grid.detach().clone()
            if float(value.detach()) < best and _is_valid(candidate, sigma_min, sigma_max):
                best, best_grid = float(value.detach()), candidate
            if it == iterations or not torch.isfinite(value):
                break
            (grad,) = torch.autograd.grad(value, [theta])
            optimizer.zero_grad(set_to_none=True)
            theta.grad = grad
            optimizer.step()
    return best_grid
