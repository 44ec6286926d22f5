"""Invertible layers of normalizing flows, each an ``nn.Module`` with ``forward`` and ``inverse``.

Direction convention (the one of :mod:`genspace.families.flows`): a layer maps data towards the
latent in its forward direction,

    forward(x) -> (z, log|det ∂z/∂x|)        inverse(z) -> (x, log|det ∂x/∂z|),

with the log-determinants per example, shape (B,); the inverse's log-det is minus the forward
one at the corresponding point. A flow's density is log p(x) = log N(f(x); 0, I) + Σ log-dets.

Layers on vectors (B, D):

- :class:`AdditiveCoupling` — NICE (Dinh et al. 2015): z_b = x_b + m(x_a), log-det 0;
- :class:`Scaling` — NICE's diagonal scaling layer: z = x·exp(s), log-det Σ s;
- :class:`AffineCoupling` — RealNVP (Dinh et al. 2017): z_b = x_b·exp(s(x_a)) + t(x_a),
  with the log-scale soft-clamped, s = b·tanh(ŝ/b) (|s| < b keeps exp(s) in a safe range while
  leaving s ≈ ŝ near 0), and the conditioner's last layer zero-initialized so that the layer
  starts as the identity;
- :class:`MaskedAutoregressiveAffine` — MAF (Papamakarios et al. 2017) and IAF
  (Kingma et al. 2016) with a :class:`MADE` conditioner (Germain et al. 2015);
- :class:`SplineCoupling` — rational-quadratic spline coupling (Durkan et al. 2019), built on
  :func:`rational_quadratic_spline`;
- :class:`Permutation` — a fixed permutation (reversal by default), log-det 0.

Layers on vectors (B, C) or images (B, C, H, W), acting on the channel axis 1:

- :class:`ActNorm` — Glow's activation normalization (Kingma & Dhariwal 2018, §3.1) with
  data-dependent initialization;
- :class:`InvertibleLinearLU` — Glow's invertible 1×1 convolution in the LU parameterization
  (§3.2): W = P L (U + diag(s)), log|det| = H·W·Σ log|s| (for vectors H·W = 1: an invertible
  linear layer).

Coupling masks: ``parity`` 0 keeps the even coordinates (x_a = x[0::2]) and transforms the odd
ones; parity 1 the reverse. Alternating parities make every coordinate transformed every other
layer.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from genspace.nets.masked import MaskedLinear, made_masks


# ---------------------------------------------------------------------------------- helpers
def soft_clamp(s: torch.Tensor, bound: float) -> torch.Tensor:
    """bound · tanh(s / bound): smooth, identity to first order at 0, values in (−bound, bound)."""
    return bound * torch.tanh(s / bound)


def _check_positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_positive_float(name: str, value) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return value


def _check_vectors(x: torch.Tensor, dim: int, layer: str) -> None:
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"{layer} expects vectors of shape (B, {dim}), got {tuple(x.shape)}")


def mlp(in_dim: int, out_dim: int, hidden: int, depth: int, *, zero_init: bool = True) -> nn.Sequential:
    """Linear → (SiLU → Linear) × depth: (B, in_dim) → (B, out_dim); last layer zeroed if ``zero_init``.

    ``depth`` counts hidden layers of width ``hidden``; depth 0 is a single linear map. An
    ``in_dim`` of 0 gives a learned constant (the bias of the last layer).
    """
    _check_positive_int("depth", depth, minimum=0)
    widths = [in_dim] + [hidden] * depth + [out_dim]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        if i > 0:
            layers.append(nn.SiLU())
        layers.append(nn.Linear(a, b))
    if zero_init:
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)
    return nn.Sequential(*layers)


class _Coupling(nn.Module):
    """Shared split/merge of the coupling layers: x_a = x[idx_a] conditions x_b = x[idx_b]."""

    def __init__(self, dim: int, parity: int) -> None:
        super().__init__()
        _check_positive_int("dim", dim, minimum=2)
        if parity not in (0, 1):
            raise ValueError(f"parity must be 0 or 1, got {parity!r}")
        self.dim, self.parity = dim, parity
        idx = torch.arange(dim)
        self.register_buffer("idx_a", idx[idx % 2 == parity].clone(), persistent=False)
        self.register_buffer("idx_b", idx[idx % 2 != parity].clone(), persistent=False)
        self.register_buffer("merge", torch.argsort(torch.cat([self.idx_a, self.idx_b])), persistent=False)

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_vectors(x, self.dim, type(self).__name__)
        return x[:, self.idx_a], x[:, self.idx_b]  # (B, |a|), (B, |b|)

    def _merge(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat([a, b], dim=1)[:, self.merge]  # (B, D)


# ---------------------------------------------------------------------------------- NICE
class AdditiveCoupling(_Coupling):
    """NICE additive coupling (Dinh et al. 2015): z_a = x_a, z_b = x_b + m(x_a); log-det 0.

    Args:
        dim: D ≥ 2. parity: which half conditions (see module doc).
        hidden, depth: the conditioner MLP m (zero-initialized output: starts at the identity).
    """

    def __init__(self, dim: int, parity: int = 0, hidden: int = 64, depth: int = 2) -> None:
        super().__init__(dim, parity)
        self.net = mlp(len(self.idx_a), len(self.idx_b), hidden, depth)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = self._split(x)
        return self._merge(a, b + self.net(a)), x.new_zeros(x.shape[0])

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = self._split(z)
        return self._merge(a, b - self.net(a)), z.new_zeros(z.shape[0])


class Scaling(nn.Module):
    """NICE's diagonal scaling (Dinh et al. 2015): z = x·exp(s), log-det Σ_i s_i (s starts at 0)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = _check_positive_int("dim", dim)
        self.log_scale = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_vectors(x, self.dim, "Scaling")
        return x * torch.exp(self.log_scale), self.log_scale.sum().expand(x.shape[0])

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_vectors(z, self.dim, "Scaling")
        return z * torch.exp(-self.log_scale), -self.log_scale.sum().expand(z.shape[0])


# ---------------------------------------------------------------------------------- RealNVP
class AffineCoupling(_Coupling):
    """RealNVP affine coupling (Dinh et al. 2017): z_b = x_b·exp(s(x_a)) + t(x_a).

    log|det ∂z/∂x| = Σ_b s_b(x_a) (a triangular Jacobian); inverse x_b = (z_b − t)·exp(−s). The raw
    log-scale is soft-clamped, s = scale_bound·tanh(ŝ / scale_bound). The conditioner's last
    layer is zero-initialized (s = t = 0): the layer starts as the identity.

    Args:
        dim: D ≥ 2. parity: which half conditions.
        hidden, depth: the conditioner MLP (x_a ↦ (ŝ, t)).
        scale_bound: the clamp b > 0 of the log-scale.
    """

    def __init__(self, dim: int, parity: int = 0, hidden: int = 64, depth: int = 2, scale_bound: float = 3.0) -> None:
        super().__init__(dim, parity)
        self.scale_bound = _check_positive_float("scale_bound", scale_bound)
        self.net = mlp(len(self.idx_a), 2 * len(self.idx_b), hidden, depth)

    def _params(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw_s, t = self.net(a).chunk(2, dim=1)  # (B, |b|) each
        return soft_clamp(raw_s, self.scale_bound), t

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = self._split(x)
        s, t = self._params(a)
        return self._merge(a, b * torch.exp(s) + t), s.sum(1)

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = self._split(z)
        s, t = self._params(a)
        return self._merge(a, (b - t) * torch.exp(-s)), -s.sum(1)


class Permutation(nn.Module):
    """z = x[:, perm] (reversal by default); log-det 0."""

    def __init__(self, dim: int, perm: Optional[torch.Tensor] = None) -> None:
        super().__init__()
        self.dim = _check_positive_int("dim", dim)
        perm = torch.arange(dim - 1, -1, -1) if perm is None else torch.as_tensor(perm, dtype=torch.long)
        if perm.shape != (dim,) or not torch.equal(perm.sort().values, torch.arange(dim)):
            raise ValueError(f"perm must be a permutation of 0..{dim - 1}, got {perm.tolist()}")
        self.register_buffer("perm", perm.clone())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_vectors(x, self.dim, "Permutation")
        return x[:, self.perm], x.new_zeros(x.shape[0])

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_vectors(z, self.dim, "Permutation")
        return z[:, torch.argsort(self.perm)], z.new_zeros(z.shape[0])


# ---------------------------------------------------------------------------------- Glow
def _channel_view(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(C,) → (1, C, 1, ..., 1) broadcastable against x (B, C, ...)."""
    return p.reshape(1, -1, *([1] * (x.ndim - 2)))


def _check_channels(x: torch.Tensor, channels: int, layer: str) -> None:
    if x.ndim < 2 or x.shape[1] != channels:
        raise ValueError(f"{layer} expects (B, {channels}) or (B, {channels}, H, W) inputs, got {tuple(x.shape)}")


class ActNorm(nn.Module):
    """Glow's activation normalization (Kingma & Dhariwal 2018, §3.1, Table 1).

    z = (x + bias) · exp(log_scale), per channel; log|det| = H·W·Σ_c log_scale_c per example
    (H·W = 1 for vectors).

    Data-dependent initialization: on the first ``forward`` call while the buffer
    ``initialized`` is False, bias and log_scale are set so that this batch's outputs have zero
    mean and unit variance per channel (statistics over the batch and spatial axes; in training
    mode under torch.distributed, averaged over the ranks so that they stay identical), then
    ``initialized`` becomes True. The buffer
    is part of the state dict, so a loaded checkpoint does not re-initialize. Calling
    ``inverse`` first (sampling an untrained model) uses the current (identity) parameters.

    Args:
        channels: C.
        eps: added to the standard deviation at initialization.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.channels = _check_positive_int("channels", channels)
        self.eps = float(eps)
        self.bias = nn.Parameter(torch.zeros(channels))
        self.log_scale = nn.Parameter(torch.zeros(channels))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Set bias = −mean, log_scale = −log(std + eps) per channel from the batch x (B, C, ...)."""
        _check_channels(x, self.channels, "ActNorm")
        dims = [0] + list(range(2, x.ndim))
        first = x.mean(dim=dims)  # (C,)
        second = (x * x).mean(dim=dims)  # (C,)
        if self.training and torch.distributed.is_available() and torch.distributed.is_initialized():
            moments = torch.stack([first, second])
            torch.distributed.all_reduce(moments)
            first, second = moments / torch.distributed.get_world_size()
        std = (second - first * first).clamp_min(0).sqrt()
        self.bias.copy_(-first)
        self.log_scale.copy_(-torch.log(std + self.eps))
        self.initialized.fill_(True)

    def _logdet(self, x: torch.Tensor) -> torch.Tensor:
        spatial = x[0, 0].numel()
        return (spatial * self.log_scale.sum()).expand(x.shape[0])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_channels(x, self.channels, "ActNorm")
        if not bool(self.initialized):
            self.initialize(x)
        z = (x + _channel_view(self.bias, x)) * _channel_view(torch.exp(self.log_scale), x)
        return z, self._logdet(x)

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_channels(z, self.channels, "ActNorm")
        x = z * _channel_view(torch.exp(-self.log_scale), z) - _channel_view(self.bias, z)
        return x, -self._logdet(z)


class InvertibleLinearLU(nn.Module):
    """Glow's invertible 1×1 convolution, LU-parameterized (Kingma & Dhariwal 2018, §3.2).

    W = P L (U + diag(s)) with P a fixed permutation, L unit lower-triangular, U strictly upper
    triangular, s = sign · exp(log|s|) (signs fixed); z_{:, :, h, w} = W x_{:, :, h, w}. The
    log-determinant is H·W·Σ log|s_c| per example (H·W = 1 on vectors (B, C), where this is an
    invertible linear layer). Initialized from a random rotation (the LU factors of the Q of a
    Gaussian matrix, drawn from ``generator`` or torch's global generator, like nn.Linear's
    initialization); P and the signs are buffers, so a checkpoint restores them.

    Args:
        channels: C.
        generator: optional torch.Generator for the initial rotation.
    """

    def __init__(self, channels: int, generator: Optional[torch.Generator] = None) -> None:
        super().__init__()
        self.channels = _check_positive_int("channels", channels)
        q, _ = torch.linalg.qr(torch.randn(channels, channels, generator=generator, dtype=torch.float64))
        p, lower, upper = torch.linalg.lu(q)
        s = torch.diagonal(upper)
        self.register_buffer("perm", p.float())
        self.register_buffer("sign_s", torch.sign(s).float())
        self.lower = nn.Parameter(torch.tril(lower, -1).float())
        self.upper = nn.Parameter(torch.triu(upper, 1).float())
        self.log_abs_s = nn.Parameter(torch.log(s.abs()).float())

    def factors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(P, L, U + diag(s)), each (C, C), with the masks applied."""
        eye = torch.eye(self.channels, dtype=self.lower.dtype, device=self.lower.device)
        lower = torch.tril(self.lower, -1) + eye
        upper = torch.triu(self.upper, 1) + torch.diag(self.sign_s * torch.exp(self.log_abs_s))
        return self.perm, lower, upper

    def weight(self) -> torch.Tensor:
        """The assembled W = P L (U + diag(s)), (C, C)."""
        p, lower, upper = self.factors()
        return p @ lower @ upper

    def _logdet(self, x: torch.Tensor) -> torch.Tensor:
        return (x[0, 0].numel() * self.log_abs_s.sum()).expand(x.shape[0])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_channels(x, self.channels, "InvertibleLinearLU")
        z = torch.einsum("ij,bj...->bi...", self.weight(), x)
        return z, self._logdet(x)

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x = W⁻¹ z by two triangular solves: L y = Pᵀ z, (U + diag(s)) x = y."""
        _check_channels(z, self.channels, "InvertibleLinearLU")
        p, lower, upper = self.factors()
        cols = z.movedim(1, -1).reshape(-1, self.channels).T  # (C, N): one column per pixel
        y = torch.linalg.solve_triangular(lower, p.T @ cols, upper=False, unitriangular=True)
        x = torch.linalg.solve_triangular(upper, y, upper=True)
        x = x.T.reshape(*z.movedim(1, -1).shape).movedim(-1, 1)  # back to (B, C, ...)
        return x, -self._logdet(z)


# ---------------------------------------------------------------------------------- MADE, MAF, IAF
class MADE(nn.Module):
    """Masked autoencoder for distribution estimation (Germain et al. 2015), minimal form.

    (B, D) → (B, n_params, D): output [:, :, i] depends only on inputs x_j with j < i (the
    natural order; flows reorder with :class:`Permutation` layers between MADEs).

    Degrees: input i has degree i+1; hidden unit k has degree (k mod (D−1)) + 1 (cycling through
    1..D−1, deterministic rather than random as in the AR family's ensembles; 0 when D = 1, so
    the only output is a learned constant); output i has degree i+1. The masks are those of
    :func:`genspace.nets.masked.made_masks`: a hidden unit sees the inputs of degree ≤ its own; an
    output sees the hidden units of degree strictly below its own. The output layer is
    zero-initialized (the flow layer starts as the identity).

    Args:
        dim: D. hidden: width of each hidden layer. depth: number of hidden layers (≥ 1).
        n_params: parameters per dimension (2 for an affine transform: shift and log-scale).
    """

    def __init__(self, dim: int, hidden: int = 64, depth: int = 2, n_params: int = 2) -> None:
        super().__init__()
        self.dim = _check_positive_int("dim", dim)
        _check_positive_int("hidden", hidden)
        _check_positive_int("depth", depth)
        self.n_params = _check_positive_int("n_params", n_params)
        deg_in = torch.arange(1, dim + 1)
        deg_hidden = torch.arange(hidden) % max(dim - 1, 1) + 1 if dim > 1 else torch.zeros(hidden, dtype=torch.long)
        masks = made_masks(deg_in, deg_hidden.expand(depth, hidden), n_params)  # output unit i·P + p has degree i+1
        for i, m in enumerate(masks):
            self.register_buffer(f"mask{i}", m.float(), persistent=False)
        sizes = [dim] + [hidden] * depth
        self.hidden_layers = nn.ModuleList(MaskedLinear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.out = MaskedLinear(hidden, n_params * dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_vectors(x, self.dim, "MADE")
        h = x
        for i, layer in enumerate(self.hidden_layers):
            h = F.silu(layer(h, getattr(self, f"mask{i}")))
        out = self.out(h, getattr(self, f"mask{len(self.hidden_layers)}"))  # (B, D·P), unit i·P + p
        return out.reshape(x.shape[0], self.dim, self.n_params).transpose(1, 2)  # (B, n_params, D)


class MaskedAutoregressiveAffine(nn.Module):
    """MAF / IAF layer: an autoregressive affine transform with a MADE conditioner.

    With (μ, α) = MADE(·) and α soft-clamped to (−scale_bound, scale_bound):

    ``"maf"`` (Papamakarios et al. 2017), conditioned on the data side:
        z_i = (x_i − μ_i(x_<i)) · exp(−α_i(x_<i)),   log|det ∂z/∂x| = −Σ α_i(x).
        Density evaluation (``forward``) is one pass; sampling (``inverse``) is D passes,
        x_i = z_i·exp(α_i) + μ_i fixing one more coordinate per pass.
    ``"iaf"`` (Kingma et al. 2016), conditioned on the latent side:
        x_i = z_i · exp(α_i(z_<i)) + μ_i(z_<i),      log|det ∂x/∂z| = Σ α_i(z).
        Sampling (``inverse``) is one pass; density evaluation (``forward``) is D passes.

    The MADE output layer is zero-initialized, so the layer starts as the identity.

    Args:
        dim: D. kind: ``"maf"`` or ``"iaf"``. hidden, depth: the MADE. scale_bound: clamp of α.
    """

    KINDS = ("maf", "iaf")

    def __init__(self, dim: int, kind: str = "maf", hidden: int = 64, depth: int = 2, scale_bound: float = 3.0) -> None:
        super().__init__()
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {list(self.KINDS)}, got {kind!r}")
        self.dim, self.kind = _check_positive_int("dim", dim), kind
        self.scale_bound = _check_positive_float("scale_bound", scale_bound)
        self.made = MADE(dim, hidden, depth, n_params=2)

    def _params(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.made(y)  # (B, 2, D)
        return out[:, 0], soft_clamp(out[:, 1], self.scale_bound)

    def _normalize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x → z with the conditioner on x (one pass); returns (z, −Σα)."""
        mu, alpha = self._params(x)
        return (x - mu) * torch.exp(-alpha), -alpha.sum(1)

    def _generate(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z → x with the conditioner on z (one pass); returns (x, Σα)."""
        mu, alpha = self._params(z)
        return z * torch.exp(alpha) + mu, alpha.sum(1)

    def _solve_normalize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x with (x − μ(x))·exp(−α(x)) = z: D passes, pass i fixes x_i; returns (x, Σα(x))."""
        x = torch.zeros_like(z)
        for _ in range(self.dim):
            mu, alpha = self._params(x)
            x = z * torch.exp(alpha) + mu
        return x, alpha.sum(1)

    def _solve_generate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z with z·exp(α(z)) + μ(z) = x: D passes; returns (z, −Σα(z))."""
        z = torch.zeros_like(x)
        for _ in range(self.dim):
            mu, alpha = self._params(z)
            z = (x - mu) * torch.exp(-alpha)
        return z, -alpha.sum(1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_vectors(x, self.dim, self.kind.upper())
        return self._normalize(x) if self.kind == "maf" else self._solve_generate(x)

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_vectors(z, self.dim, self.kind.upper())
        return self._solve_normalize(z) if self.kind == "maf" else self._generate(z)


# ---------------------------------------------------------------------------------- splines
def _knots(raw: torch.Tensor, bound: float, minimum: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Bin sizes min + (1 − K·min)·softmax(raw), scaled to [−B, B]: (sizes (..., K), knots (..., K+1))."""
    k = raw.shape[-1]
    sizes = minimum + (1 - minimum * k) * torch.softmax(raw, dim=-1)
    cum = F.pad(torch.cumsum(sizes, dim=-1), (1, 0))  # (..., K+1), 0 … 1
    knots = 2 * bound * cum - bound
    knots = torch.cat([torch.full_like(knots[..., :1], -bound), knots[..., 1:-1], torch.full_like(knots[..., :1], bound)], dim=-1)
    return knots[..., 1:] - knots[..., :-1], knots


def _gather(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return torch.gather(t, -1, idx[..., None]).squeeze(-1)


def rational_quadratic_spline(
    x: torch.Tensor,
    widths: torch.Tensor,
    heights: torch.Tensor,
    derivatives: torch.Tensor,
    *,
    bound: float = 3.0,
    inverse: bool = False,
    min_width: float = 1e-3,
    min_height: float = 1e-3,
    min_derivative: float = 1e-3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Monotonic rational-quadratic spline with identity tails (Durkan et al. 2019, §3.1).

    On [−B, B] the map is a piecewise rational-quadratic function through K+1 knots
    (x_k, y_k) with derivatives δ_k (Gregory & Delbourgo 1982); outside it is the identity, and
    δ_0 = δ_K = 1 makes the derivative continuous there. For x in bin k, with
    w_k = x_{k+1} − x_k, h_k = y_{k+1} − y_k, s_k = h_k/w_k, ξ = (x − x_k)/w_k:

        g(x)  = y_k + h_k [s_k ξ² + δ_k ξ(1−ξ)] / [s_k + (δ_{k+1} + δ_k − 2 s_k) ξ(1−ξ)],
        g'(x) = s_k² [δ_{k+1} ξ² + 2 s_k ξ(1−ξ) + δ_k (1−ξ)²] / [s_k + (δ_{k+1} + δ_k − 2 s_k) ξ(1−ξ)]²

    The inverse solves the quadratic a ξ² + b ξ + c = 0 (Durkan et al., appendix),
    a = h_k(s_k − δ_k) + (y − y_k)(δ_{k+1} + δ_k − 2 s_k), b = h_k δ_k − (y − y_k)(δ_{k+1} + δ_k − 2 s_k),
    c = −s_k (y − y_k), by the stable root ξ = 2c / (−b − √(b² − 4ac)).

    Parameterization: widths and heights are min + (1 − K·min)·softmax(raw) of the interval
    length 2B; interior derivatives are min_derivative + softplus(raw + c) with
    c = log(e^{1 − min_derivative} − 1), so raw zeros give uniform bins and δ = 1: the identity.

    Args:
        x: (...) inputs (data side, or latent side when ``inverse``).
        widths, heights: (..., K) unnormalized bin widths and heights.
        derivatives: (..., K−1) unnormalized derivatives at the interior knots.
        bound: B > 0. inverse: evaluate the inverse map.
        min_width, min_height, min_derivative: lower limits (K·min_width < 1, K·min_height < 1).

    Returns:
        ``(y, logabsdet)`` both (...): y = g(x) and log g'(x), or, with ``inverse``,
        x = g⁻¹(y) and log |dx/dy| = −log g'(x).
    """
    k = widths.shape[-1]
    if heights.shape[-1] != k or derivatives.shape[-1] != k - 1:
        raise ValueError(
            f"need widths and heights (..., K) and derivatives (..., K-1), got {tuple(widths.shape)}, "
            f"{tuple(heights.shape)}, {tuple(derivatives.shape)}"
        )
    if min_width * k >= 1 or min_height * k >= 1:
        raise ValueError(f"min_width and min_height must be < 1/K = {1 / k:.4g}, got {min_width}, {min_height}")
    bound = _check_positive_float("bound", bound)
    bin_w, knots_x = _knots(widths, bound, min_width)  # (..., K), (..., K+1)
    bin_h, knots_y = _knots(heights, bound, min_height)
    shift = math.log(math.expm1(1 - min_derivative))
    inner = min_derivative + F.softplus(derivatives + shift)  # (..., K-1)
    one = torch.ones_like(inner[..., :1])
    delta = torch.cat([one, inner, one], dim=-1)  # (..., K+1), δ_0 = δ_K = 1

    inside = (x >= -bound) & (x <= bound)
    xc = x.clamp(-bound, bound)
    knots = knots_y if inverse else knots_x
    idx = (xc[..., None] >= knots[..., 1:k]).sum(-1)  # (...) bin index 0 … K−1
    x_k, w_k = _gather(knots_x, idx), _gather(bin_w, idx)
    y_k, h_k = _gather(knots_y, idx), _gather(bin_h, idx)
    d_k, d_k1 = _gather(delta, idx), _gather(delta[..., 1:], idx)
    s_k = h_k / w_k
    curv = d_k1 + d_k - 2 * s_k

    if inverse:
        dy = xc - y_k
        a = h_k * (s_k - d_k) + dy * curv
        b = h_k * d_k - dy * curv
        c = -s_k * dy
        disc = (b * b - 4 * a * c).clamp_min(0)
        xi = (2 * c) / (-b - torch.sqrt(disc))
        out = xi * w_k + x_k
    else:
        xi = (xc - x_k) / w_k
        out = y_k + h_k * (s_k * xi * xi + d_k * xi * (1 - xi)) / (s_k + curv * xi * (1 - xi))
    one_minus = 1 - xi
    numer = d_k1 * xi * xi + 2 * s_k * xi * one_minus + d_k * one_minus * one_minus
    denom = s_k + curv * xi * one_minus
    log_deriv = 2 * torch.log(s_k) + torch.log(numer) - 2 * torch.log(denom)  # log g'(x)
    out = torch.where(inside, out, x)
    logabsdet = torch.where(inside, -log_deriv if inverse else log_deriv, torch.zeros_like(x))
    return out, logabsdet


class SplineCoupling(_Coupling):
    """Rational-quadratic spline coupling (Durkan et al. 2019): z_b = g(x_b; θ(x_a)).

    Each transformed coordinate gets its own monotonic spline (:func:`rational_quadratic_spline`,
    K bins on [−B, B], identity outside) whose 3K − 1 parameters come from an MLP of x_a; the
    log-det is Σ_b log g'(x_b). The MLP's last layer is zero-initialized: uniform bins and unit
    derivatives, so the layer starts as the identity.

    Args:
        dim: D ≥ 2. parity: which half conditions. hidden, depth: the conditioner MLP.
        n_bins: K. bound: B. min_width, min_height, min_derivative: see the spline.
    """

    def __init__(
        self,
        dim: int,
        parity: int = 0,
        hidden: int = 64,
        depth: int = 2,
        n_bins: int = 8,
        bound: float = 3.0,
        min_width: float = 1e-3,
        min_height: float = 1e-3,
        min_derivative: float = 1e-3,
    ) -> None:
        super().__init__(dim, parity)
        self.n_bins = _check_positive_int("n_bins", n_bins, minimum=2)
        self.bound = _check_positive_float("bound", bound)
        self.min_width, self.min_height, self.min_derivative = min_width, min_height, min_derivative
        self.net = mlp(len(self.idx_a), len(self.idx_b) * (3 * n_bins - 1), hidden, depth)

    def _transform(self, a: torch.Tensor, b: torch.Tensor, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.n_bins
        theta = self.net(a).reshape(b.shape[0], b.shape[1], 3 * k - 1)  # (B, |b|, 3K−1)
        out, logdet = rational_quadratic_spline(
            b,
            theta[..., :k],
            theta[..., k : 2 * k],
            theta[..., 2 * k :],
            bound=self.bound,
            inverse=inverse,
            min_width=self.min_width,
            min_height=self.min_height,
            min_derivative=self.min_derivative,
        )
        return out, logdet.sum(1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = self._split(x)
        zb, logdet = self._transform(a, b, inverse=False)
        return self._merge(a, zb), logdet

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = self._split(z)
        xb, logdet = self._transform(a, b, inverse=True)
        return self._merge(a, xb), logdet
