"""Stochastic samplers in σ-space: DDPM, DDIM(η), EDM Algorithm 2, Euler–Maruyama, ancestral Euler,
DPM-Solver++ 2M/3M SDE.

Every sampler is a plain function ``sample_<name>(denoiser, x, sigmas, *, generator=None,
callback=None, **options) -> x`` on the σ-space state x = x0 + σ·ε (x of shape (B, ...), ``sigmas``
a strictly decreasing 1-D grid, usually ending with 0). Noise is drawn only through
:func:`genspace.core.random.randn_like` with the explicit ``generator``; a step to σ = 0 is a
denoise (x ← D(x, σ_last)) and draws nothing.

One fact ties most of them together. For the forward process x_σ = x0 + σ·ε the transition from σ_s
to σ_t > σ_s adds independent noise of variance σ_t² − σ_s², so the posterior of x_s given (x_t, x0)
is the Brownian bridge

    q(x_s | x_t, x0) = N( x0 + (σ_s²/σ_t²)(x_t − x0),  σ_s²(σ_t² − σ_s²)/σ_t² · I ),

which is exactly the DDPM posterior (Ho et al. 2020, Eq. 6–7) after the change of variables
x_VP = √ᾱ·x with ᾱ = 1/(1+σ²). Replacing x0 by D(x_t, σ_t) gives DDPM ancestral sampling; DDIM with
η = 1, ancestral Euler with η = 1 and first-order DPM-Solver++ SDE with η = 1 are that same step.

NFE per step (the last step, to σ = 0, always costs 1):
    ddpm, ddim, euler_ancestral, euler_maruyama, dpmpp_2m_sde, dpmpp_3m_sde: 1
    edm_stochastic: 2 (Heun), so N steps cost 2N − 1.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from genspace.core.random import Generator, randn_like

__all__ = [
    "sample_ddpm",
    "sample_ddim",
    "sample_edm_stochastic",
    "sample_euler_maruyama",
    "sample_euler_ancestral",
    "sample_dpmpp_2m_sde",
    "sample_dpmpp_3m_sde",
    "ancestral_split",
]

Callback = Optional[Callable[[dict], None]]


# ---------------------------------------------------------------------------------- helpers
def _check(x: torch.Tensor, sigmas: torch.Tensor) -> list[float]:
    """Validate the grid and return it as Python floats (float64 arithmetic for coefficients)."""
    if not torch.is_tensor(x) or x.ndim < 1 or x.shape[0] < 1:
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"x must be a tensor of shape (B, ...) with B >= 1, got {shape}")
    sigmas = torch.as_tensor(sigmas)
    if sigmas.ndim != 1 or sigmas.shape[0] < 2:
        raise ValueError(f"sigmas must be a 1-D tensor with at least 2 entries, got shape {tuple(sigmas.shape)}")
    s = [float(v) for v in sigmas.detach().cpu().to(torch.float64)]
    if not all(math.isfinite(v) for v in s) or min(s) < 0:
        raise ValueError(f"sigmas must be finite and >= 0, got {s}")
    if any(b >= a for a, b in zip(s[:-1], s[1:])):
        raise ValueError(f"sigmas must be strictly decreasing, got {s}")
    return s


def _denoise(denoiser, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """D(x, σ) with σ passed as a (B,) tensor in x's dtype/device."""
    s = torch.tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])
    return denoiser(x, s)


def _report(callback: Callback, i: int, x, sigma: float, sigma_next: float, denoised, **extra) -> None:
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigma, "sigma_next": sigma_next, "denoised": denoised, **extra})


def _check_eta(eta: float, name: str, upper: Optional[float] = None) -> float:
    eta = float(eta)
    if not math.isfinite(eta) or eta < 0 or (upper is not None and eta > upper):
        valid = f"in [0, {upper}]" if upper is not None else ">= 0"
        raise ValueError(f"{name} must be {valid}, got {eta}")
    return eta


# ---------------------------------------------------------------------------------- DDPM
def sample_ddpm(
    denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: Generator = None,
    callback: Callback = None,
    variance: str = "posterior",
) -> torch.Tensor:
    """Ancestral sampling with the DDPM posterior, in σ-space (Ho et al. 2020, Eq. 6–7 and Alg. 2).

    Step σ → σ_next (σ_next > 0), with x0̂ = D(x, σ):

        x ← x0̂ + (σ_next²/σ²)(x − x0̂) + √v · z,   z ~ N(0, I)

    variance="posterior": v = σ_next²(σ² − σ_next²)/σ², the β̃_t of Eq. 7 divided by ᾱ_{t−1}
        (the Brownian-bridge variance; optimal for a deterministic x0).
    variance="beta": v = (σ² − σ_next²)(1 + σ_next²)/(1 + σ²), the choice σ_t² = β_t of Sec. 3.2
        divided by ᾱ_{t−1}; in σ-space it is Var(x_s | x_t) for x0 ~ N(0, I), the case for which
        Ho et al. call it optimal, and it is the larger of the two.

    The mean is the same for both (Eq. 7). The step to σ = 0 returns x0̂ (Alg. 2, z = 0 at t = 1).

    Args:
        x: (B, ...) state at σ = sigmas[0]. sigmas: (N+1,) strictly decreasing.
    Returns: (B, ...) the sample at σ = sigmas[-1]. NFE: one per step.
    """
    s = _check(x, sigmas)
    if variance not in ("posterior", "beta"):
        raise ValueError(f"variance must be one of 'posterior', 'beta', got {variance!r}")
    for i in range(len(s) - 1):
        sigma, sigma_next = s[i], s[i + 1]
        denoised = _denoise(denoiser, x, sigma)
        _report(callback, i, x, sigma, sigma_next, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        ratio = sigma_next**2 / sigma**2
        if variance == "posterior":
            var = sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2
        else:
            var = (sigma**2 - sigma_next**2) * (1 + sigma_next**2) / (1 + sigma**2)
        x = denoised + ratio * (x - denoised) + math.sqrt(var) * randn_like(x, generator)
    return x


# ---------------------------------------------------------------------------------- DDIM
def sample_ddim(
    denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: Generator = None,
    callback: Callback = None,
    eta: float = 0.0,
) -> torch.Tensor:
    """DDIM (Song, Meng & Ermon 2021, Eq. 12 with σ_t(η) of Eq. 16), written in the VP ᾱ form.

    With ᾱ = 1/(1+σ²) and the VP state x̄ = √ᾱ·x, ε̂ = (x − x0̂)/σ and x0̂ = D(x, σ):

        x̄_next = √ᾱ_next·x0̂ + √(1 − ᾱ_next − c²)·ε̂ + c·z,
        c = η·√((1 − ᾱ_next)/(1 − ᾱ))·√(1 − ᾱ/ᾱ_next),

    then x_next = x̄_next/√ᾱ_next. Under this change of variables η = 0 is the Euler step of the
    PF-ODE in σ-space, x + (σ_next − σ)(x − x0̂)/σ, and η = 1 is the DDPM posterior step
    (:func:`sample_ddpm`, variance="posterior").

    Args:
        eta: η ∈ [0, 1] (Eq. 16 interpolates DDIM (0) and DDPM (1)).
    Returns: (B, ...) sample. NFE: one per step; draws noise only when η > 0 and σ_next > 0.
    """
    s = _check(x, sigmas)
    eta = _check_eta(eta, "eta", upper=1.0)
    for i in range(len(s) - 1):
        sigma, sigma_next = s[i], s[i + 1]
        denoised = _denoise(denoiser, x, sigma)
        _report(callback, i, x, sigma, sigma_next, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        abar, abar_next = 1 / (1 + sigma**2), 1 / (1 + sigma_next**2)
        eps = (x - denoised) / sigma
        c = eta * math.sqrt((1 - abar_next) / (1 - abar)) * math.sqrt(1 - abar / abar_next)
        x_bar = math.sqrt(abar_next) * denoised + math.sqrt(max(1 - abar_next - c**2, 0.0)) * eps
        if c > 0:
            x_bar = x_bar + c * randn_like(x, generator)
        x = x_bar / math.sqrt(abar_next)
    return x


# ---------------------------------------------------------------------------------- EDM Alg. 2
def sample_edm_stochastic(
    denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: Generator = None,
    callback: Callback = None,
    s_churn: float = 0.0,
    s_min: float = 0.0,
    s_max: float = float("inf"),
    s_noise: float = 1.0,
) -> torch.Tensor:
    """EDM stochastic sampler (Karras et al. 2022, Algorithm 2).

    For each step i of N: γ_i = min(S_churn/N, √2 − 1) if σ_i ∈ [S_min, S_max] else 0;
    σ̂ = (1 + γ_i)σ_i; x̂ = x + √(σ̂² − σ_i²)·S_noise·z; an Euler step of the PF-ODE
    dx/dσ = (x − D(x, σ))/σ from σ̂ to σ_{i+1}, corrected by Heun's trapezoid unless σ_{i+1} = 0
    (then the Euler step is the denoise x = D(x̂, σ̂)). With S_churn = 0 this is Algorithm 1 (Heun).

    The callback sees x = x̂ and sigma = σ̂ (the state the denoiser was called on), plus the grid value
    as ``sigma_grid``.
    Returns: (B, ...) sample. NFE: 2 per step, 1 for the last step to σ = 0 (2N − 1 in all).
    """
    s = _check(x, sigmas)
    s_churn = _check_eta(s_churn, "s_churn")
    s_noise = _check_eta(s_noise, "s_noise")
    if not s_min <= s_max:
        raise ValueError(f"s_min must be <= s_max, got s_min={s_min}, s_max={s_max}")
    n = len(s) - 1
    gamma_max = min(s_churn / n, math.sqrt(2) - 1)
    for i in range(n):
        sigma, sigma_next = s[i], s[i + 1]
        gamma = gamma_max if s_min <= sigma <= s_max else 0.0
        sigma_hat = sigma * (1 + gamma)
        if gamma > 0:
            x = x + math.sqrt(sigma_hat**2 - sigma**2) * s_noise * randn_like(x, generator)
        denoised = _denoise(denoiser, x, sigma_hat)
        _report(callback, i, x, sigma_hat, sigma_next, denoised, sigma_grid=sigma)
        d = (x - denoised) / sigma_hat
        x_next = x + (sigma_next - sigma_hat) * d
        if sigma_next > 0:
            d_next = (x_next - _denoise(denoiser, x_next, sigma_next)) / sigma_next
            x_next = x + (sigma_next - sigma_hat) * 0.5 * (d + d_next)
        x = x_next
    return x


# ---------------------------------------------------------------------------------- Euler–Maruyama
def sample_euler_maruyama(
    denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: Generator = None,
    callback: Callback = None,
) -> torch.Tensor:
    """Euler–Maruyama on the reverse SDE in σ-space (Song et al. 2021, Eq. 6, VE form).

    Forward: dx = √(d[σ²]/dt) dw. Reverse: dx = −(d[σ²]/dt) ∇log p_σ(x) dt + √(d[σ²]/dt) dw̄, with
    ∇log p_σ(x) = (D(x, σ) − x)/σ². Any process x_t = s(t)(x0 + σ(t)ε), VP included, has this reverse
    SDE in σ-space. The drift and the diffusion are frozen at the start of the step and d[σ²] is
    integrated exactly over it (so the step does not depend on how t parametrizes σ; it is the
    "reverse diffusion" predictor of Song et al., Eq. 47):

        x ← x + (σ² − σ_next²)(D − x)/σ² + √(σ² − σ_next²)·z.

    The last step to σ = 0 is a denoise. NFE: one per step. Weak order 1: needs many steps.
    """
    s = _check(x, sigmas)
    for i in range(len(s) - 1):
        sigma, sigma_next = s[i], s[i + 1]
        denoised = _denoise(denoiser, x, sigma)
        _report(callback, i, x, sigma, sigma_next, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        dvar = sigma**2 - sigma_next**2
        x = x + (dvar / sigma**2) * (denoised - x) + math.sqrt(dvar) * randn_like(x, generator)
    return x


# ---------------------------------------------------------------------------------- ancestral Euler
def ancestral_split(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """(σ_down, σ_up) with σ_down² + σ_up² = σ_next².

    σ_up = min(σ_next, η·√(σ_next²(σ² − σ_next²)/σ²)): for η ∈ [0, 1] this is the DDIM noise c/√ᾱ_next
    (Eq. 16) in σ-space, i.e. η times the bridge standard deviation; larger η is capped at σ_next.
    """
    if sigma_next == 0:
        return 0.0, 0.0
    up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    down = math.sqrt(max(sigma_next**2 - up**2, 0.0))
    return down, up


def sample_euler_ancestral(
    denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: Generator = None,
    callback: Callback = None,
    eta: float = 1.0,
) -> torch.Tensor:
    """Ancestral Euler: an Euler step of the PF-ODE to σ_down, then fresh noise of std σ_up.

    Derivation: DDIM's step (Eq. 12) in σ-space is x_next = x0̂ + √(σ_next² − c_σ²)·ε̂ + c_σ·z with
    c_σ = η σ_next √(σ² − σ_next²)/σ. Since x0̂ + σ_down·ε̂ = x + (σ_down − σ)(x − x0̂)/σ is the Euler
    step to σ_down = √(σ_next² − c_σ²), ancestral Euler with σ_up = c_σ is DDIM(η) for η ≤ 1
    (and the DDPM posterior step for η = 1). η > 1 caps σ_up at σ_next (σ_down = 0).

    Args:
        eta: η >= 0. Returns: (B, ...) sample. NFE: one per step.
    """
    s = _check(x, sigmas)
    eta = _check_eta(eta, "eta")
    for i in range(len(s) - 1):
        sigma, sigma_next = s[i], s[i + 1]
        denoised = _denoise(denoiser, x, sigma)
        _report(callback, i, x, sigma, sigma_next, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        sigma_down, sigma_up = ancestral_split(sigma, sigma_next, eta)
        x = x + (sigma_down - sigma) * (x - denoised) / sigma
        if sigma_up > 0:
            x = x + sigma_up * randn_like(x, generator)
    return x


# ---------------------------------------------------------------------------------- DPM-Solver++ SDE
# The family of reverse processes with the marginals of x_σ = x0 + σε, indexed by η >= 0 (the share
# of the forward diffusion g² = d[σ²]/dσ = 2σ that is reinjected):
#     dx = −(1+η)/2 · g² ∇log p_σ(x) dσ + √η g dw̄  =  (1+η)(x − D)/σ dσ + √(2ησ) dw̄,
# η = 0 the PF-ODE, η = 1 the reverse SDE. In λ = −log σ (dσ = −σ dλ) the linear part is exact:
#     x_t = e^{−(1+η)h} x_s + (1+η)∫_0^h e^{−(1+η)(h−u)} D(λ_s+u) du + σ_t √(1 − e^{−2ηh}) z,
# with h = λ_t − λ_s and e^{−(1+η)h} = (σ_t/σ_s)e^{−ηh}; the noise variance is
# 2η∫ e^{−2(1+η)(λ_t−λ)} σ(λ)² dλ = σ_t²(1 − e^{−2ηh}). This is the SDE-DPM-Solver++ of Lu et al.
# 2022b (data prediction, their η = 1). D is then replaced by its polynomial interpolation in λ
# through the current and previous denoiser outputs, D(λ_s+u) ≈ D_s + a·u + b·u², giving (3M, and
# 2M with solver_type="exact"; the default 2M keeps Lu et al.'s simpler second-order weight)
#     x_t = e^{−ch}x_s + I0·D_s + I1·a + I2·b,  I_k = c∫_0^h e^{−c(h−u)} u^k du,  c = 1 + η,
#     I0 = 1 − e^{−ch},  I1 = h − I0/c,  I2 = h² − 2·I1/c.


def _phi_integrals(h: float, c: float) -> tuple[float, float, float]:
    """(I0, I1, I2) of the comment above, computed with expm1 for small c·h."""
    z = c * h
    i0 = -math.expm1(-z)
    if z < 0.1:
        # series avoiding cancellation: I1/h = Σ_{k≥1} (−1)^{k+1} z^k/(k+1)!,
        # I2/h² = 2 Σ_{k≥2} (−1)^k z^{k−1}/(k+1)!  (truncation < 1e-16 relative for z < 0.1)
        i1 = h * sum((-1) ** (k + 1) * z**k / math.factorial(k + 1) for k in range(1, 14))
        i2 = h**2 * 2 * sum((-1) ** k * z ** (k - 1) / math.factorial(k + 1) for k in range(2, 15))
    else:
        i1 = h - i0 / c
        i2 = h**2 - 2 * i1 / c
    return i0, i1, i2


def _dpmpp_sde(
    denoiser, x, sigmas, generator, callback, eta: float, order: int, solver_type: str = "exact"
) -> torch.Tensor:
    s = _check(x, sigmas)
    eta = _check_eta(eta, "eta")
    if solver_type not in ("midpoint", "exact"):
        raise ValueError(f"solver_type must be one of 'midpoint', 'exact', got {solver_type!r}")
    c = 1.0 + eta
    history: list[tuple[float, torch.Tensor]] = []  # (λ, D) of previous steps, newest first
    for i in range(len(s) - 1):
        sigma, sigma_next = s[i], s[i + 1]
        denoised = _denoise(denoiser, x, sigma)
        _report(callback, i, x, sigma, sigma_next, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        lam, lam_next = -math.log(sigma), -math.log(sigma_next)
        h = lam_next - lam
        i0, i1, i2 = _phi_integrals(h, c)
        x_new = (sigma_next / sigma) * math.exp(-eta * h) * x + i0 * denoised
        k = min(order - 1, len(history))  # low-order start-up: use what history exists
        if k >= 1:
            lam1, d1 = history[0]
            f01 = (denoised - d1) / (lam - lam1)  # divided difference D[λ_s, λ_1]
            if k == 1 and solver_type == "midpoint":  # Lu et al.'s D̄ = D_s + (D_s − D_1)·h/(2h_prev)
                x_new = x_new + 0.5 * i0 * h * f01
            elif k == 1:
                x_new = x_new + i1 * f01
            else:
                lam2, d2 = history[1]
                f12 = (d1 - d2) / (lam1 - lam2)
                f012 = (f01 - f12) / (lam - lam2)
                # Newton form D_s + f01·u + f012·u(u + (λ_s − λ_1)) → a = f01 + f012(λ_s − λ_1), b = f012
                x_new = x_new + i1 * (f01 + f012 * (lam - lam1)) + i2 * f012
        if eta > 0:
            x_new = x_new + sigma_next * math.sqrt(-math.expm1(-2 * eta * h)) * randn_like(x, generator)
        x = x_new
        history.insert(0, (lam, denoised))
        del history[order - 1 :]
    return x


def sample_dpmpp_2m_sde(
    denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: Generator = None,
    callback: Callback = None,
    eta: float = 1.0,
    solver_type: str = "midpoint",
) -> torch.Tensor:
    """SDE-DPM-Solver++(2M) (Lu et al. 2022b, data prediction; multistep, second order in λ).

    Step σ_s → σ_t, h = log(σ_s/σ_t), c = 1 + η, D_s = D(x, σ_s), D_1 the previous step's output at
    λ_1 = λ_s − h_1, and f = (D_s − D_1)/h_1:

        x_t = (σ_t/σ_s)e^{−ηh} x + (1 − e^{−ch}) D_s + w·f + σ_t √(1 − e^{−2ηh}) z,

    solver_type="midpoint": w = ½(1 − e^{−ch})·h, Lu et al.'s D̄ = (1 + 1/(2r))D_s − D_1/(2r),
        r = h_1/h (their Algorithm 2; with η = 0 this is DPM-Solver++(2M) of the ODE module);
    solver_type="exact": w = h − (1 − e^{−ch})/c, the exact integral of the linear part when D is
        linear in λ = −log σ (see the module comment), so the step is exact for such D.
    Both are second order. The first step is first order (SDE-DPM-Solver++1); η = 0 gives the
    PF-ODE, η = 1 the reverse SDE.

    Args:
        eta: η >= 0, weight of the reinjected diffusion. Returns: (B, ...) sample. NFE: one per step.
    """
    return _dpmpp_sde(denoiser, x, sigmas, generator, callback, eta, order=2, solver_type=solver_type)


def sample_dpmpp_3m_sde(
    denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: Generator = None,
    callback: Callback = None,
    eta: float = 1.0,
) -> torch.Tensor:
    """SDE-DPM-Solver++(3M): as :func:`sample_dpmpp_2m_sde` with D quadratic in λ.

    D(λ_s + u) ≈ D_s + a·u + b·u² through the last three outputs (Newton divided differences), and
    the step adds I1·a + I2·b with I1 = h − (1 − e^{−ch})/c, I2 = h² − 2·I1/c (exact integrals of
    c·e^{−c(h−u)}u^k). Start-up: first order, then second order. NFE: one per step.
    """
    return _dpmpp_sde(denoiser, x, sigmas, generator, callback, eta, order=3)
