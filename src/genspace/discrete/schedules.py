"""Noise schedules α(t) of discrete diffusion: the probability that a token is still clean at t.

Time runs t = 0 (clean) → t = 1 (noised): α(0) = 1, α(1) = 0 (up to ``eps`` for the log-linear
schedule), α decreasing. Every schedule gives α(t), its derivative α′(t) and the masked-diffusion
NELBO weight w(t) = −α′(t) / (1 − α(t)) (Sahoo et al. 2024, MDLM eq. 10; Shi et al. 2024, MD4
eq. 5). In SEDD's notation (Lou et al. 2024) the total noise is σ̄(t) = −log α(t) and the rate
σ(t) = dσ̄/dt = −α′/α.

=============  ================================  ==================  =======================
name           α(t)                              −α′(t)              w(t) = −α′/(1−α)
=============  ================================  ==================  =======================
``linear``     1 − t                             1                   1/t
``log-linear`` 1 − (1 − ε)·t   (SEDD, MDLM)      1 − ε               (1−ε)/((1−ε)t) = 1/t
``cosine``     cos(π t / 2)    (MaskGIT, MD4)    (π/2)·sin(π t/2)    (π/2)·sin/(1 − cos)
``poly-k``     1 − t^k         (MD4 "poly")      k·t^(k−1)           k/t
=============  ================================  ==================  =======================

The log-linear schedule is the linear one with α(1) = ε instead of 0: SEDD's σ̄(t) =
−log(1 − (1 − ε)t). Its NELBO weight is exactly 1/t as well.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["Schedule", "get_schedule", "schedule_names"]


@dataclass(frozen=True)
class Schedule:
    """A schedule α(t) on t ∈ [0, 1].

    Args:
        name: ``linear``, ``log-linear``, ``cosine`` or ``poly`` (with ``power``).
        eps: α(1) = eps for ``log-linear`` (SEDD's 1e-3); ignored otherwise.
        power: k of ``poly`` (α = 1 − t^k); ``poly`` with k = 1 is ``linear``.
    """

    name: str = "linear"
    eps: float = 1e-3
    power: float = 2.0

    def __post_init__(self) -> None:
        if self.name not in _NAMES:
            raise ValueError(f"unknown discrete schedule {self.name!r}; choose one of {list(_NAMES)}")
        if not 0.0 <= self.eps < 1.0:
            raise ValueError(f"schedule eps must be in [0, 1), got {self.eps}")
        if not self.power > 0:
            raise ValueError(f"schedule power must be > 0, got {self.power}")

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """α(t): keep probability, same shape and dtype as ``t``."""
        if self.name == "linear":
            return 1.0 - t
        if self.name == "log-linear":
            return 1.0 - (1.0 - self.eps) * t
        if self.name == "cosine":
            return torch.cos(0.5 * math.pi * t)
        return 1.0 - t**self.power

    def alpha_prime(self, t: torch.Tensor) -> torch.Tensor:
        """dα/dt (≤ 0), same shape as ``t``."""
        if self.name == "linear":
            return -torch.ones_like(t)
        if self.name == "log-linear":
            return torch.full_like(t, -(1.0 - self.eps))
        if self.name == "cosine":
            return -0.5 * math.pi * torch.sin(0.5 * math.pi * t)
        return -self.power * t ** (self.power - 1.0)

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """Masked-diffusion NELBO weight −α′(t)/(1 − α(t)) (MDLM eq. 10), in closed form."""
        if self.name in ("linear", "log-linear"):
            return 1.0 / t
        if self.name == "cosine":
            half = 0.25 * math.pi * t
            # (π/2) sin(πt/2) / (1 − cos(πt/2)) = (π/2) cot(πt/4), stable at small t
            return 0.5 * math.pi / torch.tan(half)
        return self.power / t

    def t_of_alpha(self, alpha: torch.Tensor) -> torch.Tensor:
        """The inverse t(α) on α ∈ [α(1), 1]."""
        if self.name == "linear":
            return 1.0 - alpha
        if self.name == "log-linear":
            return (1.0 - alpha) / (1.0 - self.eps)
        if self.name == "cosine":
            return torch.arccos(alpha.clamp(-1.0, 1.0)) * (2.0 / math.pi)
        return (1.0 - alpha).clamp_min(0.0) ** (1.0 / self.power)

    def total_noise(self, t: torch.Tensor) -> torch.Tensor:
        """SEDD's σ̄(t) = −log α(t) (absorbing: P(masked at t) = 1 − e^{−σ̄})."""
        return -torch.log(self.alpha(t))

    def rate(self, t: torch.Tensor) -> torch.Tensor:
        """SEDD's σ(t) = dσ̄/dt = −α′(t)/α(t)."""
        return -self.alpha_prime(t) / self.alpha(t)


_NAMES = ("linear", "log-linear", "cosine", "poly")


def schedule_names() -> list[str]:
    return list(_NAMES)


def get_schedule(name: str = "linear", **options) -> Schedule:
    """A schedule by name: ``linear``, ``log-linear``, ``cosine``, ``poly`` or ``poly-<k>``."""
    if isinstance(name, Schedule):
        return name
    if isinstance(name, str) and name.startswith("poly-"):
        try:
            options["power"] = float(name[5:])
        except ValueError:
            raise ValueError(f"schedule {name!r}: expected poly-<k> with a number k, e.g. poly-2") from None
        name = "poly"
    return Schedule(name, **options)
