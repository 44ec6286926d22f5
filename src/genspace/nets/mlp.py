"""A time-conditioned residual MLP for low-dimensional data (toy 2-D sets, flattened small vectors).

``TimeMLP(dim)(x, t, class_labels=None)``: x (B, dim), t (B,) the network's noise-conditioning
input (whatever an adapter passes: c_noise = ¼ log σ for EDM, t ∈ [0, 1], integer steps, ...),
class_labels (B,) long. Returns (B, dim). It holds no diffusion logic.

Time features:
- ``"fourier"``: Gaussian Fourier features [sin 2πWt, cos 2πWt], W ~ N(0, scale²) fixed
  (Tancik et al. 2020; Song et al. 2021, NCSN++ with scale 16 on log σ). W is drawn from a
  generator seeded with ``seed`` inside ``__init__`` (reproducible; kept as a buffer).
  Good for inputs of order 1 (log σ, t ∈ [0, 1]).
- ``"sinusoidal"``: the transformer embedding [sin tω_i, cos tω_i], ω_i = max_period^{−i/half}
  (Vaswani et al. 2017, §3.5; DDPM). Good for integer timesteps 0 … 999.

Both go through a 2-layer SiLU MLP to a ``hidden``-wide embedding c (as DDPM/EDM's mapping
layers); a class embedding (``n_classes + 1`` rows, the last one the null class of
classifier-free guidance, Ho & Salimans 2022) is added to c. Each residual block is
LayerNorm → conditioning → SiLU → Linear → SiLU → Linear, added back; conditioning is either
adding a projection of c (``"add"``) or an adaptive-LayerNorm scale and shift
(``"scale-shift"``, as DiT's adaLN / the BigGAN-style FiLM of improved DDPM).

``zero_init`` (default True) zero-initializes the output layer, so the untrained network
returns 0 (with EDM preconditioning: D = c_skip·x; with ε-prediction: ε̂ = 0) — the choice of
EDM and DiT that keeps the first steps tame. Set False for a standard initialization.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

_EMBEDDINGS = ("fourier", "sinusoidal")
_CONDITIONING = ("scale-shift", "add")


class FourierFeatures(nn.Module):
    """[sin(2π W t), cos(2π W t)] with fixed W ~ N(0, scale²) of size embed_dim/2 (t: (B,) → (B, embed_dim))."""

    def __init__(self, embed_dim: int, scale: float = 16.0, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", torch.randn(embed_dim // 2, generator=g) * scale)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        arg = 2 * math.pi * t[:, None] * self.freqs[None].to(t.dtype)  # (B, embed_dim/2)
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


class SinusoidalEmbedding(nn.Module):
    """[sin(t ω_i), cos(t ω_i)], ω_i = max_period^{−i/half}, i = 0 … half−1 (Vaswani et al. 2017)."""

    def __init__(self, embed_dim: int, max_period: float = 10000.0) -> None:
        super().__init__()
        half = embed_dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        arg = t[:, None] * self.freqs[None].to(t.dtype)  # (B, embed_dim/2)
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


class ResidualBlock(nn.Module):
    """h + Linear(SiLU(Linear(SiLU(cond(LayerNorm(h), c)))))."""

    def __init__(self, hidden: int, conditioning: str) -> None:
        super().__init__()
        self.conditioning = conditioning
        self.norm = nn.LayerNorm(hidden, elementwise_affine=conditioning == "add")
        self.cond = nn.Linear(hidden, 2 * hidden if conditioning == "scale-shift" else hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.act = nn.SiLU()

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        y = self.norm(h)
        if self.conditioning == "scale-shift":
            scale, shift = self.cond(self.act(c)).chunk(2, dim=1)  # (B, hidden) each
            y = y * (1 + scale) + shift
        else:
            y = y + self.cond(self.act(c))
        y = self.fc2(self.act(self.fc1(self.act(y))))
        return h + y


class TimeMLP(nn.Module):
    """Residual MLP ``(x (B, dim), t (B,), class_labels (B,) | None) -> (B, dim)``.

    Args:
        dim: data dimension D.
        hidden: width of the residual stream.
        depth: number of residual blocks.
        time_embedding: ``"fourier"`` or ``"sinusoidal"`` (see module doc).
        embed_dim: size of the raw time features (even).
        fourier_scale: standard deviation of the Fourier frequencies W.
        max_period: longest period of the sinusoidal embedding.
        n_classes: number of classes for conditioning (None: unconditional). Index n_classes is
            the null class; ``class_labels=None`` on a conditional net means the null class.
        conditioning: ``"scale-shift"`` (adaptive LayerNorm) or ``"add"``.
        zero_init: zero-initialize the output layer (see module doc).
        seed: seed of the fixed Fourier frequencies.
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 256,
        depth: int = 4,
        time_embedding: str = "fourier",
        embed_dim: int = 128,
        *,
        fourier_scale: float = 16.0,
        max_period: float = 10000.0,
        n_classes: Optional[int] = None,
        conditioning: str = "scale-shift",
        zero_init: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if dim < 1 or hidden < 1 or depth < 0:
            raise ValueError(f"need dim >= 1, hidden >= 1, depth >= 0; got dim={dim}, hidden={hidden}, depth={depth}")
        if embed_dim < 2 or embed_dim % 2:
            raise ValueError(f"embed_dim must be an even number >= 2, got {embed_dim}")
        if time_embedding not in _EMBEDDINGS:
            raise ValueError(f"unknown time_embedding {time_embedding!r}; choose one of {list(_EMBEDDINGS)}")
        if conditioning not in _CONDITIONING:
            raise ValueError(f"unknown conditioning {conditioning!r}; choose one of {list(_CONDITIONING)}")
        if n_classes is not None and n_classes < 1:
            raise ValueError(f"n_classes must be None or >= 1, got {n_classes}")
        self.dim = dim
        self.n_classes = n_classes
        if time_embedding == "fourier":
            self.time_features = FourierFeatures(embed_dim, fourier_scale, seed)
        else:
            self.time_features = SinusoidalEmbedding(embed_dim, max_period)
        self.time_mlp = nn.Sequential(nn.Linear(embed_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.class_embed = nn.Embedding(n_classes + 1, hidden) if n_classes is not None else None
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(ResidualBlock(hidden, conditioning) for _ in range(depth))
        self.out_norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, dim)
        self.act = nn.SiLU()
        if zero_init:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def _check(self, x: torch.Tensor, t: torch.Tensor, class_labels: Optional[torch.Tensor]) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}), got {tuple(x.shape)}")
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must be a scalar or of shape ({x.shape[0]},), got {tuple(t.shape)}")
        if class_labels is not None:
            if self.n_classes is None:
                raise ValueError("class_labels given, but this TimeMLP was built with n_classes=None")
            if class_labels.shape != (x.shape[0],):
                raise ValueError(f"class_labels must have shape ({x.shape[0]},), got {tuple(class_labels.shape)}")
            if class_labels.numel() and (class_labels.min() < 0 or class_labels.max() > self.n_classes):
                raise ValueError(
                    f"class_labels must lie in [0, {self.n_classes}] ({self.n_classes} = null class), "
                    f"got [{int(class_labels.min())}, {int(class_labels.max())}]"
                )
        return t

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        t = self._check(x, t, class_labels)
        c = self.time_mlp(self.time_features(t))  # (B, hidden)
        if self.class_embed is not None:
            if class_labels is None:
                class_labels = torch.full((x.shape[0],), self.n_classes, dtype=torch.long, device=x.device)
            c = c + self.class_embed(class_labels.long())
        h = self.inp(x)  # (B, hidden)
        for block in self.blocks:
            h = block(h, c)
        return self.out(self.act(self.out_norm(h)))  # (B, dim)
