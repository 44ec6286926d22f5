"""Forward processes as data: x_t = s(t)·(x0 + σ(t)·ε)  (Karras et al. 2022, Eq. 4 / Table 1).

Every process gives s(t), σ(t), their time derivatives and the inverse t(σ). Samplers work in
σ-space (x̄ = x_t / s(t) = x0 + σ·ε), so a process only says how a network's own input and time
relate to σ; any two processes map onto each other exactly through σ:
x_t^(B) = s_B(t_B(σ)) / s_A(t_A(σ)) · x_t^(A).

| name          | s(t)              | σ(t)                                   | t range        |
|---------------|-------------------|----------------------------------------|----------------|
| vp            | 1/√(1+σ²)         | √(exp(½β_d t² + β_min t) − 1)          | [1e-5, 1]      |
| ve            | 1                 | σ_min (σ_max/σ_min)^t                  | [0, 1]         |
| edm           | 1                 | t                                      | [0.002, 80]    |
| cosine        | √ᾱ(t)             | √(1/ᾱ(t) − 1), ᾱ = f(t)/f(0), f = cos²(π/2·(t+s)/(1+s)) | [0, 0.9999] |
| flow          | 1 − t             | t / (1 − t)                            | [0, 0.9999]    |
| ddpm-linear   | √ᾱ_t (table)      | √((1−ᾱ_t)/ᾱ_t), β linear 1e-4..0.02    | {0, …, 999}    |
| ddpm-cosine   | √ᾱ_t (table)      | iDDPM cosine table, β ≤ 0.999          | {0, …, 999}    |

For the discrete tables t is the integer timestep; fractional t interpolates log σ linearly
between table entries (so a network trained on integer steps can be queried at any σ in range).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


def _t(x) -> torch.Tensor:
    return x if torch.is_tensor(x) else torch.as_tensor(x, dtype=torch.float64)


class Process:
    """Base class: subclasses define s, sigma, ds_dt, dsigma_dt and t_of_sigma on tensors."""

    name: str = "process"
    t_min: float
    t_max: float

    # --- to be defined by subclasses -------------------------------------------------------
    def s(self, t):  # pragma: no cover - abstract
        raise NotImplementedError

    def sigma(self, t):  # pragma: no cover - abstract
        raise NotImplementedError

    def ds_dt(self, t):  # pragma: no cover - abstract
        raise NotImplementedError

    def dsigma_dt(self, t):  # pragma: no cover - abstract
        raise NotImplementedError

    def t_of_sigma(self, sigma):  # pragma: no cover - abstract
        raise NotImplementedError

    # --- derived ------------------------------------------------------------------------------
    @property
    def sigma_min(self) -> float:
        return float(self.sigma(torch.tensor(self.t_min, dtype=torch.float64)))

    @property
    def sigma_max(self) -> float:
        return float(self.sigma(torch.tensor(self.t_max, dtype=torch.float64)))

    def s_of_sigma(self, sigma):
        """Scale s as a function of σ: s(t(σ))."""
        return self.s(self.t_of_sigma(sigma))

    def log_snr(self, t):
        """λ(t) = log(s²/(s²σ²)) = −2 log σ(t): the log signal-to-noise ratio."""
        return -2 * torch.log(self.sigma(_t(t)))

    def alpha_sigma(self, t):
        """The (α_t, σ̃_t) pair of the x_t = α_t x0 + σ̃_t ε notation: (s, s·σ)."""
        t = _t(t)
        s = self.s(t)
        return s, s * self.sigma(t)

    def check_sigma(self, sigma, *, what: str = "sigma", rtol: float = 1e-6) -> None:
        """Raise ValueError if any σ lies outside [σ_min, σ_max] of this process."""
        sigma = _t(sigma)
        lo, hi = self.sigma_min, self.sigma_max
        if (sigma < lo * (1 - rtol)).any() or (sigma > hi * (1 + rtol)).any():
            raise ValueError(
                f"{what}={_fmt(sigma)} is outside the range [{lo:.6g}, {hi:.6g}] of process {self.name!r}"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, t=[{self.t_min}, {self.t_max}])"


def _fmt(x: torch.Tensor) -> str:
    x = x.flatten()
    if x.numel() == 1:
        return f"{x.item():.6g}"
    return f"[{x.min().item():.6g} .. {x.max().item():.6g}]"


@dataclass(repr=False)
class VPProcess(Process):
    """Variance preserving (DDPM continuous, Song et al. 2021 Eq. 32; EDM Table 1 "VP").

    β(t) = β_min + β_d·t; ᾱ(t) = exp(−½β_d t² − β_min t); s = √ᾱ, σ = √(1/ᾱ − 1).
    """

    beta_min: float = 0.1
    beta_d: float = 19.9
    t_min: float = 1e-5
    t_max: float = 1.0
    name: str = "vp"

    def _e(self, t):
        return 0.5 * self.beta_d * t**2 + self.beta_min * t

    def sigma(self, t):
        return torch.sqrt(torch.expm1(self._e(_t(t))))

    def s(self, t):
        return torch.exp(-0.5 * self._e(_t(t)))

    def dsigma_dt(self, t):
        t = _t(t)
        e = self._e(t)
        return 0.5 * (self.beta_min + self.beta_d * t) * torch.exp(e) / torch.sqrt(torch.expm1(e))

    def ds_dt(self, t):
        t = _t(t)
        return -0.5 * (self.beta_min + self.beta_d * t) * self.s(t)

    def t_of_sigma(self, sigma):
        sigma = _t(sigma)
        # root of ½β_d t² + β_min t = log(1+σ²), written without cancellation for small σ
        log1p_s2 = torch.log1p(sigma**2)
        return 2 * log1p_s2 / (self.beta_min + torch.sqrt(self.beta_min**2 + 2 * self.beta_d * log1p_s2))


@dataclass(repr=False)
class VEProcess(Process):
    """Variance exploding (NCSN++, Song et al. 2021 Eq. 31): s = 1, σ(t) = σ_min (σ_max/σ_min)^t."""

    sigma_lo: float = 0.02
    sigma_hi: float = 100.0
    t_min: float = 0.0
    t_max: float = 1.0
    name: str = "ve"

    @property
    def _log_ratio(self) -> float:
        return math.log(self.sigma_hi / self.sigma_lo)

    def sigma(self, t):
        return self.sigma_lo * torch.exp(self._log_ratio * _t(t))

    def s(self, t):
        return torch.ones_like(_t(t))

    def dsigma_dt(self, t):
        return self._log_ratio * self.sigma(t)

    def ds_dt(self, t):
        return torch.zeros_like(_t(t))

    def t_of_sigma(self, sigma):
        return torch.log(_t(sigma) / self.sigma_lo) / self._log_ratio


@dataclass(repr=False)
class EDMProcess(Process):
    """EDM (Karras et al. 2022, Table 1): s = 1, σ(t) = t; σ_data is the data's standard deviation."""

    t_min: float = 0.002
    t_max: float = 80.0
    sigma_data: float = 0.5
    name: str = "edm"

    def sigma(self, t):
        return _t(t) * 1.0

    def s(self, t):
        return torch.ones_like(_t(t))

    def dsigma_dt(self, t):
        return torch.ones_like(_t(t))

    def ds_dt(self, t):
        return torch.zeros_like(_t(t))

    def t_of_sigma(self, sigma):
        return _t(sigma) * 1.0


@dataclass(repr=False)
class CosineProcess(Process):
    """Cosine schedule (Nichol & Dhariwal 2021, Eq. 17): ᾱ(t) = f(t)/f(0), f(t) = cos²(π/2·(t+s)/(1+s))."""

    offset: float = 0.008
    t_min: float = 0.0
    t_max: float = 0.9999
    name: str = "cosine"

    @property
    def _k(self) -> float:
        """dθ/dt for the angle θ(t) = π/2·(t+s)/(1+s)."""
        return 0.5 * math.pi / (1 + self.offset)

    @property
    def _theta0(self) -> float:
        return 0.5 * math.pi * self.offset / (1 + self.offset)

    @property
    def _c0(self) -> float:
        return math.cos(self._theta0)

    def _angle(self, t):
        return self._theta0 + self._k * _t(t)

    def _cos(self, t):
        # cos θ = sin(π/2 − θ) = sin(θ'·(1 − t)): accurate near t = 1 where cos θ → 0
        return torch.sin(self._k * (1 - _t(t)))

    def s(self, t):
        return self._cos(t) / self._c0

    def sigma(self, t):
        # σ² = 1/ᾱ − 1 = (c0² − cos²θ)/cos²θ, and c0² − cos²θ = sin(θ−θ0)·sin(θ+θ0) without cancellation
        t = _t(t)
        return torch.sqrt(torch.sin(self._k * t) * torch.sin(self._angle(t) + self._theta0)) / self._cos(t)

    def ds_dt(self, t):
        return -torch.sin(self._angle(t)) * self._k / self._c0

    def dsigma_dt(self, t):
        # from σ² = c0²/cos²θ − 1:  2σσ' = 2c0² sinθ·θ'/cos³θ
        return self._k * self._c0**2 * torch.sin(self._angle(t)) / (self._cos(t) ** 3 * self.sigma(t))

    def t_of_sigma(self, sigma):
        # tanθ = √(σ² + sin²θ0)/c0; tan(θ−θ0) in a form without cancellation, then t = (θ−θ0)/θ'
        sigma = _t(sigma)
        c0, sn0 = self._c0, math.sin(self._theta0)
        r = torch.sqrt(sigma**2 + sn0**2)
        delta = torch.atan2(c0 * sigma**2 / (r + sn0), c0**2 + r * sn0)
        return delta / self._k


@dataclass(repr=False)
class FlowProcess(Process):
    """Linear interpolant of flow matching / rectified flow: x_t = (1−t)·x0 + t·ε.

    In the EDM form: s(t) = 1 − t, σ(t) = t / (1 − t) (Lipman et al. 2023; Liu et al. 2023;
    Esser et al. 2024). t = 1 (pure noise) is σ = ∞; the range stops at t_max.
    """

    t_min: float = 0.0
    t_max: float = 0.9999
    name: str = "flow"

    def s(self, t):
        return 1 - _t(t)

    def sigma(self, t):
        t = _t(t)
        return t / (1 - t)

    def ds_dt(self, t):
        return -torch.ones_like(_t(t))

    def dsigma_dt(self, t):
        return 1 / (1 - _t(t)) ** 2

    def t_of_sigma(self, sigma):
        sigma = _t(sigma)
        return sigma / (1 + sigma)


def ddpm_linear_betas(n: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """DDPM's linear β table (Ho et al. 2020, §4): β_i from 1e-4 to 0.02 over 1000 steps."""
    return torch.linspace(beta_start, beta_end, n, dtype=torch.float64)


def ddpm_cosine_betas(n: int = 1000, offset: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """iDDPM's cosine β table (Nichol & Dhariwal 2021, Eq. 17), β_i = 1 − ᾱ_{i+1}/ᾱ_i ≤ 0.999."""
    i = torch.arange(n + 1, dtype=torch.float64)
    f = torch.cos((i / n + offset) / (1 + offset) * math.pi / 2) ** 2
    return torch.clamp(1 - f[1:] / f[:-1], max=max_beta)


@dataclass(repr=False)
class DiscreteVPProcess(Process):
    """A discrete-time VP process from a β table: ᾱ_i = Π_{j≤i}(1 − β_j), t ∈ {0, …, N−1}.

    σ_i = √((1 − ᾱ_i)/ᾱ_i), s_i = √ᾱ_i. Between integers log σ is interpolated linearly, which
    defines s, σ and their derivatives for fractional t.
    """

    betas: torch.Tensor = field(default_factory=ddpm_linear_betas)
    name: str = "ddpm-linear"

    def __post_init__(self) -> None:
        self.betas = torch.as_tensor(self.betas, dtype=torch.float64)
        if self.betas.ndim != 1 or len(self.betas) < 2 or (self.betas <= 0).any() or (self.betas >= 1).any():
            raise ValueError("betas must be a 1-D table of at least 2 values in (0, 1)")
        self.alphas_cumprod = torch.cumprod(1 - self.betas, 0)
        self.sigmas = torch.sqrt((1 - self.alphas_cumprod) / self.alphas_cumprod)
        self.log_sigmas = self.sigmas.log()
        self.t_min = 0.0
        self.t_max = float(len(self.betas) - 1)

    @property
    def n_steps(self) -> int:
        return len(self.betas)

    def _interp(self, t):
        t = _t(t)
        tc = t.clamp(self.t_min, self.t_max)
        lo = tc.floor().long().clamp(max=len(self.sigmas) - 2)
        w = tc - lo.to(tc.dtype)
        ls = self.log_sigmas.to(t.device)
        slope = ls[lo + 1] - ls[lo]
        return ls[lo] + w.to(ls.dtype) * slope, slope

    def sigma(self, t):
        log_sigma, _ = self._interp(t)
        return log_sigma.exp().to(_t(t).dtype)

    def s(self, t):
        sigma = self.sigma(t)
        return 1 / torch.sqrt(1 + sigma**2)

    def dsigma_dt(self, t):
        log_sigma, slope = self._interp(t)
        return (log_sigma.exp() * slope).to(_t(t).dtype)

    def ds_dt(self, t):
        sigma = self.sigma(t)
        return -sigma * self.dsigma_dt(t) / (1 + sigma**2) ** 1.5

    def t_of_sigma(self, sigma):
        sigma = _t(sigma)
        ls = self.log_sigmas.to(sigma.device)
        log_sigma = sigma.log().to(ls.dtype)
        idx = torch.searchsorted(ls, log_sigma.reshape(-1).contiguous()).clamp(1, len(ls) - 1)
        lo = idx - 1
        w = (log_sigma.reshape(-1) - ls[lo]) / (ls[idx] - ls[lo])
        return (lo.to(ls.dtype) + w.clamp(0, 1)).reshape(sigma.shape).to(sigma.dtype)


def shift_time(t, k: float):
    """SD3's resolution-dependent time shift (Esser et al. 2024, Eq. 23): t' = k·t / (1 + (k−1)·t).

    For the flow process this is exactly σ' = k·σ.
    """
    if k <= 0:
        raise ValueError(f"shift k must be > 0, got {k}")
    t = _t(t)
    return k * t / (1 + (k - 1) * t)


_PROCESSES = {
    "vp": VPProcess,
    "ve": VEProcess,
    "edm": EDMProcess,
    "cosine": CosineProcess,
    "flow": FlowProcess,
    "ddpm-linear": lambda: DiscreteVPProcess(ddpm_linear_betas(), name="ddpm-linear"),
    "ddpm-cosine": lambda: DiscreteVPProcess(ddpm_cosine_betas(), name="ddpm-cosine"),
}


def process_names() -> list[str]:
    return sorted(_PROCESSES)


def get_process(name: str, **kwargs) -> Process:
    """Build a process by name (``vp``, ``ve``, ``edm``, ``cosine``, ``flow``, ``ddpm-linear``, ``ddpm-cosine``)."""
    if name not in _PROCESSES:
        raise ValueError(f"unknown process {name!r}; choose one of {process_names()}")
    return _PROCESSES[name](**kwargs)


def convert(x_t: torch.Tensor, t_from, source: Process, target: Process):
    """Map a noisy sample of ``source`` at time ``t_from`` to ``target`` at the same σ.

    Returns (x_t of the target process, t of the target process). Exact: both processes share
    the σ-space variable x̄ = x_t / s(t) = x0 + σ·ε.
    """
    t_from = _t(t_from)
    sigma = source.sigma(t_from)
    t_to = target.t_of_sigma(sigma)
    ratio = target.s(t_to) / source.s(t_from)
    while ratio.ndim < x_t.ndim:
        ratio = ratio.unsqueeze(-1)
    return x_t * ratio.to(x_t.dtype), t_to
