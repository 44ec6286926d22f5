"""Embeddings of the conditioning inputs of image backbones: noise level and class label.

A network receives ``t`` (B,), the noise-conditioning input of whatever process it is trained
under: t ∈ [0, 1] (flow, VP, cosine), an integer DDPM step 0 … 999, or EDM's c_noise = ¼ ln σ
(which may be negative). Both feature maps below are defined for any real t:

- **Sinusoidal** (Vaswani et al. 2017, §3.5; used for timesteps by DDPM, Ho et al. 2020):
  ``e(t) = [sin(t'·ω_0), …, sin(t'·ω_{h−1}), cos(t'·ω_0), …, cos(t'·ω_{h−1})]``,
  ω_i = max_period^(−i/h), h = dim/2, t' = time_scale·t.
  The frequencies run from 1 down to 1/max_period, so the features separate inputs that differ
  by ≳ 1/ω_0 = 1 and do not wrap before max_period. ``time_scale`` maps the process's range onto
  that window. Suggested values:

  | network input t                      | time_scale |
  |--------------------------------------|------------|
  | DDPM step index 0 … 999              | 1          |
  | t ∈ [0, 1] (flow, VP, cosine)        | 1000       |
  | EDM c_noise = ¼ ln σ ∈ ≈[−1.2, 1.1]  | 1000 (sinusoidal) or 1 with Fourier features |

- **Gaussian Fourier features** (Tancik et al. 2020; NCSN++, Song et al. 2021):
  ``e(t) = [sin(2π W t'), cos(2π W t')]``, W ~ N(0, scale²) of size dim/2, fixed (a buffer drawn
  from a generator seeded with ``seed``, so a network is reproducible). Suited to inputs of
  order 1 (log σ, t ∈ [0, 1]) with time_scale = 1.

Both classes have the same formulas and the same first arguments as the ones in
:mod:`genspace.nets.mlp`, with the extra ``time_scale``.

Labels: :class:`LabelEmbedding` has ``n_classes + 1`` rows; row ``n_classes`` is the *null class*
of classifier-free guidance (Ho & Salimans 2022), trained by :func:`drop_labels`.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from genspace.core.random import Generator, rand

TIME_EMBEDDINGS = ("sinusoidal", "fourier")


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of t (B,) → (B, dim): [sin(t ω_i)]_i ++ [cos(t ω_i)]_i, ω_i = max_period^(−i/(dim/2)).

    Computed in t's dtype (float32 at least). dim must be even.
    """
    half = dim // 2
    dtype = t.dtype if t.dtype in (torch.float32, torch.float64) else torch.float32
    i = torch.arange(half, dtype=dtype, device=t.device)
    freqs = torch.exp(-math.log(max_period) * i / half)  # (dim/2,)
    arg = t.to(dtype)[:, None] * freqs[None]  # (B, dim/2)
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


def _check_dim(dim: int) -> None:
    if dim < 2 or dim % 2:
        raise ValueError(f"embedding dim must be an even number >= 2, got {dim}")


class SinusoidalEmbedding(nn.Module):
    """Transformer/DDPM sinusoidal features of ``time_scale·t``: t (B,) → (B, dim). See module doc."""

    def __init__(self, dim: int, max_period: float = 10000.0, time_scale: float = 1.0) -> None:
        super().__init__()
        _check_dim(dim)
        if not max_period > 1:
            raise ValueError(f"max_period must be > 1, got {max_period}")
        self.dim = dim
        self.max_period = float(max_period)
        self.time_scale = float(time_scale)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return timestep_embedding(t * self.time_scale, self.dim, self.max_period)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, max_period={self.max_period}, time_scale={self.time_scale}"


class FourierFeatures(nn.Module):
    """Gaussian Fourier features [sin 2πW t', cos 2πW t'], t' = time_scale·t: (B,) → (B, dim).

    W ~ N(0, scale²) (dim/2 values) is drawn once from ``torch.Generator().manual_seed(seed)``
    and kept as a buffer.
    """

    def __init__(self, dim: int, scale: float = 16.0, seed: int = 0, time_scale: float = 1.0) -> None:
        super().__init__()
        _check_dim(dim)
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", torch.randn(dim // 2, generator=g) * scale)
        self.time_scale = float(time_scale)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        dtype = t.dtype if t.dtype in (torch.float32, torch.float64) else torch.float32
        arg = 2 * math.pi * (t.to(dtype) * self.time_scale)[:, None] * self.freqs[None].to(dtype)  # (B, dim/2)
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


class NoiseEmbedding(nn.Module):
    """Noise-level embedding: features(t) → Linear → SiLU → Linear, (B,) → (B, out_dim).

    The mapping network of DDPM/ADM (``time_embed``) and DiT (``TimestepEmbedder``).

    Args:
        out_dim: width of the conditioning vector.
        kind: ``"sinusoidal"`` or ``"fourier"`` (see module doc).
        features: size of the raw features (even).
        time_scale: t is multiplied by this before the features (see module doc's table).
        max_period: longest period of the sinusoidal features.
        fourier_scale: standard deviation of the Fourier frequencies W.
        seed: seed of the fixed Fourier frequencies.
    """

    def __init__(
        self,
        out_dim: int,
        kind: str = "sinusoidal",
        features: int = 128,
        *,
        time_scale: float = 1.0,
        max_period: float = 10000.0,
        fourier_scale: float = 16.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if kind not in TIME_EMBEDDINGS:
            raise ValueError(f"unknown time_embedding {kind!r}; choose one of {list(TIME_EMBEDDINGS)}")
        if kind == "sinusoidal":
            self.features = SinusoidalEmbedding(features, max_period, time_scale)
        else:
            self.features = FourierFeatures(features, fourier_scale, seed, time_scale)
        self.mlp = nn.Sequential(nn.Linear(features, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        w = self.mlp[0].weight
        return self.mlp(self.features(t).to(w.dtype))  # (B, out_dim)


class LabelEmbedding(nn.Module):
    """Class embedding with a null class: labels (B,) in [0, n_classes] → (B, dim).

    Row ``n_classes`` is the null (unconditional) class of classifier-free guidance;
    ``labels=None`` means the null class for the whole batch (needs ``batch`` then).
    """

    def __init__(self, n_classes: int, dim: int) -> None:
        super().__init__()
        if n_classes < 1:
            raise ValueError(f"n_classes must be >= 1, got {n_classes}")
        self.n_classes = n_classes
        self.embed = nn.Embedding(n_classes + 1, dim)

    def null_labels(self, batch: int, device=None) -> torch.Tensor:
        return torch.full((batch,), self.n_classes, dtype=torch.long, device=device)

    def forward(self, labels: Optional[torch.Tensor], batch: Optional[int] = None) -> torch.Tensor:
        if labels is None:
            if batch is None:
                raise ValueError("LabelEmbedding: labels=None needs the batch size")
            labels = self.null_labels(batch, self.embed.weight.device)
        return self.embed(labels.long())


def _check_labels(labels: torch.Tensor, n_classes: int, batch: Optional[int] = None) -> None:
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"class_labels must be an integer tensor, got dtype {labels.dtype}")
    if batch is not None and tuple(labels.shape) != (batch,):
        raise ValueError(f"class_labels must have shape ({batch},), got {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > n_classes):
        raise ValueError(
            f"class_labels must lie in [0, {n_classes}] ({n_classes} = null class), "
            f"got values in [{int(labels.min())}, {int(labels.max())}]"
        )


def drop_labels(labels: torch.Tensor, p: float, n_classes: int, generator: Generator = None) -> torch.Tensor:
    """Label dropout for classifier-free guidance: each label becomes ``n_classes`` (null) w.p. p.

    Ho & Salimans 2022, Algorithm 1 (``c ← ∅ with probability p_uncond``). Uses one uniform draw
    per label from ``generator`` (None, a torch.Generator or a StackedGenerator, see
    :mod:`genspace.core.random`); u < p drops, so p = 0 keeps every label and p = 1 drops all.
    Returns a new tensor; ``labels`` is not modified.

    Args:
        labels: (B,) integer labels in [0, n_classes].
        p: drop probability in [0, 1].
        n_classes: number of classes (the null index).
        generator: source of randomness.
    """
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"drop probability p must lie in [0, 1], got {p}")
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    if labels.ndim != 1:
        raise ValueError(f"labels must have shape (B,), got {tuple(labels.shape)}")
    _check_labels(labels, n_classes)
    u = rand(labels.shape, generator=generator, device=labels.device)  # (B,) uniform [0, 1)
    return torch.where(u < p, torch.full_like(labels, n_classes), labels)


def check_inputs(
    x: torch.Tensor,
    t,
    class_labels: Optional[torch.Tensor],
    *,
    in_channels: int,
    n_classes: Optional[int],
    name: str,
) -> torch.Tensor:
    """Validate an image backbone's ``(x, t, class_labels)``; return t as a (B,) tensor in x's dtype.

    x must be (B, in_channels, H, W); t a scalar or (B,); class_labels None or (B,) integers in
    [0, n_classes] (only if the net is conditional). Raises ValueError naming the bad value.
    """
    if not torch.is_tensor(x) or x.ndim != 4:
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"{name}: x must have shape (B, {in_channels}, H, W), got {shape}")
    if x.shape[1] != in_channels:
        raise ValueError(
            f"{name}: x has {x.shape[1]} channels (shape {tuple(x.shape)}), but the network was built with "
            f"in_channels={in_channels}"
        )
    if x.shape[0] == 0 or x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"{name}: x must be non-empty, got shape {tuple(x.shape)}")
    t = torch.as_tensor(t, device=x.device)
    t = t.to(x.dtype) if x.is_floating_point() else t.float()
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    if tuple(t.shape) != (x.shape[0],):
        raise ValueError(f"{name}: t must be a scalar or of shape ({x.shape[0]},), got {tuple(t.shape)}")
    if class_labels is not None:
        if n_classes is None:
            raise ValueError(f"{name}: class_labels given, but the network was built with n_classes=None")
        if not torch.is_tensor(class_labels):
            raise ValueError(f"{name}: class_labels must be a tensor, got {type(class_labels).__name__}")
        _check_labels(class_labels, n_classes, x.shape[0])
    return t
