"""Exact conversions between what a network can predict: ε, x0, v, velocity and score.

Notation (Kingma et al. 2021; Salimans & Ho 2022; Lipman et al. 2024): a process writes

    x_t = α_t·x0 + σ̃_t·ε,     α = s(t),  σ̃ = s(t)·σ(t)                       (EDM Eq. 4)

with time derivatives α̇ = ṡ and σ̃̇ = ṡ·σ + s·σ̇. The five targets are

    ε          the noise
    x0         the clean data
    v          α·ε − σ̃·x0                          (Salimans & Ho 2022, §4 and App. D;
                                                    general form for α² + σ̃² ≠ 1)
    velocity   u = dx_t/dt = α̇·x0 + σ̃̇·ε            (flow matching; the PF-ODE velocity when
                                                    x0, ε are replaced by E[x0|x_t], E[ε|x_t].
                                                    Linear flow: u = ε − x0)
    score      ∇ log p_t(x_t) = −E[ε|x_t]/σ̃         (Tweedie; score in x_t space)

Any one of them, with x_t, determines the others (for σ̃ > 0, and σ̇ ≠ 0 for the velocity). The
small functions below implement each direction; :func:`convert_prediction` chains them for a
process at time t. All functions broadcast: pass coefficients already shaped like x (see
:func:`coefficients`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from genspace.core.tensor import append_dims

PREDICTIONS = ("eps", "x0", "v", "velocity", "score")


@dataclass(frozen=True)
class Coefficients:
    """α_t, σ̃_t and their time derivatives of x_t = α·x0 + σ̃·ε at some t (all tensors).

    Fields have the shape the caller asked for in :func:`coefficients` (e.g. (B, 1, ..., 1)).
    """

    alpha: torch.Tensor  # α = s(t)
    sigma_t: torch.Tensor  # σ̃ = s(t)·σ(t)
    dalpha: torch.Tensor  # α̇ = ds/dt
    dsigma_t: torch.Tensor  # σ̃̇ = ds/dt·σ + s·dσ/dt


def coefficients(process, t, *, ndim: int | None = None, dtype=None) -> Coefficients:
    """The :class:`Coefficients` of ``process`` at time ``t``.

    Computed in float64 from ``t`` (any shape, typically (B,)), then cast to ``dtype`` (default:
    the dtype of t if it is a floating tensor, else float64) and, if ``ndim`` is given, reshaped
    with trailing singleton dims to broadcast against a batch with ``ndim`` dimensions.
    """
    t_in = torch.as_tensor(t)
    if dtype is None:
        dtype = t_in.dtype if t_in.is_floating_point() else torch.float64
    t64 = t_in.to(torch.float64)
    s, sigma = process.s(t64), process.sigma(t64)
    ds, dsigma = process.ds_dt(t64), process.dsigma_dt(t64)
    values = (s, s * sigma, ds, ds * sigma + s * dsigma)
    out = []
    for v in values:
        v = torch.as_tensor(v, dtype=torch.float64).expand(t64.shape).to(dtype=dtype, device=t_in.device)
        out.append(append_dims(v, ndim) if ndim is not None else v)
    return Coefficients(*out)


# ----------------------------------------------------------------------------- ε and x0
def eps_to_x0(x_t, eps, alpha, sigma_t):
    """x0 = (x_t − σ̃·ε)/α."""
    return (x_t - sigma_t * eps) / alpha


def x0_to_eps(x_t, x0, alpha, sigma_t):
    """ε = (x_t − α·x0)/σ̃."""
    return (x_t - alpha * x0) / sigma_t


# ----------------------------------------------------------------------------- v
def x0_eps_to_v(x0, eps, alpha, sigma_t):
    """v = α·ε − σ̃·x0 (Salimans & Ho 2022)."""
    return alpha * eps - sigma_t * x0


def x0_to_v(x_t, x0, alpha, sigma_t):
    """v from x0: ε = (x_t − α x0)/σ̃, so v = (α x_t − (α² + σ̃²) x0)/σ̃."""
    return (alpha * x_t - (alpha**2 + sigma_t**2) * x0) / sigma_t


def v_to_x0(x_t, v, alpha, sigma_t):
    """x0 = (α·x_t − σ̃·v)/(α² + σ̃²)  (α x_t − σ̃ v = (α² + σ̃²) x0)."""
    return (alpha * x_t - sigma_t * v) / (alpha**2 + sigma_t**2)


def v_to_eps(x_t, v, alpha, sigma_t):
    """ε = (σ̃·x_t + α·v)/(α² + σ̃²)."""
    return (sigma_t * x_t + alpha * v) / (alpha**2 + sigma_t**2)


def eps_to_v(x_t, eps, alpha, sigma_t):
    """v from ε: x0 = (x_t − σ̃ ε)/α, so v = ((α² + σ̃²) ε − σ̃ x_t)/α."""
    return ((alpha**2 + sigma_t**2) * eps - sigma_t * x_t) / alpha


# ----------------------------------------------------------------------------- velocity
def x0_eps_to_velocity(x0, eps, dalpha, dsigma_t):
    """u = α̇·x0 + σ̃̇·ε (the conditional velocity dx_t/dt of x_t = α x0 + σ̃ ε)."""
    return dalpha * x0 + dsigma_t * eps


def x0_to_velocity(x_t, x0, alpha, sigma_t, dalpha, dsigma_t):
    """u from x0: u = α̇ x0 + σ̃̇ (x_t − α x0)/σ̃."""
    return dalpha * x0 + dsigma_t * (x_t - alpha * x0) / sigma_t


def velocity_to_x0(x_t, u, alpha, sigma_t, dalpha, dsigma_t):
    """x0 = (σ̃·u − σ̃̇·x_t)/(σ̃·α̇ − σ̃̇·α); the denominator is −s²·σ̇ (nonzero when σ̇ ≠ 0)."""
    return (sigma_t * u - dsigma_t * x_t) / (sigma_t * dalpha - dsigma_t * alpha)


def eps_to_velocity(x_t, eps, alpha, sigma_t, dalpha, dsigma_t):
    """u from ε: u = α̇ (x_t − σ̃ ε)/α + σ̃̇ ε."""
    return dalpha * (x_t - sigma_t * eps) / alpha + dsigma_t * eps


def velocity_to_eps(x_t, u, alpha, sigma_t, dalpha, dsigma_t):
    """ε = (α·u − α̇·x_t)/(α·σ̃̇ − α̇·σ̃); the denominator is s²·σ̇."""
    return (alpha * u - dalpha * x_t) / (alpha * dsigma_t - dalpha * sigma_t)


# ----------------------------------------------------------------------------- score
def eps_to_score(eps, sigma_t):
    """∇_{x_t} log p_t = −ε/σ̃."""
    return -eps / sigma_t


def score_to_eps(score, sigma_t):
    """ε = −σ̃·score."""
    return -sigma_t * score


def score_to_x0(x_t, score, alpha, sigma_t):
    """Tweedie: x0 = (x_t + σ̃²·score)/α."""
    return (x_t + sigma_t**2 * score) / alpha


def x0_to_score(x_t, x0, alpha, sigma_t):
    """score = (α·x0 − x_t)/σ̃²."""
    return (alpha * x0 - x_t) / sigma_t**2


# ----------------------------------------------------------------------------- generic
def check_prediction(name: str, *, what: str = "prediction") -> str:
    """Return ``name`` if it is one of :data:`PREDICTIONS`, else raise ValueError."""
    if name not in PREDICTIONS:
        raise ValueError(f"unknown {what} {name!r}; choose one of {list(PREDICTIONS)}")
    return name


def _to_x0_eps(pred, x_t, source: str, c: Coefficients):
    """(x0, ε) from a prediction of kind ``source``, each by its direct formula."""
    a, st, da, dst = c.alpha, c.sigma_t, c.dalpha, c.dsigma_t
    if source == "eps":
        return eps_to_x0(x_t, pred, a, st), pred
    if source == "x0":
        return pred, x0_to_eps(x_t, pred, a, st)
    if source == "v":
        return v_to_x0(x_t, pred, a, st), v_to_eps(x_t, pred, a, st)
    if source == "velocity":
        return velocity_to_x0(x_t, pred, a, st, da, dst), velocity_to_eps(x_t, pred, a, st, da, dst)
    # score
    return score_to_x0(x_t, pred, a, st), score_to_eps(pred, st)


def _from_x0_eps(x0, eps, target: str, c: Coefficients):
    if target == "eps":
        return eps
    if target == "x0":
        return x0
    if target == "v":
        return x0_eps_to_v(x0, eps, c.alpha, c.sigma_t)
    if target == "velocity":
        return x0_eps_to_velocity(x0, eps, c.dalpha, c.dsigma_t)
    return eps_to_score(eps, c.sigma_t)


def convert_with_coefficients(pred, x_t, c: Coefficients, *, source: str, target: str):
    """Convert ``pred`` of kind ``source`` into kind ``target`` with given :class:`Coefficients`.

    ``c``'s fields must broadcast against ``x_t``. Goes through the pair (x0, ε), each obtained
    by its own direct formula, so no conversion divides by a coefficient it does not need.
    """
    check_prediction(source, what="source prediction")
    check_prediction(target, what="target prediction")
    if source == target:
        return pred
    x0, eps = _to_x0_eps(pred, x_t, source, c)
    return _from_x0_eps(x0, eps, target, c)


def convert_prediction(pred, x_t, t, process, *, source: str, target: str):
    """Convert a prediction at x_t of ``process`` at time ``t`` from ``source`` to ``target``.

    Args:
        pred: (B, ...) prediction of kind ``source``.
        x_t: (B, ...) the noisy input of the process (x_t = s·(x0 + σ·ε)), not σ-space x̄.
        t: (B,) or scalar process time.
        process: a :class:`~genspace.continuous.processes.Process`.
        source, target: one of ``eps``, ``x0``, ``v``, ``velocity``, ``score``.

    Returns a tensor of the shape and dtype of ``pred``.
    """
    check_prediction(source, what="source prediction")
    check_prediction(target, what="target prediction")
    t = torch.as_tensor(t, device=x_t.device)
    if t.ndim == 0:
        t = t.expand(x_t.shape[0])
    c = coefficients(process, t, ndim=x_t.ndim, dtype=x_t.dtype)
    return convert_with_coefficients(pred, x_t, c, source=source, target=target)
