"""Exact log-likelihood through the probability-flow ODE (Chen et al. 2018; Song et al. 2021, App. D.2).

In σ-space (x = x0 + σ·ε) the probability-flow ODE of a denoiser D is (Karras et al. 2022, Eq. 3
with s = 1)

    dx/dσ = f(x, σ) = (x − D(x, σ)) / σ,

and along its solutions the density obeys the instantaneous change of variables
(Chen et al. 2018, Thm. 1): d log p_σ(x(σ)) / dσ = −div_x f(x(σ), σ). Integrating from σ_min
(the data end) up to σ_max,

    log p_{σmin}(x(σmin)) = log p_{σmax}(x(σmax)) + ∫_{σmin}^{σmax} div_x f(x(σ), σ) dσ.

We integrate in u = log σ, which makes the ODE well conditioned over many decades of σ:

    dx/du = x − D(x, e^u),        dΔ/du = div_x (x − D) = dim − div_x D,

with Δ(u_min) = 0, so log p_{σmin}(x) = log p_prior(x(σmax)) + Δ(u_max). The prior is by
default the exact Gaussian N(0, σ_max² I) (the limit of p_σ for σ ≫ data scale); ``prior_std``
replaces σ_max by another standard deviation (e.g. √(σ_max² + σ_data²)) and ``prior_log_prob``
by any callable (e.g. an analytic p_{σmax}, so that only the ODE error remains).

What is computed: the input ``x`` is treated as a sample at noise level σ_min, and the result is
log p_{σmin}(x), the model's density of σ_min-noisy data evaluated at x. With ``add_noise=True``
the input is first perturbed, x ← x + σ_min·ε, which gives a one-sample estimate of the
likelihood of the noisy data x0 + σ_min·ε instead of the density at the clean point.

Divergence: ``"exact"`` uses one vector–Jacobian product per dimension (fine in low dimension);
``"hutchinson"`` (Hutchinson 1989; Grathwohl et al. 2019, FFJORD) uses εᵀ J_D ε with probes ε
drawn once per example before the solve and kept fixed along it, which is an unbiased estimate of
tr J_D. Only the denoiser's Jacobian is estimated; the trace of the identity (= dim) is exact.

The examples of a batch must not interact inside the denoiser (no batch statistics), since the
divergence is read off per-example rows of a batched Jacobian.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from genspace.core.denoiser import Denoiser
from genspace.core.odeint import ADAPTIVE_METHODS, odeint_adaptive
from genspace.core.random import Generator, rand, randn, randn_like

DIVERGENCES = ("exact", "hutchinson")
PROBES = ("gaussian", "rademacher")


@dataclass
class LikelihoodResult:
    """Output of :func:`log_likelihood` (all per-example tensors have shape (B,), in nats)."""

    log_prob: torch.Tensor  # (B,) log p_{σmin}(x) = prior_log_prob + delta_log_prob
    prior_log_prob: torch.Tensor  # (B,) log prior density at z = x(σ_max)
    delta_log_prob: torch.Tensor  # (B,) ∫ div_x f dσ along the trajectory
    z: torch.Tensor  # (B, ...) the state x(σ_max) the ODE maps x to
    nfe: int  # denoiser forward evaluations
    steps: int  # accepted solver steps
    rejected: int  # rejected solver steps
    estimator: str  # "exact" or "hutchinson(<probe>, n_probes=<n>)"


# ---------------------------------------------------------------------------------- divergence
def draw_probes(
    x: torch.Tensor, n_probes: int = 1, *, probe: str = "gaussian", generator: Generator = None
) -> torch.Tensor:
    """(n_probes, B, ...) probe vectors with E[ε εᵀ] = I: standard normal or Rademacher (±1).

    Drawn as (B, n_probes, ...) so that a StackedGenerator gives each example its own probes.
    """
    if probe not in PROBES:
        raise ValueError(f"unknown probe {probe!r}; choose one of {list(PROBES)}")
    if int(n_probes) != n_probes or n_probes < 1:
        raise ValueError(f"n_probes must be an integer >= 1, got {n_probes}")
    shape = (x.shape[0], int(n_probes), *x.shape[1:])
    if probe == "gaussian":
        eps = randn(shape, generator=generator, dtype=x.dtype, device=x.device)
    else:
        eps = torch.where(rand(shape, generator=generator, dtype=x.dtype, device=x.device) < 0.5, -1.0, 1.0).to(x.dtype)
    return eps.movedim(1, 0).contiguous()


def estimate_divergence(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, probes: Optional[torch.Tensor] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example divergence tr(∂fn/∂x) of a map fn: (B, ...) → (B, ...) that acts per example.

    Args:
        fn: the map; evaluated once, with gradients enabled.
        x: (B, ...) the point.
        probes: None for the exact trace (one vector–Jacobian product per dimension), or
            (P, B, ...) probe vectors for the Hutchinson estimate (1/P) Σ_p ε_pᵀ J ε_p.

    Returns:
        ``(fn(x), div)`` both detached: (B, ...) and (B,).
    """
    b = x.shape[0]
    dim = x[0].numel()
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        out = fn(xr)
        if out.shape != x.shape:
            raise ValueError(f"fn returned shape {tuple(out.shape)} for input shape {tuple(x.shape)}")
        if probes is None:
            div = torch.zeros(b, dtype=x.dtype, device=x.device)
            flat = out.reshape(b, dim)
            for i in range(dim):
                (row,) = torch.autograd.grad(flat[:, i].sum(), xr, retain_graph=i < dim - 1)
                div = div + row.reshape(b, dim)[:, i]
        else:
            if probes.shape[1:] != x.shape:
                raise ValueError(f"probes must have shape (P, {', '.join(map(str, x.shape))}), got {tuple(probes.shape)}")
            n = probes.shape[0]
            div = torch.zeros(b, dtype=x.dtype, device=x.device)
            for p in range(n):
                (vjp,) = torch.autograd.grad(out, xr, grad_outputs=probes[p], retain_graph=p < n - 1)
                div = div + (vjp * probes[p]).reshape(b, dim).sum(1)
            div = div / n
    return out.detach(), div.detach()


# ---------------------------------------------------------------------------------- likelihood
def gaussian_log_prob(z: torch.Tensor, std: float) -> torch.Tensor:
    """(B,) log N(z; 0, std² I) per example."""
    d = z[0].numel()
    zz = z.reshape(z.shape[0], d)
    return -0.5 * (zz**2).sum(1) / std**2 - d * math.log(std) - 0.5 * d * math.log(2 * math.pi)


def log_likelihood(
    denoiser: Denoiser,
    x: torch.Tensor,
    *,
    sigma_min: float,
    sigma_max: float,
    divergence: str = "exact",
    probe: str = "gaussian",
    n_probes: int = 1,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "dopri5",
    generator: Generator = None,
    prior_std: Optional[float] = None,
    prior_log_prob: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    add_noise: bool = False,
    **cond,
) -> LikelihoodResult:
    """log p_{σmin}(x) of a denoiser's probability-flow ODE (Song et al. 2021, Eq. 39 / App. D.2).

    Args:
        denoiser: ``D(x, sigma, **cond)`` in σ-space; examples must not interact.
        x: (B, ...) points, treated as samples at noise level σ_min. Use float64 for tight
            tolerances.
        sigma_min, sigma_max: the integration range 0 < σ_min < σ_max.
        divergence: ``"exact"`` or ``"hutchinson"``.
        probe, n_probes: Hutchinson probe distribution (``"gaussian"``/``"rademacher"``) and the
            number of probes per example, drawn once from ``generator`` and fixed over the solve.
        rtol, atol, method: tolerances and pair of :func:`genspace.core.odeint.odeint_adaptive`.
        generator: randomness for probes and for ``add_noise``.
        prior_std: standard deviation s of the prior N(0, s² I) at σ_max (default σ_max).
        prior_log_prob: a callable z (B, ...) → (B,) replacing the Gaussian prior (exclusive with
            ``prior_std``), e.g. an analytic log p_{σmax}.
        add_noise: first replace x by x + σ_min·ε (ε from ``generator``).
        **cond: conditioning passed to the denoiser.

    Returns:
        :class:`LikelihoodResult` with ``log_prob`` (B,) in nats.
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; choose one of {list(DIVERGENCES)}")
    if method not in ADAPTIVE_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(ADAPTIVE_METHODS)}")
    sigma_min, sigma_max = float(sigma_min), float(sigma_max)
    if not (math.isfinite(sigma_min) and math.isfinite(sigma_max) and 0 < sigma_min < sigma_max):
        raise ValueError(f"need 0 < sigma_min < sigma_max (finite), got sigma_min={sigma_min}, sigma_max={sigma_max}")
    if prior_std is not None and prior_log_prob is not None:
        raise ValueError("give at most one of prior_std and prior_log_prob")
    if prior_std is not None and not (math.isfinite(prior_std) and prior_std > 0):
        raise ValueError(f"prior_std must be a finite number > 0, got {prior_std}")
    if x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(f"x must have shape (B, ...) with B >= 1, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"x must be floating point, got dtype {x.dtype}")
    process = getattr(denoiser, "process", None)
    if process is not None:
        process.check_sigma(torch.tensor([sigma_min, sigma_max], dtype=torch.float64), what="[sigma_min, sigma_max]")

    probes = None
    estimator = "exact"
    if divergence == "hutchinson":
        probes = draw_probes(x, n_probes, probe=probe, generator=generator)
        estimator = f"hutchinson({probe}, n_probes={int(n_probes)})"
    if add_noise:
        x = x + sigma_min * randn_like(x, generator)

    prior = (lambda z: gaussian_log_prob(z, sigma_max if prior_std is None else prior_std)) if prior_log_prob is None else prior_log_prob
    # dx/du = x − D(x, e^u): the linear part (trace = dim, exact) plus −1 × the denoiser
    return ode_log_likelihood(
        lambda y, u: denoiser(y, torch.exp(u).to(y.dtype).expand(y.shape[0]), **cond),
        x, math.log(sigma_min), math.log(sigma_max), linear=1.0, scale=-1.0, probes=probes,
        prior_log_prob=prior, rtol=rtol, atol=atol, method=method, estimator=estimator,
    )


def ode_log_likelihood(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    t0: float,
    t1: float,
    *,
    linear: float = 0.0,
    scale: float = 1.0,
    probes: Optional[torch.Tensor] = None,
    prior_log_prob: Callable[[torch.Tensor], torch.Tensor],
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "dopri5",
    estimator: str = "exact",
) -> LikelihoodResult:
    """The instantaneous change of variables (Chen et al. 2018, Thm. 1) for any ODE of the form

        dx/dt = linear · x + scale · fn(x, t),   d log p(x(t))/dt = −(linear · dim + scale · div fn),

    integrated from x(t0) = x to t1 by :func:`~genspace.core.odeint.odeint_adaptive`:
    log p_{t0}(x) = prior_log_prob(x(t1)) + ∫_{t0}^{t1} (linear · dim + scale · div fn) dt.
    The trace of the linear part is exact; ``div fn`` is exact (``probes=None``) or Hutchinson's
    estimate with fixed ``probes`` (:func:`estimate_divergence`). The probability-flow ODE of a
    denoiser is ``fn = D``, linear 1, scale −1 in u = log σ (:func:`log_likelihood`); a CNF
    (FFJORD) is ``fn = v``, linear 0, scale 1 (:class:`genspace.families.cnf.CNF`).

    Args:
        fn: ``(y (B, ...), t 0-d tensor) -> (B, ...)``; examples must not interact.
        x: (B, ...) starting points.
        prior_log_prob: ``z (B, ...) -> (B,)`` at t1.
        estimator: the label stored in the result.
    """
    b = x.shape[0]
    dim = x[0].numel()
    calls = [0]

    def rhs(t: torch.Tensor, state: tuple) -> tuple:
        xt, _ = state
        calls[0] += 1
        out, div = estimate_divergence(lambda y: fn(y, t), xt, probes)
        velocity = scale * out if linear == 0 else linear * xt + scale * out
        return velocity, linear * dim + scale * div

    state0 = (x.detach(), torch.zeros(b, dtype=x.dtype, device=x.device))
    (z, delta), info = odeint_adaptive(rhs, state0, float(t0), float(t1), rtol=rtol, atol=atol, method=method)
    prior = prior_log_prob(z)
    if prior.shape != (b,):
        raise ValueError(f"prior_log_prob must return shape ({b},), got {tuple(prior.shape)}")
    prior = prior.to(dtype=x.dtype, device=x.device)
    return LikelihoodResult(
        log_prob=prior + delta,
        prior_log_prob=prior,
        delta_log_prob=delta,
        z=z,
        nfe=calls[0],
        steps=info["steps"],
        rejected=info["rejected"],
        estimator=estimator,
    )


# ---------------------------------------------------------------------------------- units
def nats_per_dim(log_prob_nats, dim: int, *, n_bits: Optional[int] = 8, data_range: float = 2.0, n_levels: Optional[int] = None):
    """Negative log-likelihood per dimension in nats, with the discretization term.

    Data with L levels (L = 2^n_bits, or ``n_levels`` for data such as the 17 grey levels of
    scikit-learn's digits) scaled to an interval of length ``data_range`` (e.g. {0,…,255} →
    [−1, 1]: Δ = 2/256) and uniformly dequantized has a discrete probability
    P(x) = ∫_bin p ≈ p(x)·Δ^D, so −log P(x)/D = −(log p(x) + D·log Δ)/D with
    Δ = data_range / L. ``n_bits=None`` (and no ``n_levels``) gives the continuous −log p(x)/D.
    """
    if int(dim) != dim or dim < 1:
        raise ValueError(f"dim must be an integer >= 1, got {dim}")
    nll = -log_prob_nats / dim
    if n_levels is not None:
        if isinstance(n_levels, bool) or int(n_levels) != n_levels or n_levels < 2:
            raise ValueError(f"n_levels must be an integer >= 2, got {n_levels}")
        log_levels = math.log(int(n_levels))
    elif n_bits is None:
        return nll
    else:
        if int(n_bits) != n_bits or n_bits < 1:
            raise ValueError(f"n_bits must be an integer >= 1 or None, got {n_bits}")
        log_levels = n_bits * math.log(2.0)
    if not (math.isfinite(data_range) and data_range > 0):
        raise ValueError(f"data_range must be a finite number > 0, got {data_range}")
    log_delta = math.log(data_range) - log_levels
    return nll - log_delta


def bits_per_dim(log_prob_nats, dim: int, *, n_bits: Optional[int] = 8, data_range: float = 2.0, n_levels: Optional[int] = None):
    """Bits per dimension: −log₂ P(x)/D = −(log p(x) + D·log Δ)/(D·ln 2), Δ = data_range/L.

    Equivalently bpd = −log p(x)/(D ln 2) + log₂ L − log₂(data_range); a density uniform on the
    data interval scores exactly log₂ L (n_bits for L = 2^n_bits). See :func:`nats_per_dim`.
    """
    return nats_per_dim(log_prob_nats, dim, n_bits=n_bits, data_range=data_range, n_levels=n_levels) / math.log(2.0)
