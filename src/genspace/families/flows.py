"""Normalizing flows: NICE, RealNVP, Glow, MAF, IAF and rational-quadratic spline flows.

Direction convention (used by every layer of :mod:`genspace.families.flow_layers` and here):
``forward`` maps data to latent,

    forward(x) -> (z, log|det ∂z/∂x|),      inverse(z) -> (x, log|det ∂x/∂z|),

log-dets per example, shape (B,), and the density is the change of variables
(Dinh et al. 2015)

    log p(x) = log N(z; 0, I) + log|det ∂z/∂x|,   z = f(x).

A :class:`Flow` composes layers f = f_L ∘ … ∘ f_1, so the log-det is the sum of the layers'.
Sampling draws z ~ N(0, I) and runs the layers' inverses in reverse order.

Presets (:func:`flow_layers`, ``kind``):

``"nice"``     additive couplings with alternating masks, then a diagonal scaling (Dinh et al. 2015)
``"realnvp"``  affine couplings with alternating masks (Dinh et al. 2017)
``"glow"``     steps of ActNorm → invertible linear (1×1 conv, LU) → affine coupling
               (Kingma & Dhariwal 2018, Fig. 2a; on flattened data the 1×1 convolution is an
               invertible D×D linear layer)
``"maf"``      MAF layers with reversed orders between them (Papamakarios et al. 2017): density in
               one pass per layer, sampling in D passes
``"iaf"``      the same with IAF layers (Kingma et al. 2016): sampling in one pass, density in D
``"spline"``   rational-quadratic spline couplings with alternating masks (Durkan et al. 2019)

Every preset starts at (or, for glow, right after ActNorm's data-dependent initialization, near)
the identity: the conditioners' last layers are zero-initialized.

Images. Examples of any shape are flattened to D = prod(shape) (digits: 64). On quantized data
(``n_levels`` given) the model is a density of *uniformly dequantized* data: ``losses`` maps the
batch back to its integer levels (:func:`genspace.data.to_uint8`) and draws
y = :func:`genspace.data.dequantize` (levels, generator) (Theis et al. 2016), and trains
−log p(y). Then log P(k) ≥ E_u log p(y) + D·log(2/L), so the bits/dim of the discrete data are
at most ``genspace.continuous.likelihood.bits_per_dim(log p(y), D, n_levels=L, data_range=2)``
(Δ = 2/L, the bin width of :func:`~genspace.data.dequantize`), logged as ``_bpd``. Samples are
binned back to levels and returned at the data's grid values (``to_unit_range(to_uint8(y))``).
``log_likelihood(x)`` is the exact density at the given x; dequantize first to evaluate bits/dim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional, Sequence

import torch
from torch import nn

from genspace.config import register_variant
from genspace.continuous.likelihood import bits_per_dim, gaussian_log_prob
from genspace.core.random import Generator, randn
from genspace.families.flow_layers import (
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    InvertibleLinearLU,
    MaskedAutoregressiveAffine,
    Permutation,
    Scaling,
    SplineCoupling,
)

FLOW_KINDS = ("nice", "realnvp", "glow", "maf", "iaf", "spline")


def dequantize_batch(x: torch.Tensor, n_levels: int, generator: Generator = None) -> torch.Tensor:
    """Data at the level values in [−1, 1] → uniformly dequantized y in the levels' bins (same shape, dtype)."""
    from genspace.data import dequantize, to_uint8

    return dequantize(to_uint8(x, n_levels), n_levels, generator=generator, dtype=x.dtype)


def quantize_samples(y: torch.Tensor, n_levels: int) -> torch.Tensor:
    """Continuous samples → the value of the level whose dequantization bin holds them (clipped to [−1, 1])."""
    from genspace.data import to_uint8, to_unit_range

    return to_unit_range(to_uint8(y, n_levels), n_levels, dtype=y.dtype)


class Flow(nn.Module):
    """A normalizing flow with a standard normal base, following the family protocol.

    Args:
        layers: invertible layers on vectors (B, D), each ``forward(x) -> (z, logdet)`` and
            ``inverse(z) -> (x, logdet)``, applied in order data → latent.
        shape: the per-example data shape (e.g. (2,) or (1, 8, 8)); D = prod(shape).
        n_levels: grey levels of quantized image data (None: continuous data, no dequantization).
    """

    likelihood_kind = "exact"
    likelihood_space = "density"  # a density of the continuous input (images: of dequantize()d data)

    def __init__(self, layers: Sequence[nn.Module], shape: Sequence[int], *, n_levels: Optional[int] = None) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        if not self.shape or any(s < 1 for s in self.shape):
            raise ValueError(f"shape must be a non-empty tuple of positive sizes, got {tuple(shape)}")
        if n_levels is not None and (isinstance(n_levels, bool) or not isinstance(n_levels, int) or n_levels < 2):
            raise ValueError(f"n_levels must be None or an integer >= 2, got {n_levels!r}")
        self.dim = math.prod(self.shape)
        self.n_levels = n_levels
        self.layers = nn.ModuleList(layers)
        if len(self.layers) == 0:
            raise ValueError("a Flow needs at least one layer")

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) not in (self.shape, (self.dim,)):
            raise ValueError(f"expected examples of shape {self.shape} (or ({self.dim},)), got a batch of shape {tuple(x.shape)}")
        return x.reshape(x.shape[0], self.dim)  # (B, D)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, *shape) → (z (B, D), log|det ∂z/∂x| (B,))."""
        z = self._flat(x)
        logdet = z.new_zeros(z.shape[0])
        for layer in self.layers:
            z, ld = layer(z)
            logdet = logdet + ld
        return z, logdet

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z (B, D) → (x (B, *shape), log|det ∂x/∂z| (B,)); differentiable (``sample`` is not)."""
        if z.ndim != 2 or z.shape[1] != self.dim:
            raise ValueError(f"z must have shape (B, {self.dim}), got {tuple(z.shape)}")
        x = z
        logdet = z.new_zeros(z.shape[0])
        for layer in reversed(self.layers):
            x, ld = layer.inverse(x)
            logdet = logdet + ld
        return x.reshape(x.shape[0], *self.shape), logdet

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """(B,) exact log p(x) in nats = log N(f(x); 0, I) + log|det ∂f/∂x|."""
        z, logdet = self(x)
        return gaussian_log_prob(z, 1.0) + logdet

    def log_likelihood(self, x: torch.Tensor, *, generator: Generator = None) -> torch.Tensor:
        """(B,) exact log-density at x (nats); ``generator`` is unused (the likelihood is exact)."""
        return self.log_prob(x)

    def losses(self, batch, *, phase: str = "main", generator: Generator = None) -> dict[str, torch.Tensor]:
        """{"nll": −log p(x) (B,) nats} (on dequantized data when ``n_levels``, plus ``_bpd``)."""
        x = batch[0]
        if self.n_levels is not None:
            x = dequantize_batch(x, self.n_levels, generator)
        log_p = self.log_prob(x)
        out = {"nll": -log_p}
        if self.n_levels is not None:
            out["_bpd"] = bits_per_dim(log_p.detach(), self.dim, n_levels=self.n_levels, data_range=2.0)
        return out

    @torch.no_grad()
    def sample(self, n: int, *, shape=None, generator: Generator = None, class_labels=None, **ignored) -> torch.Tensor:
        """(n, *shape) samples: z ~ N(0, I) from ``generator``, x = f⁻¹(z) (binned to levels for images)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        if shape is not None and tuple(shape) != self.shape:
            raise ValueError(f"this flow models examples of shape {self.shape}, got shape={tuple(shape)}")
        ref = next(self.parameters())
        z = randn((n, self.dim), generator=generator, dtype=ref.dtype, device=ref.device)
        x, _ = self.inverse(z)
        return x if self.n_levels is None else quantize_samples(x, self.n_levels)


# ---------------------------------------------------------------------------------- presets
def flow_layers(
    kind: str,
    dim: int,
    *,
    n_layers: int = 8,
    hidden: int = 128,
    depth: int = 2,
    scale_bound: float = 3.0,
    n_bins: int = 8,
    tail_bound: float = 4.0,
) -> list[nn.Module]:
    """The layers of a preset flow on D = ``dim`` (see the module doc for each ``kind``).

    ``n_layers`` counts couplings / autoregressive layers / Glow steps; ``hidden`` and ``depth``
    size each conditioner; ``scale_bound`` clamps log-scales; ``n_bins`` and ``tail_bound`` are
    the spline's K and B.
    """
    if kind not in FLOW_KINDS:
        raise ValueError(f"unknown flow kind {kind!r}; choose one of {list(FLOW_KINDS)}")
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
        raise ValueError(f"n_layers must be an integer >= 1, got {n_layers!r}")
    if dim < 2 and kind in ("nice", "realnvp", "glow", "spline"):
        raise ValueError(f"kind={kind!r} uses coupling layers, which need D >= 2; got D={dim}")
    layers: list[nn.Module] = []
    for i in range(n_layers):
        parity = i % 2
        if kind == "nice":
            layers.append(AdditiveCoupling(dim, parity, hidden, depth))
        elif kind == "realnvp":
            layers.append(AffineCoupling(dim, parity, hidden, depth, scale_bound))
        elif kind == "glow":
            layers += [ActNorm(dim), InvertibleLinearLU(dim), AffineCoupling(dim, parity, hidden, depth, scale_bound)]
        elif kind in ("maf", "iaf"):
            if i > 0:
                layers.append(Permutation(dim))
            layers.append(MaskedAutoregressiveAffine(dim, kind, hidden, depth, scale_bound))
        else:
            layers.append(SplineCoupling(dim, parity, hidden, depth, n_bins, tail_bound))
    if kind == "nice":
        layers.append(Scaling(dim))
    return layers


# ---------------------------------------------------------------------------------- config
@register_variant("model", "normalizing-flow")
@dataclass
class FlowConfig:
    """A normalizing flow (genspace.families.flows): exact likelihood; sampling one pass per layer (MAF: D)."""

    kind: Literal["nice", "realnvp", "glow", "maf", "iaf", "spline"] = "realnvp"  # the preset (module doc)
    n_layers: int = 8  # couplings / autoregressive layers / Glow steps
    hidden: int = 128  # width of each conditioner MLP (MADE for maf/iaf)
    depth: int = 2  # hidden layers of each conditioner
    scale_bound: float = 3.0  # log-scales soft-clamped to (−b, b): s = b·tanh(ŝ/b) (realnvp, glow, maf, iaf)
    n_bins: int = 8  # spline bins K (spline)
    tail_bound: float = 4.0  # spline interval [−B, B], identity outside (spline)


def build_normalizing_flow(cfg: FlowConfig, data) -> Flow:
    """The :class:`Flow` of ``cfg`` for ``data`` (duck-typed DataBundle: shape, kind, n_levels).

    Unconditional: class labels in the data are ignored. Image data with known ``n_levels`` is
    dequantized in the loss (module doc).
    """
    shape = tuple(data.shape)
    layers = flow_layers(
        cfg.kind,
        math.prod(shape),
        n_layers=cfg.n_layers,
        hidden=cfg.hidden,
        depth=cfg.depth,
        scale_bound=cfg.scale_bound,
        n_bins=cfg.n_bins,
        tail_bound=cfg.tail_bound,
    )
    n_levels = getattr(data, "n_levels", None) if getattr(data, "kind", "points") == "images" else None
    return Flow(layers, shape, n_levels=n_levels)


FAMILY_BUILDERS = {FlowConfig: build_normalizing_flow}
