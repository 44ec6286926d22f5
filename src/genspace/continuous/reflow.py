"""Rectified flow "reflow" (Liu, Gong & Liu 2023, "Flow Straight and Fast", Alg. 1).

Flow time follows genspace's flow process: t = 0 is data, t = 1 is noise,
x_t = (1 − t)·x0 + t·z, and a velocity field v(x_t, t) ≈ E[z − x0 | x_t] = dx_t/dt
(σ-space: x̄ = x_t/(1 − t), σ = t/(1 − t)). Sampling integrates dx/dt = v from t = 1 to t = 0.

Reflow replaces the independent coupling (z, x0) ~ N(0, I) × p_data by the deterministic
coupling of an existing flow: z ↦ x0 = ODE(z) (:func:`make_reflow_pairs`), and fits a new velocity
by flow matching on those fixed pairs (:func:`reflow_loss`, Liu et al. Eq. 6):

    min_v  E_{t ~ U[0,1]} E_{(z, x0)} ‖(z − x0) − v(x_t, t)‖².

The new flow keeps the marginal at t = 0 and is straighter, so few Euler steps suffice. The
straightness of a flow (Liu et al. Eq. 12, in our time direction) is

    S(v) = ∫_0^1 E ‖(x_1 − x_0) − v(x_t, t)‖² dt,

x_t the ODE trajectory started at x_1 = z; S = 0 iff every trajectory is a straight line
travelled at constant speed (:func:`straightness`).

A σ-space denoiser D becomes a flow velocity with :class:`DenoiserVelocity`:
v(x_t, t) = (x_t − D(x_t/(1 − t), t/(1 − t)))/t. A velocity network trained here becomes a
denoiser with ``genspace.continuous.parameterizations.make_denoiser(net, "flow", "velocity")``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from genspace.core.denoiser import BoundDenoiser, Denoiser
from genspace.core.odeint import ADAPTIVE_METHODS, FIXED_METHODS, odeint_adaptive, odeint_fixed
from genspace.core.random import Generator, rand, randn
from genspace.core.tensor import append_dims

Velocity = Callable[..., torch.Tensor]  # v(x_t (B, ...), t (B,), **cond) -> (B, ...)
TIME_SAMPLINGS = ("uniform", "logit-normal")


# ---------------------------------------------------------------------------------- adapters
class DenoiserVelocity:
    """The flow-time velocity of a σ-space denoiser: v(x_t, t) = (x_t − D(x_t/(1−t), σ))/t, σ = t/(1−t).

    Derivation: E[x0 | x_t] = D(x̄, σ) with x̄ = x_t/(1−t); E[z | x_t] = (x_t − (1−t)·D)/t; their
    difference is (x_t − D)/t. The ends are singular (σ = 0 at t = 0, σ = ∞ at t = 1), so t is
    clamped to [t(σ_min), t(σ_max)]; with the defaults the clamping error is O(1e-4·|v|) (at t = 1
    the exact velocity is x − E[x0], and D(x̄, σ_max) ≈ E[x0]).

    Args:
        denoiser: ``D(x, sigma, **cond)`` in σ-space.
        sigma_min, sigma_max: the clamping range (0 < sigma_min < sigma_max < ∞).
    """

    def __init__(self, denoiser: Denoiser, *, sigma_min: float = 1e-4, sigma_max: float = 1e4) -> None:
        if not (0 < sigma_min < sigma_max < math.inf):
            raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        self.denoiser = denoiser
        self.t_lo = sigma_min / (1 + sigma_min)
        self.t_hi = sigma_max / (1 + sigma_max)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0]).clamp(self.t_lo, self.t_hi)
        sigma = t / (1 - t)
        tb = append_dims(t, x.ndim)
        return (x - self.denoiser(x / (1 - tb), sigma, **cond)) / tb


def _velocity_rhs(velocity: Velocity, b: int, cond: dict) -> Callable:
    def rhs(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return velocity(x, t.expand(b), **cond)

    return rhs


# ---------------------------------------------------------------------------------- sampling in flow time
@torch.no_grad()
def sample_flow(
    velocity: Velocity,
    z: torch.Tensor,
    *,
    n_steps: int = 1,
    method: str = "euler",
    t_max: float = 1.0,
    t_min: float = 0.0,
    **cond,
) -> torch.Tensor:
    """Integrate dx/dt = v(x, t) from x(t_max) = z down to t_min on a uniform grid; returns x(t_min).

    ``method``: one of :data:`genspace.core.odeint.FIXED_METHODS` (euler, heun, midpoint, rk4);
    NFE = n_steps · stages. One Euler step from t = 1 gives x0 = z − v(z, 1).
    """
    _check_times(t_min, t_max)
    if int(n_steps) != n_steps or n_steps < 1:
        raise ValueError(f"n_steps must be an integer >= 1, got {n_steps}")
    ts = torch.linspace(t_max, t_min, int(n_steps) + 1, dtype=torch.float64)
    return odeint_fixed(_velocity_rhs(velocity, z.shape[0], cond), z, ts, method)


def _check_times(t_min: float, t_max: float) -> None:
    if not (0.0 <= t_min < t_max <= 1.0):
        raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")


# ---------------------------------------------------------------------------------- pairs
def _local_heun(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, cond: dict) -> torch.Tensor:
    """EDM Algorithm 1 without churn: Heun steps in σ, an Euler step to σ = 0 (x ← D(x, σ_last))."""
    b = x.shape[0]
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i].to(x.dtype), sigmas[i + 1].to(x.dtype)
        d = (x - denoiser(x, s.expand(b), **cond)) / s
        x_next = x + (s_next - s) * d
        if s_next > 0:
            d_next = (x_next - denoiser(x_next, s_next.expand(b), **cond)) / s_next
            x_next = x + (s_next - s) * 0.5 * (d + d_next)
        x = x_next
    return x


def _karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    sig = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([sig, sig.new_zeros(1)])


@torch.no_grad()
def make_reflow_pairs(
    denoiser: Denoiser,
    noise: torch.Tensor,
    *,
    method: str = "heun",
    nfe: int = 35,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    sampler: Optional[Callable[[Denoiser, torch.Tensor], torch.Tensor]] = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    **cond,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The deterministic coupling (z, x0 = ODE(z)) of a flow (Liu et al. 2023, Alg. 1 "reflow").

    The probability-flow ODE starts at x = σ_max·z (σ-space; in flow time x_t ≈ z at
    t = σ_max/(1+σ_max)) and runs to σ = 0.

    Args:
        denoiser: ``D(x, sigma, **cond)`` in σ-space (wrap a velocity net with
            ``make_denoiser(net, "flow", "velocity")``).
        noise: (B, ...) unit normal noise z.
        method: ``"dopri5"`` / ``"bosh3"``: adaptive solve in log σ from σ_max to σ_min
            (tolerances rtol, atol), then x0 = D(x, σ_min). Any other name is passed to
            ``genspace.sampling.api.sample`` with ``nfe``; if that module is absent, ``"heun"``
            runs a local Heun on the Karras grid (ρ = 7) with ⌈(nfe+1)/2⌉ steps (NFE = 2·steps − 1).
        nfe, sigma_min, sigma_max: budget and σ range of the solve.
        sampler: a callable ``sampler(denoiser, noise) -> x0`` overriding ``method``.
        **cond: conditioning passed to the denoiser.

    Returns:
        ``(z, x0)``, both (B, ...) and detached.
    """
    if not noise.is_floating_point():
        raise ValueError(f"noise must be floating point, got dtype {noise.dtype}")
    if not (0 < sigma_min < sigma_max < math.inf):
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    z = noise.detach()
    if sampler is not None:
        x0 = sampler(denoiser, z)
    elif method in ADAPTIVE_METHODS:
        b = z.shape[0]

        def rhs(u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # dx/du = x − D, u = log σ
            return x - denoiser(x, torch.exp(u).expand(b), **cond)

        x, _ = odeint_adaptive(
            rhs, sigma_max * z, math.log(sigma_max), math.log(sigma_min), rtol=rtol, atol=atol, method=method
        )
        x0 = denoiser(x, torch.full((b,), sigma_min, dtype=x.dtype, device=x.device), **cond)
    else:
        if int(nfe) != nfe or nfe < 1:
            raise ValueError(f"nfe must be an integer >= 1, got {nfe}")
        try:
            from genspace.sampling.api import sample
        except ImportError:
            sample = None
        if sample is not None:
            bound = BoundDenoiser(denoiser, **cond) if cond else denoiser
            x0 = sample(bound, z, method=method, nfe=int(nfe), sigma_min=sigma_min, sigma_max=sigma_max)
        elif method == "heun":
            n_steps = (int(nfe) + 2) // 2
            sigmas = _karras(n_steps, sigma_min, sigma_max).to(z.device)
            x0 = _local_heun(denoiser, sigma_max * z, sigmas, cond)
        else:
            raise ValueError(
                f"unknown method {method!r} (genspace.sampling.api is unavailable); choose one of "
                f"{sorted(ADAPTIVE_METHODS) + ['heun']}"
            )
    if x0.shape != z.shape:
        raise ValueError(f"the sampler returned shape {tuple(x0.shape)} for noise of shape {tuple(z.shape)}")
    return z, x0.detach()


# ---------------------------------------------------------------------------------- loss
def reflow_loss(velocity_net: Velocity, z: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
    """Flow matching on fixed couplings (Liu et al. 2023, Eq. 6): (B,) mean over dims of ‖v − (z − x0)‖².

    x_t = (1 − t)·x0 + t·z with t (B,) in [0, 1]; the target velocity is u = z − x0.
    """
    if z.shape != x0.shape:
        raise ValueError(f"z and x0 must have the same shape, got {tuple(z.shape)} and {tuple(x0.shape)}")
    if t.shape != (z.shape[0],):
        raise ValueError(f"t must have shape ({z.shape[0]},), got {tuple(t.shape)}")
    tb = append_dims(t.to(z.dtype), z.ndim)
    x_t = (1 - tb) * x0 + tb * z
    v = velocity_net(x_t, t.to(z.dtype), **cond)
    return ((v - (z - x0)) ** 2).flatten(1).mean(1)


@dataclass
class ReflowLoss:
    """Reflow loss with t drawn per example; returns the unreduced (B,) loss of :func:`reflow_loss`."""

    time_sampling: str = "uniform"  # "uniform" on [0, 1], or "logit-normal" (Esser et al. 2024, Eq. 19)
    logit_mean: float = 0.0  # mean m of the logit-normal
    logit_std: float = 1.0  # standard deviation s of the logit-normal

    def __post_init__(self) -> None:
        if self.time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"unknown time_sampling {self.time_sampling!r}; choose one of {list(TIME_SAMPLINGS)}")
        if not self.logit_std > 0:
            raise ValueError(f"logit_std must be > 0, got {self.logit_std}")

    def sample_t(self, b: int, *, generator: Generator = None, dtype=torch.float32, device=None) -> torch.Tensor:
        if self.time_sampling == "uniform":
            return rand((b,), generator=generator, dtype=dtype, device=device)
        return torch.sigmoid(self.logit_mean + self.logit_std * randn((b,), generator=generator, dtype=dtype, device=device))

    def __call__(self, velocity_net: Velocity, z: torch.Tensor, x0: torch.Tensor, *, generator: Generator = None, **cond):
        t = self.sample_t(z.shape[0], generator=generator, dtype=z.dtype, device=z.device)
        return reflow_loss(velocity_net, z, x0, t, **cond)


class ReflowModel(nn.Module):
    """A velocity network trained on fixed pairs, in the family protocol of the shared trainer.

    ``losses((z, x0))`` → {"loss": (B,)}; ``sample(n, shape=..., n_steps=1)`` → Euler samples.
    """

    def __init__(self, net: nn.Module, loss: Optional[ReflowLoss] = None) -> None:
        super().__init__()
        self.net = net
        self.loss_fn = loss if loss is not None else ReflowLoss()

    def forward(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        return self.net(x, t, **cond)

    def losses(self, batch, *, phase: str = "main", generator: Generator = None) -> dict[str, torch.Tensor]:
        z, x0 = batch[0], batch[1]
        return {"loss": self.loss_fn(self.net, z, x0, generator=generator)}

    @torch.no_grad()
    def sample(
        self, n: int, *, shape: tuple, generator: Generator = None, n_steps: int = 1, method: str = "euler", dtype=torch.float32
    ) -> torch.Tensor:
        device = next(self.parameters()).device
        z = randn((n, *shape), generator=generator, dtype=dtype, device=device)
        return sample_flow(self.net, z, n_steps=n_steps, method=method)


def train_reflow(
    net: nn.Module,
    z: torch.Tensor,
    x0: torch.Tensor,
    *,
    steps: int = 500,
    batch_size: int = 256,
    lr: float = 1e-3,
    loss: Optional[ReflowLoss] = None,
    generator: Generator = None,
) -> list[float]:
    """A minimal Adam loop fitting ``net`` to fixed pairs (for tests and small benchmarks).

    Mini-batches are drawn with replacement from the N pairs with ``generator``. Returns the
    mean loss of every step. For real runs use the shared trainer with :class:`ReflowModel`.
    """
    if z.shape != x0.shape:
        raise ValueError(f"z and x0 must have the same shape, got {tuple(z.shape)} and {tuple(x0.shape)}")
    if steps < 1 or batch_size < 1 or not lr > 0:
        raise ValueError(f"need steps >= 1, batch_size >= 1, lr > 0; got {steps}, {batch_size}, {lr}")
    loss_fn = loss if loss is not None else ReflowLoss()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    n = z.shape[0]
    history = []
    for _ in range(int(steps)):
        idx = (rand((batch_size,), generator=generator, dtype=torch.float64) * n).long().clamp(max=n - 1).to(z.device)
        value = loss_fn(net, z[idx], x0[idx], generator=generator).mean()
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        history.append(float(value.detach()))
    return history


# ---------------------------------------------------------------------------------- straightness
@torch.no_grad()
def straightness(
    velocity: Velocity,
    z: torch.Tensor,
    *,
    n_steps: int = 64,
    method: str = "rk4",
    t_min: float = 0.0,
    t_max: float = 1.0,
    **cond,
) -> torch.Tensor:
    """(B,) straightness of the flow from z (Liu et al. 2023, Eq. 12, flow time t = 0 data, 1 noise).

    S = 1/(t_max − t_min) ∫ ‖d − v(x_t, t)‖² dt with d = (x_{t_max} − x_{t_min})/(t_max − t_min),
    x_t the ODE trajectory from x_{t_max} = z (``n_steps`` uniform steps of ``method``), the
    integral by the trapezoid rule on the grid (n_steps + 1 extra velocity evaluations); ‖·‖² sums
    over dimensions. S = 0 iff the trajectory is a straight line at constant speed. For a
    σ-space denoiser pass ``DenoiserVelocity(denoiser)``. Average over examples for Liu's S(v).
    """
    _check_times(t_min, t_max)
    if method not in FIXED_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(FIXED_METHODS)}")
    if int(n_steps) != n_steps or n_steps < 1:
        raise ValueError(f"n_steps must be an integer >= 1, got {n_steps}")
    b = z.shape[0]
    ts = torch.linspace(t_max, t_min, int(n_steps) + 1, dtype=torch.float64)
    path = [z]
    odeint_fixed(_velocity_rhs(velocity, b, cond), z, ts, method, callback=lambda s: path.append(s["y"]))
    d = (path[0] - path[-1]) / (t_max - t_min)
    dev = torch.stack(
        [
            ((d - velocity(x, torch.full((b,), float(t), dtype=z.dtype, device=z.device), **cond)) ** 2).flatten(1).sum(1)
            for x, t in zip(path, ts)
        ]
    )  # (n_steps + 1, B)
    h = (t_max - t_min) / n_steps
    return h * (0.5 * dev[0] + dev[1:-1].sum(0) + 0.5 * dev[-1]) / (t_max - t_min)
