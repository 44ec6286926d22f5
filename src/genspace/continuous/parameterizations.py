"""Adapters: a network trained under any process and parameterization becomes a σ-space Denoiser.

A network ``net(x_t, t_in, **cond)`` sees the noisy input of its own process,
x_t = s(t)·(x0 + σ(t)·ε), and predicts ε, x0, v or the velocity. Samplers only know σ-space,
x̄ = x_t/s = x0 + σ·ε, and a denoiser D(x̄, σ) ≈ E[x0 | x̄]. Each adapter does

    t = t(σ),  s = s(t),  x_t = s·x̄,  pred = net(x_t, t, **cond),  D = x0 from pred

with the exact conversions of :mod:`genspace.continuous.conversions` (the idea of k-diffusion's
``external.py`` wrappers: one small class per output type instead of branches in every sampler).
:class:`EDMPrecond` is Karras et al. 2022's preconditioning (Table 1, Eq. 7), which works in
σ-space directly.

Every adapter is an ``nn.Module`` whose only submodule is the wrapped network, ``.net``, and
exposes ``.process`` so callers can check σ ranges.
"""

from __future__ import annotations

import torch
from torch import nn

from genspace.continuous.conversions import Coefficients, coefficients, convert_with_coefficients
from genspace.continuous.processes import EDMProcess, Process, get_process
from genspace.core.tensor import append_dims


def _sigma_batch(sigma, x: torch.Tensor) -> torch.Tensor:
    """σ as a (B,) tensor on x's device (dtype kept if floating, else x's dtype)."""
    sigma = torch.as_tensor(sigma, device=x.device)
    if not sigma.is_floating_point():
        sigma = sigma.to(x.dtype)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    sigma = sigma.reshape(-1)
    if sigma.shape[0] != x.shape[0]:
        raise ValueError(
            f"sigma must be a scalar or of shape ({x.shape[0]},) for a batch of shape {tuple(x.shape)}, "
            f"got {sigma.shape[0]} values"
        )
    return sigma


class ProcessDenoiser(nn.Module):
    """Base adapter: a network predicting ``prediction`` under ``process`` → D(x̄, σ) = x0_hat.

    Args:
        net: ``net(x_t, t_in, **cond)`` with x_t (B, ...) and t_in (B,) the process time.
        process: the :class:`~genspace.continuous.processes.Process` (or its name) the network
            was trained under.

    ``forward(x, sigma, **cond)``: x = x̄ = x0 + σ·ε of shape (B, ...), sigma (B,) or scalar.
    Time and coefficients are computed in float64 from σ, then cast to x's dtype; the network's
    output is cast to x's dtype, so D returns x's dtype.
    """

    prediction: str = "x0"

    def __init__(self, net: nn.Module, process) -> None:
        super().__init__()
        self.net = net
        self.process: Process = get_process(process) if isinstance(process, str) else process

    def time_and_coefficients(self, sigma: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, Coefficients]:
        """(t (B,) in x's dtype, coefficients shaped (B, 1, ..., 1)) for σ of shape (B,)."""
        t = self.process.t_of_sigma(sigma.to(torch.float64))
        c = coefficients(self.process, t, ndim=x.ndim, dtype=x.dtype)
        return t.to(x.dtype), c

    def forward(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        sigma = _sigma_batch(sigma, x)
        t, c = self.time_and_coefficients(sigma, x)
        x_t = c.alpha * x  # x_t = s·x̄
        pred = self.net(x_t, t, **cond).to(x.dtype)
        return convert_with_coefficients(pred, x_t, c, source=self.prediction, target="x0")

    def extra_repr(self) -> str:
        return f"prediction={self.prediction!r}, process={self.process!r}"


class EpsDenoiser(ProcessDenoiser):
    """ε-prediction (DDPM, Ho et al. 2020 Eq. 11): x0 = (x_t − σ̃·ε̂)/α = x̄ − σ·ε̂."""

    prediction = "eps"


class X0Denoiser(ProcessDenoiser):
    """x0-prediction: the network output is the denoiser itself."""

    prediction = "x0"


class VDenoiser(ProcessDenoiser):
    """v-prediction (Salimans & Ho 2022): v = α·ε − σ̃·x0, x0 = (α x_t − σ̃ v̂)/(α² + σ̃²)."""

    prediction = "v"


class VelocityDenoiser(ProcessDenoiser):
    """Velocity prediction (flow matching): u = α̇·x0 + σ̃̇·ε = dx_t/dt of the process's own t.

    x0 = (σ̃·û − σ̃̇·x_t)/(σ̃·α̇ − σ̃̇·α). For the linear flow (s = 1 − t, σ = t/(1 − t)):
    u = ε − x0 and x0 = x_t − t·û.
    """

    prediction = "velocity"


class EDMPrecond(nn.Module):
    """EDM preconditioning (Karras et al. 2022, Eq. 7 and Table 1, "Ours"):

        D(x, σ) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x, c_noise(σ))
        c_skip = σ_d²/(σ² + σ_d²),  c_out = σ·σ_d/√(σ² + σ_d²),
        c_in = 1/√(σ² + σ_d²),      c_noise = ¼·ln σ

    x is σ-space (x = x0 + σ·ε) whatever the process, so the adapter's ``process`` only sets the
    σ range (default :class:`EDMProcess`). The outer shell runs in float32, or float64 if x is
    float64; D is returned in x's dtype.

    Args:
        net: F(x_in, c_noise, **cond) with x_in (B, ...) and c_noise (B,).
        sigma_data: σ_d, the data's standard deviation.
        process: the process giving the σ range (default EDMProcess(sigma_data=sigma_data)).
    """

    def __init__(self, net: nn.Module, sigma_data: float = 0.5, process=None) -> None:
        super().__init__()
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0, got {sigma_data}")
        self.net = net
        self.sigma_data = float(sigma_data)
        if process is None:
            process = EDMProcess(sigma_data=self.sigma_data)
        self.process: Process = get_process(process) if isinstance(process, str) else process

    def preconditioning(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c_skip, c_out, c_in, c_noise) for σ of any shape, in σ's dtype."""
        sd = self.sigma_data
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / torch.sqrt(sigma**2 + sd**2)
        c_in = 1 / torch.sqrt(sigma**2 + sd**2)
        c_noise = torch.log(sigma) / 4
        return c_skip, c_out, c_in, c_noise

    def forward(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        shell = torch.float64 if x.dtype == torch.float64 else torch.float32
        sigma = _sigma_batch(sigma, x).to(shell)
        xs = x.to(shell)
        c_skip, c_out, c_in, c_noise = self.preconditioning(sigma)
        f = self.net(append_dims(c_in, x.ndim) * xs, c_noise, **cond)
        d = append_dims(c_skip, x.ndim) * xs + append_dims(c_out, x.ndim) * f.to(shell)
        return d.to(x.dtype)

    def extra_repr(self) -> str:
        return f"sigma_data={self.sigma_data}, process={self.process!r}"


_ADAPTERS = {
    "eps": EpsDenoiser,
    "x0": X0Denoiser,
    "v": VDenoiser,
    "velocity": VelocityDenoiser,
}


def parameterization_names() -> list[str]:
    return sorted([*_ADAPTERS, "edm"])


def make_denoiser(net: nn.Module, process, parameterization: str, *, sigma_data: float = 0.5) -> nn.Module:
    """Wrap ``net`` trained under ``process`` predicting ``parameterization`` into a Denoiser.

    Args:
        net: ``net(x_t, t_in, **cond)``.
        process: a Process or its name.
        parameterization: ``eps``, ``x0``, ``v``, ``velocity`` or ``edm``.
        sigma_data: σ_d of the EDM preconditioning (used by ``edm`` only; ignored otherwise).
    """
    if parameterization == "edm":
        return EDMPrecond(net, sigma_data=sigma_data, process=process)
    if parameterization not in _ADAPTERS:
        raise ValueError(f"unknown parameterization {parameterization!r}; choose one of {parameterization_names()}")
    return _ADAPTERS[parameterization](net, process)


__all__ = [
    "ProcessDenoiser",
    "EpsDenoiser",
    "X0Denoiser",
    "VDenoiser",
    "VelocityDenoiser",
    "EDMPrecond",
    "make_denoiser",
    "parameterization_names",
]
