"""Diffusion Transformer: ``DiT(...)(x, t, class_labels=None)`` (Peebles & Xie 2023; architecture only).

- **Patchify.** A p×p conv with stride p maps (B, C, H, W) to a grid of h × w tokens of width
  ``hidden`` (DiT §3.2). If H or W is not a multiple of p, x is zero-padded at the bottom/right to
  h·p × w·p with h = ⌈H/p⌉, w = ⌈W/p⌉, and the output is cropped back to H × W.
- **Positions.** A fixed 2-D sin-cos embedding of the token grid (MAE/DiT), see
  :func:`sincos_2d_pos_embed`; computed from the grid of ``input_size`` and held as a
  non-persistent buffer.
- **Conditioning.** c = MLP(features(t)) + LabelEmbedding(y) (:mod:`genspace.nets.embeddings`,
  index ``n_classes`` = null class; ``class_labels=None`` on a conditional net means null).
- **adaLN-Zero blocks** (DiT §3.2, Fig. 3): (shift₁, scale₁, gate₁, shift₂, scale₂, gate₂) =
  Linear(SiLU(c)); x ← x + gate₁·Attn(LN(x)·(1 + scale₁) + shift₁);
  x ← x + gate₂·MLP(LN(x)·(1 + scale₂) + shift₂). The modulation Linear is zero-initialised, so
  every block starts as the identity.
- **QK normalisation** (Esser et al. 2024, SD3 §5.3.2; Dehghani et al. 2023): RMSNorm with a
  learned gain on each head's queries and keys before the dot product (``qk_norm=True``).
  Attention uses :func:`torch.nn.functional.scaled_dot_product_attention`.
- **Final layer.** LN modulated by (shift, scale) = Linear(SiLU(c)), then Linear to p²·C_out;
  both zero-initialised, so the untrained network returns exactly 0. Then unpatchify and crop.
- ``learn_sigma=True`` doubles the output channels (ADM/DiT's learned variance in the second
  half); the network only outputs it, interpreting it is the caller's business.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import nn
from torch.nn import functional as F

from genspace.nets.embeddings import LabelEmbedding, NoiseEmbedding, check_inputs


def sincos_1d(pos: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[sin(pos ω_k)]_k ++ [cos(pos ω_k)]_k with ω_k = max_period^(−k/(dim/2)): (N,) → (N, dim)."""
    half = dim // 2
    omega = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float64) / half)  # (dim/2,)
    arg = pos.to(torch.float64)[:, None] * omega[None]  # (N, dim/2)
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


def sincos_2d_pos_embed(dim: int, grid_h: int, grid_w: int, max_period: float = 10000.0) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding of an h × w token grid → (h·w, dim), float32.

    Token n = i·w + j (row i, column j, the order of ``flatten`` on a (h, w) grid) gets

        E[n] = [sin(i ω_k)]_k ++ [cos(i ω_k)]_k ++ [sin(j ω_k)]_k ++ [cos(j ω_k)]_k,
        ω_k = max_period^(−k/(dim/4)),  k = 0 … dim/4 − 1,

    i.e. the 1-D transformer embedding (Vaswani et al. 2017) of the row in the first half and of
    the column in the second (as in MAE / DiT). dim must be a multiple of 4.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs dim divisible by 4, got {dim}")
    rows = torch.arange(grid_h).repeat_interleave(grid_w)  # (h·w,) i
    cols = torch.arange(grid_w).repeat(grid_h)  # (h·w,) j
    emb = torch.cat([sincos_1d(rows, dim // 2, max_period), sincos_1d(cols, dim // 2, max_period)], dim=1)
    return emb.float()


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]  # x (B, N, D), shift/scale (B, D)


class Attention(nn.Module):
    """Multi-head self-attention with optional RMS QK-norm: (B, N, D) → (B, N, D)."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.RMSNorm(head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads)  # (B, N, 3, nh, hs)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, nh, N, hs) each
        q, k = self.q_norm(q), self.k_norm(k)
        h = F.scaled_dot_product_attention(q, k, v)  # (B, nh, N, hs)
        return self.proj(h.transpose(1, 2).reshape(b, n, d))


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero conditioning: (B, N, D), (B, D) → (B, N, D)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qk_norm: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads, qk_norm)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        mlp_hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_hidden), nn.GELU(approximate="tanh"), nn.Linear(mlp_hidden, dim))
        self.adaLN = nn.Linear(dim, 6 * dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN(F.silu(c)).chunk(6, dim=1)  # (B, D) each
        x = x + gate1[:, None] * self.attn(_modulate(self.norm1(x), shift1, scale1))
        x = x + gate2[:, None] * self.mlp(_modulate(self.norm2(x), shift2, scale2))
        return x


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm, then Linear to p²·C_out per token: (B, N, D) → (B, N, p²·C_out)."""

    def __init__(self, dim: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.adaLN = nn.Linear(dim, 2 * dim)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN(F.silu(c)).chunk(2, dim=1)
        return self.linear(_modulate(self.norm(x), shift, scale))


def _size2(size: Union[int, Sequence[int]]) -> tuple[int, int]:
    if isinstance(size, int):
        size = (size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"input_size must be an int or (H, W) with positive entries, got {size}")
    return size


class DiT(nn.Module):
    """Diffusion Transformer ``(x (B, C, H, W), t (B,), class_labels (B,) | None) -> (B, C_out, H, W)``.

    C_out = C, or 2C with ``learn_sigma``. Defaults are DiT-S (hidden 384, depth 12, 6 heads).

    Args:
        in_channels: channels C of x.
        input_size: H (square) or (H, W); x must have this size.
        patch_size: side p of the square patches.
        hidden: token width D (divisible by 4 and by num_heads).
        depth: number of transformer blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / D.
        n_classes: number of classes (None: unconditional); index n_classes is the null class.
        qk_norm: RMS-normalise queries and keys per head (SD3).
        learn_sigma: output 2C channels (the second half a variance output, as in DiT/ADM).
        time_embedding: ``"sinusoidal"`` or ``"fourier"`` (:mod:`genspace.nets.embeddings`).
        time_scale: t is multiplied by this before the time features (e.g. 1000 for t ∈ [0, 1]).
        embed_features: size of the raw time features (DiT: 256).
        max_period: longest period of the sinusoidal features.
        fourier_scale: standard deviation of the Fourier frequencies.
        seed: seed of the fixed Fourier frequencies.
    """

    def __init__(
        self,
        in_channels: int,
        input_size: Union[int, Sequence[int]],
        patch_size: int = 2,
        hidden: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        n_classes: Optional[int] = None,
        qk_norm: bool = True,
        learn_sigma: bool = False,
        *,
        time_embedding: str = "sinusoidal",
        time_scale: float = 1.0,
        embed_features: int = 256,
        max_period: float = 10000.0,
        fourier_scale: float = 16.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.input_size = _size2(input_size)
        if in_channels < 1 or patch_size < 1 or depth < 0:
            raise ValueError(
                f"need in_channels >= 1, patch_size >= 1, depth >= 0; got {in_channels}, {patch_size}, {depth}"
            )
        if hidden < 4 or hidden % 4:
            raise ValueError(f"hidden must be a positive multiple of 4 (2-D sin-cos positions), got {hidden}")
        if num_heads < 1 or hidden % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide hidden={hidden}")
        if not mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be > 0, got {mlp_ratio}")
        if n_classes is not None and n_classes < 1:
            raise ValueError(f"n_classes must be None or >= 1, got {n_classes}")
        self.in_channels = in_channels
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.patch_size = patch_size
        self.n_classes = n_classes
        # token grid (h, w) = (⌈H/p⌉, ⌈W/p⌉)
        self.grid = (-(-self.input_size[0] // patch_size), -(-self.input_size[1] // patch_size))

        self.patch_embed = nn.Conv2d(in_channels, hidden, patch_size, stride=patch_size)
        self.register_buffer("pos_embed", sincos_2d_pos_embed(hidden, *self.grid), persistent=False)  # (h·w, D)
        self.noise_embed = NoiseEmbedding(
            hidden, time_embedding, embed_features, time_scale=time_scale, max_period=max_period,
            fourier_scale=fourier_scale, seed=seed,
        )
        self.label_embed = LabelEmbedding(n_classes, hidden) if n_classes is not None else None
        self.blocks = nn.ModuleList(DiTBlock(hidden, num_heads, mlp_ratio, qk_norm) for _ in range(depth))
        self.final = FinalLayer(hidden, patch_size, self.out_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        """DiT's initialisation: Xavier-uniform linears, N(0, 0.02) embeddings, adaLN and output at zero."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        for lin in (self.noise_embed.mlp[0], self.noise_embed.mlp[2]):
            nn.init.normal_(lin.weight, std=0.02)
        if self.label_embed is not None:
            nn.init.normal_(self.label_embed.embed.weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN.weight)
            nn.init.zeros_(block.adaLN.bias)
        for lin in (self.final.adaLN, self.final.linear):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, h·w, p²·C_out) → (B, C_out, h·p, w·p); token n = i·w + j holds the patch at (i, j)."""
        b = tokens.shape[0]
        (h, w), p, c = self.grid, self.patch_size, self.out_channels
        x = tokens.reshape(b, h, w, p, p, c)  # (B, h, w, p, p, C)
        return x.permute(0, 5, 1, 3, 2, 4).reshape(b, c, h * p, w * p)  # (B, C, h·p, w·p)

    def forward(self, x: torch.Tensor, t, class_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        t = check_inputs(x, t, class_labels, in_channels=self.in_channels, n_classes=self.n_classes, name="DiT")
        height, width = x.shape[-2:]
        if (height, width) != self.input_size:
            raise ValueError(
                f"DiT: x has spatial size {(height, width)}, but the network was built with "
                f"input_size={self.input_size}"
            )
        (h, w), p = self.grid, self.patch_size
        x = F.pad(x, (0, w * p - width, 0, h * p - height))  # zero-pad bottom/right to (h·p, w·p)
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, h·w, D)
        tokens = tokens + self.pos_embed.to(tokens.dtype)[None]
        c = self.noise_embed(t)  # (B, D)
        if self.label_embed is not None:
            c = c + self.label_embed(class_labels, batch=x.shape[0])
        for block in self.blocks:
            tokens = block(tokens, c)
        out = self.unpatchify(self.final(tokens, c))  # (B, C_out, h·p, w·p)
        return out[:, :, :height, :width]
