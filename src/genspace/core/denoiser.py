"""The continuous denoiser convention shared by every sampler.

A denoiser is any callable ``D(x, sigma, **cond) -> x0_hat`` in σ-space: ``x = x0 + σ·ε`` with
``x`` of shape (B, ...) and ``sigma`` a tensor of shape (B,) (samplers always pass one σ per
example). Networks trained under any process or parameterization are turned into a Denoiser by
the adapters in :mod:`genspace.continuous.parameterizations`.
"""

from __future__ import annotations

from typing import Protocol

import torch


class Denoiser(Protocol):
    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **cond) -> torch.Tensor:
        """Return the estimate of E[x0 | x_σ = x], same shape as ``x``."""
        ...


def as_sigma_batch(sigma, x: torch.Tensor) -> torch.Tensor:
    """Return σ as a tensor of shape (B,) on the device and dtype of ``x``."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.ndim == 0:
        return sigma.expand(x.shape[0])
    if sigma.shape != (x.shape[0],):
        raise ValueError(
            f"sigma must be a scalar or of shape ({x.shape[0]},) for a batch of shape "
            f"{tuple(x.shape)}, got shape {tuple(sigma.shape)}"
        )
    return sigma


class CountingDenoiser:
    """Wrap a denoiser, count its calls (NFE) and check what it returns.

    Raises ValueError if the output's shape differs from the input's or if it holds NaN/Inf, so
    that a diverging network is reported at the call that went wrong.
    """

    def __init__(self, denoiser: Denoiser, check_finite: bool = True) -> None:
        self.denoiser = denoiser
        self.check_finite = check_finite
        self.nfe = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **cond) -> torch.Tensor:
        self.nfe += 1
        out = self.denoiser(x, sigma, **cond)
        if out.shape != x.shape:
            raise ValueError(
                f"denoiser returned shape {tuple(out.shape)} for input shape {tuple(x.shape)}; "
                "a denoiser must return x0_hat with the shape of x"
            )
        if self.check_finite and not torch.isfinite(out).all():
            bad = (~torch.isfinite(out)).flatten(1).any(1).nonzero().flatten().tolist()
            raise ValueError(
                f"denoiser returned non-finite values (NaN/Inf) at call {self.nfe} for examples "
                f"{bad[:8]} at sigma={sigma.flatten()[:1].tolist()}"
            )
        return out


class BoundDenoiser:
    """A denoiser with fixed conditioning: ``BoundDenoiser(D, class_labels=y)(x, σ) = D(x, σ, class_labels=y)``.

    Keeps the wrapped denoiser's ``process`` (if any) so σ ranges can still be checked.
    """

    def __init__(self, denoiser: Denoiser, **cond) -> None:
        self.denoiser = denoiser
        self.cond = cond
        if hasattr(denoiser, "process"):
            self.process = denoiser.process

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **cond) -> torch.Tensor:
        return self.denoiser(x, sigma, **{**self.cond, **cond})
