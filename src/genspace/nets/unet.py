"""A U-Net in the DDPM/ADM line: ``UNet(...)(x, t, class_labels=None)`` (architecture only).

Ho et al. 2020 (DDPM, Appendix B) and Dhariwal & Nichol 2021 (ADM, §3): a convolutional
encoder–decoder with skip connections, conditioned on an embedding c of the noise level and the
class.

- **Embedding.** c = MLP(features(t)) + LabelEmbedding(y) (:mod:`genspace.nets.embeddings`;
  width 4·base_channels as in ADM). Label index ``n_classes`` is the null class;
  ``class_labels=None`` on a conditional network means the null class.
- **Residual block.** h = Conv(SiLU(GN(x))); then *AdaGN* (ADM §3, "adaptive group
  normalization"): h = GN(h)·(1 + s) + b with (s, b) = Linear(SiLU(c)); then SiLU, Dropout, Conv;
  output skip(x) + h, skip = identity or a 1×1 conv when the width changes.
- **Self-attention** (multi-head, :func:`torch.nn.functional.scaled_dot_product_attention`) over
  the H·W positions after GN, at the levels listed in ``attn_resolutions`` and in the middle.
- **Down/up-sampling.** Down: 3×3 conv with stride 2 and padding 1 (output ⌈H/2⌉ × ⌈W/2⌉).
  Up: nearest-neighbour ×2, then a 3×3 conv.
- **Zero initialisation.** The last conv of every residual branch (residual blocks and attention
  projections) and the output conv start at zero, so every block starts as its skip path and the
  untrained network returns exactly 0 (ADM's ``zero_module``).

**Odd spatial sizes.** Any H × W ≥ 1 × 1 works, with no padding of the input: each downsampling
gives ⌈H/2⌉ (stride-2 conv), and each upsampling doubles with nearest neighbours and then *crops*
to the exact size of the skip connection it is concatenated with. For an odd H this is the same
as nearest interpolation to size H (index ⌊i/2⌋ for i < H). So a 7×7 input runs at 7 → 4 → 2 and
back, 5×9 at 5×9 → 3×5 → 2×3; no compute is spent on padding and no border of zeros enters.

``attn_resolutions`` lists *downsampling factors* ds = 2^level (1 = full resolution, 2 = half,
…), ADM's internal ``ds``, so that the network need not know its input size. E.g. with
``channel_mults=(1, 2, 2)`` on 8×8 digits, ``attn_resolutions=(2, 4)`` attends at 4×4 and 2×2.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from genspace.nets.embeddings import LabelEmbedding, NoiseEmbedding, check_inputs


def group_count(channels: int, max_groups: int = 32, min_channels_per_group: int = 4) -> int:
    """Number of GroupNorm groups for ``channels``: the largest divisor of ``channels`` that is
    ≤ max_groups and leaves ≥ min_channels_per_group channels per group (1 if none does).

    64 → 16, 128 → 32, 48 → 12, 16 → 4, 3 → 1, 96 + 64 = 160 → 32.
    """
    limit = max(1, min(max_groups, channels // min_channels_per_group))
    for g in range(limit, 0, -1):
        if channels % g == 0:
            return g
    return 1


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(group_count(channels), channels, eps=1e-6)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """ADM residual block with AdaGN scale–shift conditioning: (B, C_in, H, W), (B, E) → (B, C_out, H, W)."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = _norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = _norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, H, W)
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)  # (B, C_out, 1, 1) each
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over spatial positions with a residual: (B, C, H, W) → (B, C, H, W)."""

    def __init__(self, channels: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor, emb: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, c, height, width = x.shape
        nh = self.num_heads
        qkv = self.qkv(self.norm(x)).reshape(b, 3, nh, c // nh, height * width)  # (B, 3, nh, hs, HW)
        q, k, v = qkv.transpose(-1, -2).unbind(dim=1)  # (B, nh, HW, hs) each
        h = F.scaled_dot_product_attention(q, k, v)  # (B, nh, HW, hs)
        h = h.transpose(-1, -2).reshape(b, c, height, width)
        return x + self.proj(h)


class Downsample(nn.Module):
    """3×3 conv with stride 2: (B, C, H, W) → (B, C, ⌈H/2⌉, ⌈W/2⌉)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, emb: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest ×2, crop to ``size`` (the skip's H, W), then 3×3 conv: (B, C, h, w) → (B, C, *size)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")  # (B, C, 2h, 2w)
        return self.conv(x[:, :, : size[0], : size[1]])


class UNet(nn.Module):
    """ADM-style U-Net ``(x (B, C, H, W), t (B,), class_labels (B,) | None) -> (B, C_out, H, W)``.

    Args:
        in_channels: channels C of x.
        out_channels: channels of the output (None: in_channels).
        base_channels: width of the first level.
        channel_mults: width multiplier of each level (len = number of levels).
        num_res_blocks: residual blocks per level in the encoder (the decoder has one more).
        attn_resolutions: downsampling factors 2^level at which to add self-attention (see module doc).
        dropout: dropout probability inside residual blocks.
        n_classes: number of classes (None: unconditional); index n_classes is the null class.
        num_heads: attention heads (must divide the width of every attention level).
        time_embedding: ``"sinusoidal"`` or ``"fourier"`` (:mod:`genspace.nets.embeddings`).
        time_scale: t is multiplied by this before the time features (e.g. 1000 for t ∈ [0, 1]).
        embed_features: size of the raw time features.
        max_period: longest period of the sinusoidal features.
        fourier_scale: standard deviation of the Fourier frequencies.
        seed: seed of the fixed Fourier frequencies.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: Optional[int] = None,
        base_channels: int = 64,
        channel_mults: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (2, 4),
        dropout: float = 0.0,
        n_classes: Optional[int] = None,
        num_heads: int = 4,
        time_embedding: str = "sinusoidal",
        *,
        time_scale: float = 1.0,
        embed_features: int = 128,
        max_period: float = 10000.0,
        fourier_scale: float = 16.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        channel_mults = tuple(int(m) for m in channel_mults)
        attn_resolutions = tuple(int(r) for r in attn_resolutions)
        levels = len(channel_mults)
        if in_channels < 1 or out_channels < 1 or base_channels < 1:
            raise ValueError(
                f"need in_channels, out_channels, base_channels >= 1; "
                f"got {in_channels}, {out_channels}, {base_channels}"
            )
        if levels == 0 or min(channel_mults) < 1:
            raise ValueError(f"channel_mults must be a non-empty sequence of integers >= 1, got {channel_mults}")
        if num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {num_res_blocks}")
        valid_ds = [2**level for level in range(levels)]
        bad = [r for r in attn_resolutions if r not in valid_ds]
        if bad:
            raise ValueError(
                f"attn_resolutions {bad} are not downsampling factors of this U-Net; valid: {valid_ds}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        if n_classes is not None and n_classes < 1:
            raise ValueError(f"n_classes must be None or >= 1, got {n_classes}")
        attn_widths = {base_channels * m for level, m in enumerate(channel_mults) if 2**level in attn_resolutions}
        attn_widths.add(base_channels * channel_mults[-1])  # the middle block attends
        if num_heads < 1 or any(w % num_heads for w in attn_widths):
            raise ValueError(f"num_heads={num_heads} must divide the attention widths {sorted(attn_widths)}")

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.n_classes = n_classes
        emb_dim = 4 * base_channels
        self.noise_embed = NoiseEmbedding(
            emb_dim, time_embedding, embed_features, time_scale=time_scale, max_period=max_period,
            fourier_scale=fourier_scale, seed=seed,
        )
        self.label_embed = LabelEmbedding(n_classes, emb_dim) if n_classes is not None else None

        ch = base_channels * channel_mults[0]
        self.input_conv = nn.Conv2d(in_channels, ch, 3, padding=1)
        skip_widths = [ch]
        self.down = nn.ModuleList()  # one ModuleList [ResBlock, (Attention)] or [Downsample] per entry
        for level, mult in enumerate(channel_mults):
            out = base_channels * mult
            for _ in range(num_res_blocks):
                layers = [ResBlock(ch, out, emb_dim, dropout)]
                ch = out
                if 2**level in attn_resolutions:
                    layers.append(AttentionBlock(ch, num_heads))
                self.down.append(nn.ModuleList(layers))
                skip_widths.append(ch)
            if level != levels - 1:
                self.down.append(nn.ModuleList([Downsample(ch)]))
                skip_widths.append(ch)
        self.middle = nn.ModuleList(
            [ResBlock(ch, ch, emb_dim, dropout), AttentionBlock(ch, num_heads), ResBlock(ch, ch, emb_dim, dropout)]
        )
        self.up = nn.ModuleList()  # per entry: [ResBlock, (Attention)]; an Upsample ends each level but the first
        self.upsamplers = nn.ModuleDict()
        for level in reversed(range(levels)):
            out = base_channels * channel_mults[level]
            for i in range(num_res_blocks + 1):
                layers = [ResBlock(ch + skip_widths.pop(), out, emb_dim, dropout)]
                ch = out
                if 2**level in attn_resolutions:
                    layers.append(AttentionBlock(ch, num_heads))
                self.up.append(nn.ModuleList(layers))
            if level != 0:
                self.upsamplers[str(len(self.up) - 1)] = Upsample(ch)
        self.out_norm = _norm(ch)
        self.out_conv = _zero(nn.Conv2d(ch, out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t, class_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        t = check_inputs(x, t, class_labels, in_channels=self.in_channels, n_classes=self.n_classes, name="UNet")
        emb = self.noise_embed(t)  # (B, 4·base)
        if self.label_embed is not None:
            emb = emb + self.label_embed(class_labels, batch=x.shape[0])
        h = self.input_conv(x)
        skips = [h]
        for layers in self.down:
            for layer in layers:
                h = layer(h, emb)
            skips.append(h)
        for layer in self.middle:
            h = layer(h, emb)
        for i, layers in enumerate(self.up):
            h = torch.cat([h, skips.pop()], dim=1)  # (B, C + C_skip, H_l, W_l)
            for layer in layers:
                h = layer(h, emb)
            if str(i) in self.upsamplers:
                h = self.upsamplers[str(i)](h, skips[-1].shape[-2:])
        return self.out_conv(F.silu(self.out_norm(h)))  # (B, C_out, H, W)
