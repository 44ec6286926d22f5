"""Categorical draws for token samplers: float64 Gumbel-max with temperature.

argmax_v (ℓ_v / τ + g_v), g_v = −log(−log u_v), u_v ~ U(0, 1), draws v with probability
softmax(ℓ / τ)_v (Gumbel 1954; Maddison et al. 2014). The logits and the noise are taken in
float64: in float32/bf16 the Gumbel tail is truncated, which lowers the effective temperature and
the diversity of masked-diffusion samples (Zheng et al. 2024, "Masked diffusion models are secretly
time-agnostic masked models and exploit inaccurate categorical sampling", §4).

Randomness comes from an explicit generator; a :class:`~genspace.core.StackedGenerator` (one seed
per sequence) makes each sequence independent of the batch it is drawn in.
"""

from __future__ import annotations

import torch

from genspace.core.random import Generator, rand

__all__ = ["gumbel_noise", "gumbel_from_uniform", "sample_categorical"]

_TINY = 1e-300  # keeps −log(−log u) finite for u = 0 in float64


def gumbel_from_uniform(u: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise −log(−log u) from uniforms u ∈ [0, 1) (float64, same shape)."""
    e = -torch.log(u.to(torch.float64).clamp_min(_TINY))  # standard exponential
    return -torch.log(e.clamp_min(_TINY))


def gumbel_noise(shape, *, generator: Generator = None, device=None) -> torch.Tensor:
    """Standard Gumbel noise of ``shape`` (float64)."""
    return gumbel_from_uniform(rand(shape, generator=generator, dtype=torch.float64, device=device))


def sample_categorical(
    logits: torch.Tensor, *, generator: Generator = None, temperature: float = 1.0, uniform: torch.Tensor | None = None
) -> torch.Tensor:
    """Token ids drawn from softmax(logits / temperature) along the last axis.

    Args:
        logits: (..., V) unnormalized log-probabilities (−inf for impossible tokens); the leading
            axis is the batch (one generator per row with a StackedGenerator).
        temperature: τ > 0; τ = 0 gives the argmax (greedy).
        uniform: optional (..., V) uniforms in [0, 1) to use instead of drawing from
            ``generator`` (a sampler that needs several draws per step takes them in one call
            of a per-sequence generator and slices them).

    Returns:
        (...) int64 ids.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    logits = logits.to(torch.float64)
    if temperature == 0:
        return logits.argmax(-1)
    if uniform is None:
        g = gumbel_noise(logits.shape, generator=generator, device=logits.device)
    else:
        if generator is not None:
            raise ValueError("give sample_categorical a generator or uniforms, not both")
        if uniform.shape != logits.shape:
            raise ValueError(f"uniform must have the logits' shape {tuple(logits.shape)}, got {tuple(uniform.shape)}")
        g = gumbel_from_uniform(uniform)
    return (logits / temperature + g).argmax(-1)
