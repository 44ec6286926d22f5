"""Classifier-free guidance as a Denoiser wrapper (Ho & Salimans 2022).

    D_w(x, σ, c) = D(x, σ, ∅) + w·(D(x, σ, c) − D(x, σ, ∅))

Convention: w = 1 is the plain conditional denoiser, w = 0 the unconditional one, w > 1
extrapolates away from the unconditional prediction (the convention of EDM2 / Stable Diffusion's
"guidance scale"). Ho & Salimans 2022 (Eq. 6) write ε̃ = (1 + w')·ε(c) − w'·ε(∅); their w' is
our w − 1. Mixing x0 predictions or ε predictions is the same thing: at fixed x and σ, the map
ε ↦ x0 = x − σ·ε is affine, so affine combinations with weights summing to one commute with it.
"""

from __future__ import annotations

import torch

from genspace.core.denoiser import Denoiser


def _null_like(labels: torch.Tensor, null_label) -> torch.Tensor:
    if torch.is_tensor(null_label):
        return null_label.to(device=labels.device, dtype=labels.dtype).expand_as(labels)
    return torch.full_like(labels, null_label)


class ClassifierFreeGuidance:
    """Guided denoiser D_w = D(x, σ, ∅) + w·(D(x, σ, c) − D(x, σ, ∅)).

    Args:
        denoiser: a conditional Denoiser ``D(x, sigma, **cond)`` trained with label dropout.
        scale: the guidance weight w (1: conditional, 0: unconditional).
        null_label: the label meaning "no condition" (an int, e.g. ``n_classes``, or a tensor
            broadcastable to one example's label, e.g. a zero embedding).
        label_key: the keyword under which the denoiser takes its labels.

    ``__call__(x, sigma, **cond)``: x (B, ...), sigma (B,) or scalar, ``cond[label_key]`` (B, ...)
    labels. For w ∉ {0, 1} one batched call evaluates the conditional and unconditional halves
    together (a batch of 2B); w = 1 and w = 0 need only one half. Other conditioning tensors
    whose first dimension is B are repeated for both halves; anything else is passed unchanged.
    Without a label in ``cond`` the wrapped denoiser is called as is.
    """

    def __init__(self, denoiser: Denoiser, scale: float, null_label, label_key: str = "class_labels") -> None:
        scale = float(scale)
        if not torch.isfinite(torch.tensor(scale)):
            raise ValueError(f"guidance scale must be finite, got {scale}")
        self.denoiser = denoiser
        self.scale = scale
        self.null_label = null_label
        self.label_key = label_key
        if hasattr(denoiser, "process"):
            self.process = denoiser.process

    def __call__(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        labels = cond.get(self.label_key)
        if labels is None:
            return self.denoiser(x, sigma, **cond)
        if self.scale == 1.0:
            return self.denoiser(x, sigma, **cond)
        null = _null_like(labels, self.null_label)
        if self.scale == 0.0:
            return self.denoiser(x, sigma, **{**cond, self.label_key: null})
        b = x.shape[0]
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        sigma2 = torch.cat([sigma, sigma]) if sigma.ndim > 0 else sigma
        cond2 = {}
        for key, value in cond.items():
            if key == self.label_key:
                cond2[key] = torch.cat([labels, null])
            elif torch.is_tensor(value) and value.ndim > 0 and value.shape[0] == b:
                cond2[key] = torch.cat([value, value])
            else:
                cond2[key] = value
        out = self.denoiser(torch.cat([x, x]), sigma2, **cond2)
        d_cond, d_uncond = out[:b], out[b:]
        return d_uncond + self.scale * (d_cond - d_uncond)

    def __repr__(self) -> str:
        return f"ClassifierFreeGuidance(scale={self.scale}, null_label={self.null_label!r}, label_key={self.label_key!r})"


def cfg_denoiser(denoiser: Denoiser, scale: float, null_label, label_key: str = "class_labels") -> ClassifierFreeGuidance:
    """Functional alias of :class:`ClassifierFreeGuidance`."""
    return ClassifierFreeGuidance(denoiser, scale, null_label, label_key=label_key)
