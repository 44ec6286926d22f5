"""Exponential moving average (EMA) of a model's weights.

After every training step the averaged weights move towards the live ones,

    θ_ema ← β_t · θ_ema + (1 − β_t) · θ,

so that after T updates θ_ema = (Π_t β_t) θ_0 + Σ_t (1 − β_t) (Π_{s>t} β_s) θ_t, a geometric
average of the trajectory. Two ways of choosing β_t are offered, selected by ``EMAConfig.kind``:

- ``"decay"``: a constant β (Polyak averaging), with the optional warm-up
  β_t = min(β, (1 + t) / (10 + t)) (t = updates done so far) so that the average forgets the
  random initialisation quickly.
- ``"halflife"``: the form of Karras et al. 2022 (EDM), Appendix F.1 / Table 7: the half-life of
  the average is fixed in *samples* rather than steps, so it does not change with the batch size:
  β = 0.5^(B / h) with B the global batch size and h = ``halflife_kimg``·1000 samples; with the
  ramp-up ratio r the half-life is at most r times the samples seen so far,
  h_t = min(h, (t + 1)·B·r), which plays the role of the warm-up.

Buffers (e.g. BatchNorm statistics) are copied, not averaged.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal, Optional

import torch
from torch import nn

EMA_KINDS = ("off", "decay", "halflife")


@dataclass
class EMAConfig:
    kind: Literal["off", "decay", "halflife"] = "halflife"  # how β_t is chosen (see module doc)
    decay: float = 0.999  # kind="decay": the constant β
    warmup: bool = True  # kind="decay": β_t = min(β, (1+t)/(10+t))
    halflife_kimg: float = 10.0  # kind="halflife": half-life in thousands of samples (EDM CIFAR: 500)
    rampup: Optional[float] = 0.05  # kind="halflife": half-life ≤ rampup × samples seen; None: off

    def __post_init__(self) -> None:
        if self.kind not in EMA_KINDS:
            raise ValueError(f"EMAConfig.kind must be one of {EMA_KINDS}, got {self.kind!r}")
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"EMAConfig.decay must be in [0, 1), got {self.decay}")
        if not self.halflife_kimg > 0:
            raise ValueError(f"EMAConfig.halflife_kimg must be > 0, got {self.halflife_kimg}")
        if self.rampup is not None and not self.rampup > 0:
            raise ValueError(f"EMAConfig.rampup must be > 0 or None, got {self.rampup}")


def decay_beta(t: int, decay: float, warmup: bool = True) -> float:
    """β for update number ``t`` (0-based) of a constant-decay EMA, with the optional warm-up."""
    return min(decay, (1.0 + t) / (10.0 + t)) if warmup else decay


def halflife_beta(t: int, batch_size: int, halflife_kimg: float, rampup: Optional[float] = None) -> float:
    """β for update number ``t`` (0-based) of EDM's half-life EMA (Karras et al. 2022, App. F.1).

    After this update (t + 1)·B samples have been seen; the half-life in samples is
    h = halflife_kimg·1000, capped at rampup·(t + 1)·B if ``rampup`` is set, and β = 0.5^(B/h).
    """
    halflife = halflife_kimg * 1000.0
    if rampup is not None:
        halflife = min(halflife, (t + 1) * batch_size * rampup)
    return 0.5 ** (batch_size / max(halflife, 1e-8))


class EMA:
    """An averaged deep copy of ``model``, updated in place by :meth:`update`.

    Args:
        model: the live model; the EMA keeps references to its parameters and buffers.
        config: how β_t is chosen (``kind`` must not be ``"off"``).
        batch_size: samples per update (the global batch), used by the half-life form.

    ``module`` is the averaged model (eval mode, no gradients); ``updates`` counts updates done.
    """

    def __init__(self, model: nn.Module, config: EMAConfig, batch_size: int) -> None:
        if config.kind == "off":
            raise ValueError("EMA built with EMAConfig.kind='off'; use no EMA instead")
        self.config = config
        self.batch_size = int(batch_size)
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0
        self._params = list(zip(self.module.parameters(), model.parameters()))
        self._buffers = list(zip(self.module.buffers(), model.buffers()))

    def beta(self, t: Optional[int] = None) -> float:
        """β of update number ``t`` (default: the next update)."""
        t = self.updates if t is None else t
        c = self.config
        if c.kind == "decay":
            return decay_beta(t, c.decay, c.warmup)
        return halflife_beta(t, self.batch_size, c.halflife_kimg, c.rampup)

    @torch.no_grad()
    def update(self) -> None:
        """θ_ema ← β θ_ema + (1 − β) θ for every parameter; buffers copied."""
        weight = 1.0 - self.beta()
        for ema_p, p in self._params:
            ema_p.lerp_(p, weight)
        for ema_b, b in self._buffers:
            ema_b.copy_(b)
        self.updates += 1
