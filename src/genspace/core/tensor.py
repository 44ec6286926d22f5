"""Small tensor helpers."""

from __future__ import annotations

import torch


def append_dims(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton dimensions to ``x`` until it has ``ndim`` dimensions.

    A per-example tensor of shape (B,) becomes (B, 1, ..., 1) so that it broadcasts against a
    batch of shape (B, ...).
    """
    missing = ndim - x.ndim
    if missing < 0:
        raise ValueError(f"append_dims: input has {x.ndim} dims, more than the target {ndim}")
    return x.reshape(*x.shape, *([1] * missing))
