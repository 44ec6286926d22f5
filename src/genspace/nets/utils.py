"""Small helpers for image backbones: parameter counts and matched small U-Net / DiT builders.

``small_unet_for(shape, n_classes)`` and ``small_dit_for(shape, n_classes)`` build a U-Net and a
DiT of roughly equal size for small images, so that benchmarks compare architectures and not
capacities. For the 8×8 single-channel digits with 10 classes:

| builder          | configuration                                                   | parameters |
|------------------|-----------------------------------------------------------------|------------|
| small_unet_for   | base 32, mults (1, 2), 1 res block/level, attention at ds 2     | 768,705    |
| small_dit_for    | patch 2 (4×4 tokens), hidden 96, depth 4, 4 heads, mlp ratio 4  | 724,036    |

Images with a shorter side ≥ 16 get a third U-Net level (mults (1, 2, 2), attention at ds 2 and
4); the DiT uses patch 1 only if the shorter side is < 4. Keyword overrides go to the
constructor (e.g. ``time_scale=1000.0`` for t ∈ [0, 1]).
"""

from __future__ import annotations

from typing import Optional, Sequence

from torch import nn

from genspace.nets.dit import DiT
from genspace.nets.unet import UNet


def param_count(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``module`` (buffers excluded; only those with requires_grad if asked)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _shape3(shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be (C, H, W) with positive entries, got {shape}")
    return shape


def small_unet_for(shape: Sequence[int], n_classes: Optional[int] = None, **overrides) -> UNet:
    """A ≈0.77M-parameter U-Net for images of ``shape`` = (C, H, W) (see module doc)."""
    c, h, w = _shape3(shape)
    deep = min(h, w) >= 16
    config = dict(
        base_channels=32,
        channel_mults=(1, 2, 2) if deep else (1, 2),
        num_res_blocks=1,
        attn_resolutions=(2, 4) if deep else (2,),
        num_heads=4,
        n_classes=n_classes,
    )
    config.update(overrides)
    return UNet(c, **config)


def small_dit_for(shape: Sequence[int], n_classes: Optional[int] = None, **overrides) -> DiT:
    """A ≈0.72M-parameter DiT for images of ``shape`` = (C, H, W) (see module doc)."""
    c, h, w = _shape3(shape)
    config = dict(
        patch_size=1 if min(h, w) < 4 else 2,
        hidden=96,
        depth=4,
        num_heads=4,
        mlp_ratio=4.0,
        n_classes=n_classes,
    )
    config.update(overrides)
    return DiT(c, (h, w), **config)
