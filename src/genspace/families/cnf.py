"""Continuous normalizing flow (FFJORD, Grathwohl et al. 2019) on the core's ODE solvers.

A velocity field v_θ(x, t) moves data to latent over t ∈ [0, 1] (the direction convention of
:mod:`genspace.families.flows`: t = 0 data, t = 1 latent):

    dx/dt = v_θ(x, t),     d log p_t(x(t))/dt = −div_x v_θ(x(t), t)

(Chen et al. 2018, Thm. 1), hence with z = x(1) and a standard normal base

    log p(x) = log N(z; 0, I) + ∫_0^1 div_x v_θ(x(t), t) dt        (FFJORD).

Training maximizes this by backpropagating through a fixed-step solver
(:func:`genspace.core.odeint.odeint_fixed`, RK4 with ``train_steps`` steps by default) — not the
adjoint method: simple and exact gradients of the discretized objective, memory linear in the
number of steps. The divergence is exact (one vector–Jacobian product per dimension) or
Hutchinson's estimate εᵀ(∂v/∂x)ε with Rademacher probes drawn once per example and held fixed
along the solve (FFJORD §3.1), which is unbiased for the whole integral since the trajectory does
not depend on ε. ``"auto"`` takes the exact trace when D ≤ 8.

The velocity field is :class:`ConcatMLP` (FFJORD's: t concatenated to every layer's input, tanh)
or :class:`genspace.nets.TimeMLP`; any ``v(x (B, D), t (B,)) -> (B, D)`` that acts per example
works.

Optional RNODE regularization (Finlay et al. 2020): λ_K ∫ ‖v‖² dt (kinetic energy) and
λ_J ∫ ‖∂v/∂x‖_F² dt (Jacobian Frobenius norm; exactly from the rows of the exact divergence, or
as ‖εᵀ ∂v/∂x‖² with the Hutchinson probes), integrated as extra ODE states. With weight 0 they
are logged as ``_kinetic`` / ``_jacobian``; with a positive weight they are optimized as
``kinetic`` / ``jacobian`` (already multiplied by the weight).

Evaluation (:meth:`CNF.likelihood`, ``log_likelihood``) and sampling use the adaptive solver
(:func:`genspace.core.odeint.odeint_adaptive`, dopri5 at rtol = atol = 1e-5 by default) with the
core's divergence estimator (:func:`genspace.continuous.likelihood.estimate_divergence`,
:func:`~genspace.continuous.likelihood.draw_probes`). The likelihood is labelled ``"exact"`` with
the exact divergence (exact up to the solver tolerance) and ``"estimate"`` with Hutchinson.

Images are flattened and dequantized as in :mod:`genspace.families.flows` (the density is one of
dequantized data; ``_bpd`` is logged; samples are binned back to levels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional, Sequence

import torch
from torch import nn

from genspace.config import register_variant
from genspace.continuous.likelihood import (
    LikelihoodResult,
    bits_per_dim,
    draw_probes,
    gaussian_log_prob,
    ode_log_likelihood,
)
from genspace.core.odeint import ADAPTIVE_METHODS, FIXED_METHODS, odeint_adaptive, odeint_fixed
from genspace.core.random import Generator, randn
from genspace.families.flows import dequantize_batch, quantize_samples

DIVERGENCE_CHOICES = ("auto", "exact", "hutchinson")
AUTO_EXACT_MAX_DIM = 8  # "auto" takes the exact divergence up to this dimension


def divergence_with_graph(
    out: torch.Tensor, x: torch.Tensor, probes: Optional[torch.Tensor] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable per-example (div, ‖J‖_F²) of out = v(x) (B, D) with J = ∂out/∂x.

    The training twin of :func:`genspace.continuous.likelihood.estimate_divergence` (which
    detaches): gradients are kept (``create_graph``) so the divergence can be trained through.
    ``probes`` None: exact, from the D rows of J (row i = ∂out_i/∂x); (P, B, D): Hutchinson,
    div ≈ (1/P) Σ_p ε_pᵀ J ε_p and ‖J‖_F² ≈ (1/P) Σ_p ‖ε_pᵀ J‖² (both unbiased for E εεᵀ = I).
    ``x`` must require grad and ``out`` must be computed from it.
    """
    b, dim = out.shape
    div = out.new_zeros(b)
    frob = out.new_zeros(b)
    rows = range(dim) if probes is None else range(probes.shape[0])
    for i in rows:
        grad_out = None if probes is None else probes[i]
        target = out[:, i].sum() if probes is None else out
        (g,) = torch.autograd.grad(target, x, grad_outputs=grad_out, create_graph=True, allow_unused=True)
        if g is None:  # v does not depend on x
            g = torch.zeros_like(x)
        div = div + (g[:, i] if probes is None else (g * probes[i]).sum(1))
        frob = frob + (g * g).sum(1)
    if probes is not None:
        div, frob = div / probes.shape[0], frob / probes.shape[0]
    return div, frob


class ConcatMLP(nn.Module):
    """A velocity MLP with t concatenated to every layer's input, in the style of FFJORD (Grathwohl et al. 2019).

    ``(x (B, D), t (B,)) -> (B, D)``: h_0 = x, h_{l+1} = tanh(W_l [h_l, t] + b_l), output
    W_L [h_L, t] + b_L. Smooth (tanh) so the ODE solvers see a smooth field; per example (no
    normalization layers), so per-example divergences are exact. The output layer is
    zero-initialized (the CNF starts as the identity map).

    Args:
        dim: D. hidden: width. depth: number of hidden layers (≥ 1).
    """

    def __init__(self, dim: int, hidden: int = 64, depth: int = 3) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("hidden", hidden), ("depth", depth)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        widths = [dim] + [hidden] * depth
        self.hidden_layers = nn.ModuleList(nn.Linear(a + 1, b) for a, b in zip(widths[:-1], widths[1:]))
        self.out = nn.Linear(hidden + 1, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tt = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])[:, None]  # (B, 1)
        h = x
        for layer in self.hidden_layers:
            h = torch.tanh(layer(torch.cat([h, tt], dim=1)))  # (B, hidden)
        return self.out(torch.cat([h, tt], dim=1))  # (B, D)


def _resolve(choice: str, dim: int, what: str) -> str:
    if choice not in DIVERGENCE_CHOICES:
        raise ValueError(f"{what} must be one of {list(DIVERGENCE_CHOICES)}, got {choice!r}")
    if choice == "auto":
        return "exact" if dim <= AUTO_EXACT_MAX_DIM else "hutchinson"
    return choice


class CNF(nn.Module):
    """A continuous normalizing flow ``dx/dt = v(x, t)``, t: 0 (data) → 1 (latent), N(0, I) base.

    Args:
        velocity: a network ``v(x (B, D), t (B,)) -> (B, D)`` acting per example (no batch
            statistics), e.g. :class:`ConcatMLP` or :class:`genspace.nets.TimeMLP`.
        shape: per-example data shape; D = prod(shape).
        n_levels: grey levels of quantized image data (None: continuous data).
        train_steps: steps of the fixed-grid training solve on [0, 1].
        train_method: fixed-step method of :func:`~genspace.core.odeint.odeint_fixed`.
        train_divergence: ``"auto"``, ``"exact"`` or ``"hutchinson"`` (Rademacher probes).
        n_probes: Hutchinson probes per example (training and evaluation).
        eval_divergence: divergence of :meth:`likelihood` (sets ``likelihood_kind``).
        rtol, atol, method: the adaptive solver of evaluation and sampling.
        kinetic_weight, jacobian_weight: RNODE weights λ_K, λ_J (0: logged only).
    """

    likelihood_kind = "exact"  # per instance: "exact" (exact divergence) or "estimate" (Hutchinson)
    likelihood_space = "density"  # a density of the continuous input (images: of dequantize()d data)

    def __init__(
        self,
        velocity: nn.Module,
        shape: Sequence[int],
        *,
        n_levels: Optional[int] = None,
        train_steps: int = 8,
        train_method: str = "rk4",
        train_divergence: str = "auto",
        n_probes: int = 1,
        eval_divergence: str = "auto",
        rtol: float = 1e-5,
        atol: float = 1e-5,
        method: str = "dopri5",
        kinetic_weight: float = 0.0,
        jacobian_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        if not self.shape or any(s < 1 for s in self.shape):
            raise ValueError(f"shape must be a non-empty tuple of positive sizes, got {tuple(shape)}")
        self.dim = math.prod(self.shape)
        if n_levels is not None and (isinstance(n_levels, bool) or not isinstance(n_levels, int) or n_levels < 2):
            raise ValueError(f"n_levels must be None or an integer >= 2, got {n_levels!r}")
        if isinstance(train_steps, bool) or not isinstance(train_steps, int) or train_steps < 1:
            raise ValueError(f"train_steps must be an integer >= 1, got {train_steps!r}")
        if train_method not in FIXED_METHODS:
            raise ValueError(f"train_method must be one of {sorted(FIXED_METHODS)}, got {train_method!r}")
        if method not in ADAPTIVE_METHODS:
            raise ValueError(f"method must be one of {sorted(ADAPTIVE_METHODS)}, got {method!r}")
        if isinstance(n_probes, bool) or not isinstance(n_probes, int) or n_probes < 1:
            raise ValueError(f"n_probes must be an integer >= 1, got {n_probes!r}")
        for name, w in (("kinetic_weight", kinetic_weight), ("jacobian_weight", jacobian_weight)):
            if not (math.isfinite(w) and w >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {w!r}")
        self.velocity = velocity
        self.n_levels = n_levels
        self.train_steps, self.train_method = train_steps, train_method
        self.train_divergence = _resolve(train_divergence, self.dim, "train_divergence")
        self.eval_divergence = _resolve(eval_divergence, self.dim, "eval_divergence")
        self.likelihood_kind = "exact" if self.eval_divergence == "exact" else "estimate"
        self.n_probes = n_probes
        self.rtol, self.atol, self.method = float(rtol), float(atol), method
        self.kinetic_weight, self.jacobian_weight = float(kinetic_weight), float(jacobian_weight)

    # ------------------------------------------------------------------ the field
    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) not in (self.shape, (self.dim,)):
            raise ValueError(f"expected examples of shape {self.shape} (or ({self.dim},)), got a batch of shape {tuple(x.shape)}")
        return x.reshape(x.shape[0], self.dim)  # (B, D)

    def field(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v(x, t): x (B, D), t a 0-d tensor or (B,) → (B, D)."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        return self.velocity(x, t.expand(x.shape[0]) if t.ndim == 0 else t)

    # ------------------------------------------------------------------ training objective
    def train_log_prob(self, x: torch.Tensor, *, generator: Generator = None) -> dict[str, torch.Tensor]:
        """Differentiable log p(x) through the fixed-step solve, with the RNODE integrals.

        Returns {"log_prob", "kinetic" (∫‖v‖² dt), "jacobian" (∫‖∂v/∂x‖_F² dt)}, each (B,).
        """
        x = self._flat(x)
        if not x.requires_grad:
            x = x.detach().requires_grad_(True)  # a leaf: ∂v/∂x at the first stage
        probes = None
        if self.train_divergence == "hutchinson":
            probes = draw_probes(x.detach(), self.n_probes, probe="rademacher", generator=generator)

        def rhs(t: torch.Tensor, state: tuple) -> tuple:
            xt = state[0]
            if not xt.requires_grad:
                xt = xt.requires_grad_(True)
            v = self.field(xt, t)
            div, frob = divergence_with_graph(v, xt, probes)
            return v, div, (v * v).sum(1), frob

        zero = x.new_zeros(x.shape[0])
        ts = torch.linspace(0.0, 1.0, self.train_steps + 1, dtype=torch.float64)
        with torch.enable_grad():  # the divergence needs ∂v/∂x even when called under no_grad
            z, delta, kinetic, jac = odeint_fixed(rhs, (x, zero, zero, zero), ts, method=self.train_method)
        return {"log_prob": gaussian_log_prob(z, 1.0) + delta, "kinetic": kinetic, "jacobian": jac}

    def losses(self, batch, *, phase: str = "main", generator: Generator = None) -> dict[str, torch.Tensor]:
        """{"nll": −log p(x) through the training solve (B,), RNODE terms, ``_bpd`` for images}."""
        x = batch[0]
        if self.n_levels is not None:
            x = dequantize_batch(x, self.n_levels, generator)
        res = self.train_log_prob(x, generator=generator)
        out = {"nll": -res["log_prob"]}
        for name, weight in (("kinetic", self.kinetic_weight), ("jacobian", self.jacobian_weight)):
            out[name if weight > 0 else f"_{name}"] = weight * res[name] if weight > 0 else res[name].detach()
        if self.n_levels is not None:
            out["_bpd"] = bits_per_dim(res["log_prob"].detach(), self.dim, n_levels=self.n_levels, data_range=2.0)
        return out

    # ------------------------------------------------------------------ evaluation
    def likelihood(
        self,
        x: torch.Tensor,
        *,
        generator: Generator = None,
        divergence: Optional[str] = None,
        rtol: Optional[float] = None,
        atol: Optional[float] = None,
        method: Optional[str] = None,
    ) -> LikelihoodResult:
        """log p(x) by the adaptive solve of (x, Δ) over t ∈ [0, 1] (no gradients).

        ``divergence`` (default ``eval_divergence``) ``"exact"`` or ``"hutchinson"`` (Rademacher
        probes, ``n_probes`` per example, from ``generator``); ``rtol``/``atol``/``method``
        default to the model's. The result's ``estimator`` names the divergence used;
        ``delta_log_prob`` is ∫_0^1 div v dt and ``z`` = x(1) (B, D).
        """
        x = self._flat(x)
        div_kind = self.eval_divergence if divergence is None else _resolve(divergence, self.dim, "divergence")
        probes, estimator = None, "exact"
        if div_kind == "hutchinson":
            probes = draw_probes(x, self.n_probes, probe="rademacher", generator=generator)
            estimator = f"hutchinson(rademacher, n_probes={self.n_probes})"
        with torch.no_grad():
            return ode_log_likelihood(
                lambda y, t: self.field(y, t), x, 0.0, 1.0, probes=probes, prior_log_prob=lambda z: gaussian_log_prob(z, 1.0),
                rtol=self.rtol if rtol is None else rtol, atol=self.atol if atol is None else atol,
                method=self.method if method is None else method, estimator=estimator,
            )

    @property
    def likelihood_description(self) -> str:
        """How :meth:`log_likelihood` is computed (for tables)."""
        div = "exact divergence" if self.eval_divergence == "exact" else f"Hutchinson divergence, {self.n_probes} Rademacher probe(s)"
        return f"FFJORD change of variables, {self.method} rtol={self.rtol:g}, {div}"

    def log_likelihood(self, x: torch.Tensor, *, generator: Generator = None) -> torch.Tensor:
        """(B,) log p(x) in nats with ``eval_divergence`` (``likelihood_kind`` says exact/estimate)."""
        return self.likelihood(x, generator=generator).log_prob

    @torch.no_grad()
    def sample(self, n: int, *, shape=None, generator: Generator = None, class_labels=None, **ignored) -> torch.Tensor:
        """(n, *shape): z ~ N(0, I) from ``generator``, integrated from t = 1 back to t = 0 (adaptive)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        if shape is not None and tuple(shape) != self.shape:
            raise ValueError(f"this CNF models examples of shape {self.shape}, got shape={tuple(shape)}")
        ref = next(self.parameters())
        z = randn((n, self.dim), generator=generator, dtype=ref.dtype, device=ref.device)
        x, _ = odeint_adaptive(lambda t, y: self.field(y, t), z, 1.0, 0.0, rtol=self.rtol, atol=self.atol, method=self.method)
        x = x.reshape(n, *self.shape)
        return x if self.n_levels is None else quantize_samples(x, self.n_levels)


# ---------------------------------------------------------------------------------- config
@register_variant("model", "cnf")
@dataclass
class CNFConfig:
    """A continuous normalizing flow (FFJORD) trained by maximum likelihood through an ODE solver."""

    net: Literal["concat", "timemlp"] = "concat"  # velocity field: FFJORD's ConcatMLP or genspace.nets.TimeMLP
    hidden: int = 64  # width of the velocity network
    depth: int = 3  # hidden layers (concat) / residual blocks (timemlp)
    time_embedding: Literal["sinusoidal", "fourier"] = "sinusoidal"  # timemlp only: t ∈ [0, 1] features (sinusoidal: smooth in t)
    embed_dim: int = 32  # timemlp only: size of the raw time features
    train_steps: int = 8  # fixed solver steps of the training solve (backprop through the solver)
    train_method: Literal["rk4", "midpoint", "heun", "euler"] = "rk4"  # fixed-step training solver
    train_divergence: Literal["auto", "exact", "hutchinson"] = "auto"  # auto: exact for D <= 8
    n_probes: int = 1  # Rademacher probes per example for Hutchinson
    eval_divergence: Literal["auto", "exact", "hutchinson"] = "auto"  # likelihood: exact → "exact", else "estimate"
    rtol: float = 1e-5  # adaptive solver (likelihood and sampling) relative tolerance
    atol: float = 1e-5  # adaptive solver absolute tolerance
    method: Literal["dopri5", "bosh3"] = "dopri5"  # adaptive solver pair
    kinetic_weight: float = 0.0  # RNODE λ_K on ∫‖v‖² dt (0: logged only)
    jacobian_weight: float = 0.0  # RNODE λ_J on ∫‖∂v/∂x‖_F² dt (0: logged only)


def build_cnf(cfg: CNFConfig, data) -> CNF:
    """The :class:`CNF` of ``cfg`` for ``data`` (duck-typed DataBundle); unconditional (labels ignored)."""
    from genspace.nets import TimeMLP

    shape = tuple(data.shape)
    dim = math.prod(shape)
    if cfg.net == "concat":
        velocity = ConcatMLP(dim, cfg.hidden, cfg.depth)
    elif cfg.net == "timemlp":
        velocity = TimeMLP(dim, cfg.hidden, cfg.depth, cfg.time_embedding, cfg.embed_dim)
    else:
        raise ValueError(f"unknown CNF net {cfg.net!r}; choose 'concat' or 'timemlp'")
    n_levels = getattr(data, "n_levels", None) if getattr(data, "kind", "points") == "images" else None
    return CNF(
        velocity,
        shape,
        n_levels=n_levels,
        train_steps=cfg.train_steps,
        train_method=cfg.train_method,
        train_divergence=cfg.train_divergence,
        n_probes=cfg.n_probes,
        eval_divergence=cfg.eval_divergence,
        rtol=cfg.rtol,
        atol=cfg.atol,
        method=cfg.method,
        kinetic_weight=cfg.kinetic_weight,
        jacobian_weight=cfg.jacobian_weight,
    )


FAMILY_BUILDERS = {CNFConfig: build_cnf}
