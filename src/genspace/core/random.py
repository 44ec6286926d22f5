"""Explicit randomness: a torch.Generator, or one generator per sample.

Every random draw in genspace goes through :func:`randn` / :func:`randn_like` /
:func:`rand_like` with an explicit ``generator``. Passing a :class:`StackedGenerator` (one
seed per sample, the idea of EDM's ``generate.py``) makes each sample independent of the batch
it is drawn in: sample ``i`` with seed ``s`` is the same whether it is drawn alone or among
thousands.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch


class StackedGenerator:
    """One ``torch.Generator`` per sample along the batch dimension.

    Args:
        seeds: one integer seed per sample (length B).
        device: the device the generators live on (CPU by default; draws are moved to the
            device of the tensor they are for, so results do not depend on it).
    """

    def __init__(self, seeds: Sequence[int], device: Union[str, torch.device] = "cpu") -> None:
        seeds = [int(s) for s in seeds]
        if len(seeds) == 0:
            raise ValueError("StackedGenerator needs at least one seed, got an empty list")
        self.seeds = seeds
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]

    def __len__(self) -> int:
        return len(self.generators)

    def _check(self, shape: Sequence[int]) -> None:
        if len(shape) == 0 or shape[0] != len(self.generators):
            raise ValueError(
                f"StackedGenerator holds {len(self.generators)} per-sample generators, "
                f"but a draw of shape {tuple(shape)} was asked for (batch dimension must match)"
            )

    def randn(self, shape, *, dtype=None, device=None) -> torch.Tensor:
        self._check(shape)
        draws = [
            torch.randn(tuple(shape[1:]), generator=g, device=g.device, dtype=dtype)
            for g in self.generators
        ]
        return torch.stack(draws).to(device)

    def rand(self, shape, *, dtype=None, device=None) -> torch.Tensor:
        self._check(shape)
        draws = [
            torch.rand(tuple(shape[1:]), generator=g, device=g.device, dtype=dtype)
            for g in self.generators
        ]
        return torch.stack(draws).to(device)

    def state(self) -> list[torch.Tensor]:
        return [g.get_state() for g in self.generators]


Generator = Union[None, torch.Generator, StackedGenerator]


def randn(shape, *, generator: Generator = None, dtype=None, device=None) -> torch.Tensor:
    """Standard normal draws of ``shape`` from ``generator`` (None: torch's global one)."""
    if isinstance(generator, StackedGenerator):
        return generator.randn(shape, dtype=dtype, device=device)
    if generator is None:
        return torch.randn(tuple(shape), dtype=dtype, device=device)
    return torch.randn(tuple(shape), generator=generator, dtype=dtype, device=generator.device).to(device)


def rand(shape, *, generator: Generator = None, dtype=None, device=None) -> torch.Tensor:
    """Uniform [0, 1) draws of ``shape`` from ``generator``."""
    if isinstance(generator, StackedGenerator):
        return generator.rand(shape, dtype=dtype, device=device)
    if generator is None:
        return torch.rand(tuple(shape), dtype=dtype, device=device)
    return torch.rand(tuple(shape), generator=generator, dtype=dtype, device=generator.device).to(device)


def randn_like(x: torch.Tensor, generator: Generator = None) -> torch.Tensor:
    """Standard normal noise with the shape, dtype and device of ``x``."""
    return randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def rand_like(x: torch.Tensor, generator: Generator = None) -> torch.Tensor:
    """Uniform [0, 1) noise with the shape, dtype and device of ``x``."""
    return rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
