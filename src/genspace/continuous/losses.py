"""Training losses: a noise-level distribution × a weighting, as short unreduced callables.

Every diffusion / flow-matching objective of the continuous family is the same expectation

    L(θ) = E_{x0, σ ~ p(σ), ε ~ N(0, I)} [ w(σ) · mean_dims (D_θ(x0 + σ·ε, σ) − x0)² ]     (1)

in σ-space (x = x0 + σ·ε, λ = −2 log σ the log-SNR; Karras et al. 2022 "EDM", Eq. 2 & 8).
A recipe only chooses p(σ) (a *noise-level distribution*) and w(σ) (a *weighting* on the
x0-space MSE). Objectives stated on another target are the same loss with another weight,
because in σ-space every target's error is a multiple of the x0 error (derived below).

Weightings (x0-space weight w(σ); ε-space weight w_ε(λ) = σ²·w(σ), σ = e^{−λ/2}, which is the
w(λ) of Kingma & Gao 2023 "Understanding Diffusion Objectives", Eq. 6 / Fig. 2):

=============  =====================================  ===========================================
name           x0 weight w(σ)                         meaning
=============  =====================================  ===========================================
"x0"           1                                      plain x0-MSE; w_ε = σ² = e^{−λ}
"eps"          1/σ²                                   ε-MSE ||ε − ε̂||² of DDPM's L_simple
                                                      (Ho et al. 2020, Eq. 14); w_ε = 1
"inv-sigma2"   1/σ²                                   EDM Table 1 loss weight λ(σ) of the "VP"
                                                      and "VE" columns; numerically = "eps"
"snr"          SNR(σ) = 1/σ²                          SNR-weighted x0-MSE in the convention of
                                                      Hang et al. 2023 (min-SNR, §3.3: "L_ε =
                                                      SNR·L_x0"), so that "min-snr" is "snr"
                                                      clipped at γ; w_ε = 1, numerically = "eps"
"min-snr"      min(SNR, γ), γ = 5                     min-SNR-γ (Hang et al. 2023, Eq. 8); on the
                                                      ε-MSE w_ε = min(SNR, γ)/SNR = min(1, γσ²)
"v"            1 + 1/σ² = (1 + σ²)/σ²                 v-MSE ||v − v̂||² of the VP process with the
                                                      same σ (Salimans & Ho 2022, v = αε − σ_t x0):
                                                      x0 − x̂0 = σ_t (v̂ − v), σ_t² = σ²/(1+σ²);
                                                      w_ε = 1 + σ² = 1 + e^{−λ}
"velocity"     ((1 + σ)/σ)²                           flow-matching velocity MSE ||u − û||² of the
                                                      linear path x_t = (1−t)x0 + tε, u = ε − x0,
                                                      t = σ/(1+σ): x0 − x̂0 = t(û − u);
                                                      w_ε = (1 + σ)²
"edm"          (σ² + σ_d²)/(σ·σ_d)², σ_d = 0.5        EDM λ(σ) = 1/c_out² (Karras et al. 2022,
                                                      Eq. 8 & Table 1); w_ε = (σ² + σ_d²)/σ_d²
=============  =====================================  ===========================================

The v- and velocity weights depend on σ only, so they are well defined for any process: they are
the v-MSE of the VP process / the velocity MSE of the flow process that share this σ.

Numerics: the loss is computed as mean_dims((r(σ)·(D − x0))²) with the *root* weight
r(σ) = √w(σ) (1/σ for "eps", (1+σ)/σ for "velocity", ...) evaluated in float64, so nothing is
formed as 1/σ² and squared again (no overflow/underflow for tiny σ), and r·(D − x0) is exactly
the residual of the target the weight stands for (ε − ε̂, u − û, ...). The loss sees only D, so
the rounding of D itself (≈ one ulp of |x|, i.e. ≈ 6e-8·max(|x0|, σ|ε|) in float32) is the
floor: relative error ≈ 6e-8·(1+σ)/σ·|x|/|x0 − D| — negligible on the σ ranges of the recipes.
Samplers of σ never return σ = 0 (uniform draws avoid the end where σ(t) = 0).

Noise-level distributions (each reports the density of λ = −2 log σ in closed form by the change
of variables p(λ) = p_t(t)·|dt/dλ|, dλ/dt = −2 σ'(t)/σ(t)):

- :class:`UniformT`        t ~ U[t_min, t_max] of a process, σ = σ(t)   (VP, cosine, flow, ...)
- :class:`DiscreteTimesteps`  integer t uniform in {0, …, N−1} of a β table  (DDPM)
- :class:`LogNormalSigma`  log σ ~ N(P_mean, P_std²)   (EDM, §5 "Loss weighting and sampling")
- :class:`LogUniformSigma` log σ ~ U[log σ_min, log σ_max]   (VE, Song et al. 2021)
- :class:`LogitNormalT`    logit t ~ N(m, s²)   (SD3, Esser et al. 2024, Eq. 19)

:func:`effective_weight_density` multiplies p(λ) by w_ε(λ) and normalizes over a λ grid: the
single curve that says where a recipe spends its effort (Kingma & Gao 2023, Fig. 1–2), so that
EDM, min-SNR, SD3 and rectified flow compare like for like.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import torch

from genspace.continuous.processes import DiscreteVPProcess, FlowProcess, Process, get_process
from genspace.core.random import Generator, rand, randn, randn_like
from genspace.core.tensor import append_dims

# ---------------------------------------------------------------------------------------------
# noise-level distributions
# ---------------------------------------------------------------------------------------------

_LOG_2PI = math.log(2 * math.pi)


def _f64(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float64)


def _gaussian_log_pdf(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    return -0.5 * ((x - mean) / std) ** 2 - math.log(std) - 0.5 * _LOG_2PI


def _uniform_open_low(n: int, generator: Generator, device) -> torch.Tensor:
    """(n,) float64 draws in (0, 1]: 1 − U[0, 1), so that a "t = t_min" end (σ = 0) is never hit."""
    return 1.0 - rand((n,), generator=generator, dtype=torch.float64, device=device)


def _check_n(n: int) -> None:
    if int(n) < 1:
        raise ValueError(f"number of noise levels to draw must be >= 1, got {n}")


def _process_log_density(process: Process, lam: torch.Tensor, log_p_t: Callable) -> torch.Tensor:
    """log p(λ) for t with log density ``log_p_t(t)`` on [t_min, t_max] of a process.

    p(λ) = p_t(t(λ)) / |dλ/dt|, dλ/dt = −2 σ'(t)/σ(t); −inf outside λ(t_max) ≤ λ ≤ λ(t_min).
    """
    lam = _f64(lam)
    lam_lo = -2 * math.log(process.sigma_max)
    s_min = process.sigma_min
    lam_hi = math.inf if s_min <= 0 else -2 * math.log(s_min)
    inside = (lam >= lam_lo) & (lam <= lam_hi)
    inner = lam_lo + 1.0 if math.isinf(lam_hi) else 0.5 * (lam_lo + lam_hi)  # any point of the support
    safe = torch.where(inside, lam, torch.full_like(lam, inner))
    sigma = torch.exp(-0.5 * safe)
    t = process.t_of_sigma(sigma).clamp(process.t_min, process.t_max)
    dlam_dt = 2 * process.dsigma_dt(t) / process.sigma(t)
    out = log_p_t(t) - torch.log(dlam_dt)
    return torch.where(inside, out, torch.full_like(out, -math.inf))


@dataclass(frozen=True)
class UniformT:
    """t ~ U[t_min, t_max] of a process, σ = process.sigma(t) (continuous-time DDPM/VP, cosine, flow).

    Draws are t = t_max − (t_max − t_min)·u with u ∈ (0, 1], so t_min itself (σ = 0 for the
    cosine and flow processes) is never returned.
    """

    process: Process

    def sample(self, n: int, *, generator: Generator = None, device=None, dtype=torch.float32) -> torch.Tensor:
        """(n,) noise levels σ."""
        _check_n(n)
        p = self.process
        t = p.t_max - (p.t_max - p.t_min) * _uniform_open_low(n, generator, device)
        return p.sigma(t).to(dtype)

    def log_density_log_snr(self, lam) -> torch.Tensor:
        """log p(λ) = −log(t_max − t_min) − log|dλ/dt| at t(λ) (change of variables), float64."""
        p = self.process
        log_width = math.log(p.t_max - p.t_min)
        return _process_log_density(p, lam, lambda t: torch.full_like(t, -log_width))


@dataclass(frozen=True)
class DiscreteTimesteps:
    """Integer t uniform in {0, …, N−1} of a DDPM β table; σ = σ_t of the table (Ho et al. 2020, Alg. 1).

    The law of λ is N atoms (see :meth:`atoms`). :meth:`log_density_log_snr` reports the
    histogram density that spreads each atom's mass 1/N uniformly over its cell in λ, the cell
    edges being the midpoints between neighbouring atoms (the two end cells extend by half the
    neighbouring gap). This is exactly the law of λ when t is drawn uniformly from
    [−½, N−½] under the process's linear interpolation of log σ, integrates to 1, and tends to
    the continuous-time density as N grows.
    """

    process: DiscreteVPProcess

    def __post_init__(self) -> None:
        if not isinstance(self.process, DiscreteVPProcess):
            raise ValueError(
                f"DiscreteTimesteps needs a DiscreteVPProcess (ddpm-linear, ddpm-cosine), got {self.process!r}"
            )

    def sample(self, n: int, *, generator: Generator = None, device=None, dtype=torch.float32) -> torch.Tensor:
        """(n,) noise levels σ_t at uniform integer timesteps."""
        return self.process.sigmas.to(device)[self.sample_timesteps(n, generator=generator, device=device)].to(dtype)

    def sample_timesteps(self, n: int, *, generator: Generator = None, device=None) -> torch.Tensor:
        """(n,) int64 timesteps uniform in {0, …, N−1}."""
        _check_n(n)
        n_steps = self.process.n_steps
        u = rand((n,), generator=generator, dtype=torch.float64, device=device)
        return (u * n_steps).floor().long().clamp(max=n_steps - 1)

    def atoms(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(λ_t (N,), probability (N,)) of the exact discrete law, t = 0 … N−1 (λ decreasing in t)."""
        lam = -2 * self.process.log_sigmas
        return lam, torch.full_like(lam, 1.0 / len(lam))

    def _edges(self) -> tuple[torch.Tensor, torch.Tensor]:
        lam = torch.flip(-2 * self.process.log_sigmas, [0])  # increasing
        mid = 0.5 * (lam[1:] + lam[:-1])
        lo = lam[0] - 0.5 * (lam[1] - lam[0])
        hi = lam[-1] + 0.5 * (lam[-1] - lam[-2])
        edges = torch.cat([lo.reshape(1), mid, hi.reshape(1)])
        return lam, edges

    def log_density_log_snr(self, lam) -> torch.Tensor:
        """log of the histogram density (mass 1/N per atom cell, see class doc), float64."""
        lam = _f64(lam)
        _, edges = self._edges()
        width = edges[1:] - edges[:-1]
        idx = torch.searchsorted(edges, lam.reshape(-1).contiguous(), right=True) - 1
        inside = (idx >= 0) & (idx < len(width))
        idx = idx.clamp(0, len(width) - 1)
        out = -math.log(len(width)) - torch.log(width[idx])
        out = torch.where(inside, out, torch.full_like(out, -math.inf))
        return out.reshape(lam.shape)


@dataclass(frozen=True)
class LogNormalSigma:
    """log σ ~ N(P_mean, P_std²) (EDM, Karras et al. 2022, Table 1 "Training"; P_mean = −1.2, P_std = 1.2).

    λ = −2 log σ is then N(−2 P_mean, (2 P_std)²) (for the defaults N(2.4, 2.4²)).
    """

    p_mean: float = -1.2
    p_std: float = 1.2

    def __post_init__(self) -> None:
        if not self.p_std > 0:
            raise ValueError(f"p_std must be > 0, got {self.p_std}")

    def sample(self, n: int, *, generator: Generator = None, device=None, dtype=torch.float32) -> torch.Tensor:
        _check_n(n)
        z = randn((n,), generator=generator, dtype=torch.float64, device=device)
        return torch.exp(self.p_mean + self.p_std * z).to(dtype)

    def log_density_log_snr(self, lam) -> torch.Tensor:
        """log N(λ; −2 P_mean, (2 P_std)²), float64."""
        return _gaussian_log_pdf(_f64(lam), -2 * self.p_mean, 2 * self.p_std)


@dataclass(frozen=True)
class LogUniformSigma:
    """log σ ~ U[log σ_min, log σ_max] (VE / NCSN, Song et al. 2021; EDM Table 1 "VE").

    λ is uniform on [−2 log σ_max, −2 log σ_min] with density 1/(2 log(σ_max/σ_min)).
    """

    sigma_min: float = 0.002
    sigma_max: float = 80.0

    def __post_init__(self) -> None:
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={self.sigma_min}, sigma_max={self.sigma_max}")

    def sample(self, n: int, *, generator: Generator = None, device=None, dtype=torch.float32) -> torch.Tensor:
        _check_n(n)
        u = rand((n,), generator=generator, dtype=torch.float64, device=device)
        lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
        return torch.exp(lo + (hi - lo) * u).to(dtype)

    def log_density_log_snr(self, lam) -> torch.Tensor:
        lam = _f64(lam)
        lo, hi = -2 * math.log(self.sigma_max), -2 * math.log(self.sigma_min)
        val = torch.full_like(lam, -math.log(hi - lo))
        return torch.where((lam >= lo) & (lam <= hi), val, torch.full_like(lam, -math.inf))


@dataclass(frozen=True)
class LogitNormalT:
    """logit t ~ N(m, s²) (SD3 "logit-normal sampling", Esser et al. 2024, Eq. 19), σ = process.sigma(t).

    t is clamped to [t_min, t_max] of the process (for the flow process with m = 0, s = 1 the
    clamped mass is ~1e-20 and is not represented in the density). For the flow process
    σ = t/(1−t) = e^{logit t}, so log σ ~ N(m, s²) and λ ~ N(−2m, 4s²) exactly.
    """

    m: float = 0.0
    s: float = 1.0
    process: Process = field(default_factory=FlowProcess)

    def __post_init__(self) -> None:
        if not self.s > 0:
            raise ValueError(f"s must be > 0, got {self.s}")

    def sample(self, n: int, *, generator: Generator = None, device=None, dtype=torch.float32) -> torch.Tensor:
        _check_n(n)
        z = randn((n,), generator=generator, dtype=torch.float64, device=device)
        t = torch.sigmoid(self.m + self.s * z).clamp(self.process.t_min, self.process.t_max)
        return self.process.sigma(t).to(dtype)

    def log_density_log_snr(self, lam) -> torch.Tensor:
        """log p_t(t(λ)) − log|dλ/dt|, p_t the logit-normal density (Esser et al. 2024, Eq. 19)."""

        def log_p_t(t):
            logit = torch.log(t) - torch.log1p(-t)
            return _gaussian_log_pdf(logit, self.m, self.s) - torch.log(t) - torch.log1p(-t)

        return _process_log_density(self.process, lam, log_p_t)


NoiseDistribution = Union[UniformT, DiscreteTimesteps, LogNormalSigma, LogUniformSigma, LogitNormalT]

# ---------------------------------------------------------------------------------------------
# weightings
# ---------------------------------------------------------------------------------------------


def _root_x0(sigma: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(sigma)


def _root_inv_sigma(sigma: torch.Tensor) -> torch.Tensor:
    return 1 / sigma


def _root_v(sigma: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(1 + sigma**2) / sigma


def _root_velocity(sigma: torch.Tensor) -> torch.Tensor:
    return (1 + sigma) / sigma


_WEIGHTINGS = ("edm", "inv-sigma2", "eps", "snr", "v", "min-snr", "velocity", "x0")


def weighting_names() -> list[str]:
    return list(_WEIGHTINGS)


@dataclass(frozen=True)
class Weighting:
    """A weight on the x0-space MSE as a function of σ (see the module table for each name).

    Args:
        name: one of ``weighting_names()``.
        sigma_data: σ_d of the "edm" weighting (EDM's data standard deviation).
        gamma: γ of "min-snr" (Hang et al. 2023 use 5).
    """

    name: str
    sigma_data: float = 0.5
    gamma: float = 5.0

    def __post_init__(self) -> None:
        if self.name not in _WEIGHTINGS:
            raise ValueError(f"unknown weighting {self.name!r}; choose one of {list(_WEIGHTINGS)}")
        if not self.sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0, got {self.sigma_data}")
        if not self.gamma > 0:
            raise ValueError(f"gamma must be > 0, got {self.gamma}")

    def root_x0_weight(self, sigma) -> torch.Tensor:
        """r(σ) = √w(σ): the factor that turns D − x0 into the residual of this weighting's target."""
        sigma = torch.as_tensor(sigma)
        if self.name == "x0":
            return _root_x0(sigma)
        if self.name in ("eps", "inv-sigma2", "snr"):
            return _root_inv_sigma(sigma)
        if self.name == "v":
            return _root_v(sigma)
        if self.name == "velocity":
            return _root_velocity(sigma)
        if self.name == "min-snr":  # √min(1/σ², γ) = min(1/σ, √γ)
            return torch.clamp(1 / sigma, max=math.sqrt(self.gamma))
        # edm: 1/c_out = √(σ² + σ_d²)/(σ σ_d)
        sd = self.sigma_data
        return torch.sqrt(sigma**2 + sd**2) / (sigma * sd)

    def x0_weight(self, sigma) -> torch.Tensor:
        """w(σ), the weight on mean_dims (D − x0)²."""
        return self.root_x0_weight(sigma) ** 2

    def log_eps_weight(self, lam) -> torch.Tensor:
        """log w_ε(λ) = log(σ²·w(σ)), σ = e^{−λ/2}: the weight on the ε-MSE (Kingma & Gao 2023), float64."""
        lam = _f64(lam)
        sigma = torch.exp(-0.5 * lam)
        return 2 * (torch.log(self.root_x0_weight(sigma)) - 0.5 * lam)

    def eps_weight(self, lam) -> torch.Tensor:
        return torch.exp(self.log_eps_weight(lam))


def _as_weighting(weighting) -> Weighting:
    if isinstance(weighting, Weighting):
        return weighting
    if isinstance(weighting, str):
        return Weighting(weighting)
    raise ValueError(f"weighting must be a name in {list(_WEIGHTINGS)} or a Weighting, got {weighting!r}")


# ---------------------------------------------------------------------------------------------
# the loss
# ---------------------------------------------------------------------------------------------


def weighted_x0_mse(denoiser, x0: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor, weighting, **cond) -> torch.Tensor:
    """(B,) w(σ)·mean_dims (D(x0 + σ·ε, σ) − x0)² for given σ (B,) and ε (shape of x0). Eq. (1)."""
    weighting = _as_weighting(weighting)
    if x0.ndim < 2:
        raise ValueError(f"x0 must have shape (B, ...) with a batch dimension, got {tuple(x0.shape)}")
    if noise.shape != x0.shape or sigma.shape != (x0.shape[0],):
        raise ValueError(
            f"noise must have the shape of x0 {tuple(x0.shape)} and sigma shape ({x0.shape[0]},); "
            f"got noise {tuple(noise.shape)}, sigma {tuple(sigma.shape)}"
        )
    sigma = sigma.to(dtype=x0.dtype, device=x0.device)
    x = x0 + append_dims(sigma, x0.ndim) * noise
    denoised = denoiser(x, sigma, **cond)
    root = weighting.root_x0_weight(sigma.to(torch.float64)).to(x0.dtype)
    residual = append_dims(root, x0.ndim) * (denoised - x0)
    return residual.square().flatten(1).mean(1)


@dataclass(frozen=True)
class DiffusionLoss:
    """σ ~ noise_dist, ε ~ N(0, I), loss = w(σ)·mean_dims (D(x0 + σε, σ) − x0)², unreduced (B,).

    The shape of EDM's ``EDMLoss`` (Karras et al. 2022, Eq. 2 & 8); the trainer reduces.
    σ is drawn first, then ε, both from ``generator``.
    """

    noise_dist: NoiseDistribution
    weighting: Weighting

    def __post_init__(self) -> None:
        object.__setattr__(self, "weighting", _as_weighting(self.weighting))

    def __call__(self, denoiser, x0: torch.Tensor, *, generator: Generator = None, **cond) -> torch.Tensor:
        if x0.ndim < 2:
            raise ValueError(f"x0 must have shape (B, ...) with a batch dimension, got {tuple(x0.shape)}")
        sigma = self.noise_dist.sample(x0.shape[0], generator=generator, device=x0.device, dtype=x0.dtype)
        noise = randn_like(x0, generator)
        return weighted_x0_mse(denoiser, x0, sigma, noise, self.weighting, **cond)


# ---------------------------------------------------------------------------------------------
# named recipes
# ---------------------------------------------------------------------------------------------


def _recipe(name: str, sigma_data: float, gamma: float) -> DiffusionLoss:
    w = lambda n: Weighting(n, sigma_data=sigma_data, gamma=gamma)  # noqa: E731
    if name == "edm":
        return DiffusionLoss(LogNormalSigma(-1.2, 1.2), w("edm"))
    if name == "ddpm":
        return DiffusionLoss(DiscreteTimesteps(get_process("ddpm-linear")), w("eps"))
    if name == "vp":
        return DiffusionLoss(UniformT(get_process("vp")), w("inv-sigma2"))
    if name == "ve":
        return DiffusionLoss(LogUniformSigma(0.02, 100.0), w("inv-sigma2"))
    if name == "v":
        return DiffusionLoss(UniformT(get_process("cosine")), w("v"))
    if name == "min-snr":
        return DiffusionLoss(DiscreteTimesteps(get_process("ddpm-linear")), w("min-snr"))
    if name == "flow":
        return DiffusionLoss(UniformT(get_process("flow")), w("velocity"))
    return DiffusionLoss(LogitNormalT(0.0, 1.0, get_process("flow")), w("velocity"))  # sd3


_RECIPES = {
    "edm": "log-normal σ (P_mean −1.2, P_std 1.2) × edm weight (Karras et al. 2022)",
    "ddpm": "uniform integer t of ddpm-linear × ε-MSE (Ho et al. 2020)",
    "vp": "uniform t of continuous VP × 1/σ² (Song et al. 2021; EDM Table 1)",
    "ve": "log-uniform σ on [0.02, 100] × 1/σ² (Song et al. 2021; EDM Table 1)",
    "v": "uniform t of the cosine process × v-MSE (Salimans & Ho 2022)",
    "min-snr": "uniform integer t of ddpm-linear × min(SNR, γ) (Hang et al. 2023)",
    "flow": "uniform t of the flow process × velocity MSE (rectified flow / flow matching)",
    "sd3": "logit-normal t (0, 1) of the flow process × velocity MSE (Esser et al. 2024)",
}


def loss_names() -> list[str]:
    return list(_RECIPES)


def get_loss(name: str, *, sigma_data: float = 0.5, gamma: float = 5.0) -> DiffusionLoss:
    """A named recipe: ``edm``, ``ddpm``, ``vp``, ``ve``, ``v``, ``min-snr``, ``flow``, ``sd3``.

    ``sigma_data`` only affects "edm", ``gamma`` only "min-snr".
    """
    if name not in _RECIPES:
        raise ValueError(f"unknown loss {name!r}; choose one of {loss_names()}")
    return _recipe(name, sigma_data, gamma)


# ---------------------------------------------------------------------------------------------
# where a recipe puts its weight: p(λ)·w_ε(λ)
# ---------------------------------------------------------------------------------------------


def _check_grid(lam) -> torch.Tensor:
    lam = _f64(lam)
    if lam.ndim != 1 or lam.numel() < 2 or not bool((lam[1:] > lam[:-1]).all()):
        raise ValueError(f"lam must be a 1-D increasing grid of at least 2 log-SNR values, got shape {tuple(lam.shape)}")
    return lam


def effective_weight_density(noise_dist: NoiseDistribution, weighting, lam) -> torch.Tensor:
    """p(λ)·w_ε(λ) on the grid ``lam`` (1-D increasing), normalized to trapezoid integral 1.

    w_ε is the weight on the ε-MSE (Kingma & Gao 2023, Eq. 6 and Fig. 2): the total weight a
    recipe puts on each log-SNR. Two recipes with the same curve train the same objective up to a
    constant factor. Returns a float64 tensor of the shape of ``lam``.
    """
    lam = _check_grid(lam)
    log_f = noise_dist.log_density_log_snr(lam) + _as_weighting(weighting).log_eps_weight(lam)
    finite = torch.isfinite(log_f)
    if not bool(finite.any()):
        raise ValueError(
            f"the λ grid [{lam[0].item():.4g}, {lam[-1].item():.4g}] misses the support of {noise_dist!r}"
        )
    f = torch.exp(log_f - log_f[finite].max())
    f = torch.where(finite, f, torch.zeros_like(f))
    return f / torch.trapezoid(f, lam)


def _density_summary(lam: torch.Tensor, density: torch.Tensor) -> dict[str, float]:
    mass = torch.cat([density.new_zeros(1), torch.cumulative_trapezoid(density, lam)])
    mass = mass / mass[-1]

    def quantile(q: float) -> float:
        i = int(torch.searchsorted(mass, torch.tensor([q], dtype=mass.dtype)).clamp(1, len(mass) - 1))
        w = (q - mass[i - 1]) / (mass[i] - mass[i - 1]).clamp(min=1e-300)
        return float(lam[i - 1] + w * (lam[i] - lam[i - 1]))

    return {"mode": float(lam[density.argmax()]), "q10": quantile(0.1), "median": quantile(0.5), "q90": quantile(0.9)}


def weight_density_table(names: Optional[list[str]] = None, lam=None) -> dict[str, dict[str, float]]:
    """For each named recipe: mode, 10%, 50% and 90% quantiles of λ under p(λ)·w_ε(λ).

    ``lam`` defaults to 12001 points on [−30, 30]. The interval [q10, q90] is the central 80%.
    The mode is the grid's argmax: at a support edge for monotone curves ("flow", "v": e^{−λ/2}),
    and arbitrary for flat ones ("ve": log-uniform σ × ε-MSE), where the quantiles say more.
    """
    names = loss_names() if names is None else list(names)
    lam = torch.linspace(-30.0, 30.0, 12001, dtype=torch.float64) if lam is None else _check_grid(lam)
    table = {}
    for name in names:
        loss = get_loss(name)
        table[name] = _density_summary(lam, effective_weight_density(loss.noise_dist, loss.weighting, lam))
    return table


__all__ = [
    "UniformT",
    "DiscreteTimesteps",
    "LogNormalSigma",
    "LogUniformSigma",
    "LogitNormalT",
    "Weighting",
    "weighting_names",
    "weighted_x0_mse",
    "DiffusionLoss",
    "get_loss",
    "loss_names",
    "effective_weight_density",
    "weight_density_table",
]
