"""Forward token processes q(x_t | x_0): absorbing (masked) and uniform noise.

Both keep each token independently with probability α(t) (:mod:`genspace.discrete.schedules`):

- **absorbing** (D3PM absorbing state, Austin et al. 2021; MDLM, Sahoo et al. 2024 eq. 2):
  q(x_t | x_0) = Cat(α·e_{x0} + (1 − α)·e_m), m the mask id;
- **uniform** (D3PM uniform; SEDD-uniform, Lou et al. 2024): q(x_t | x_0) = Cat(α·e_{x0} +
  (1 − α)/K · 1), K the number of data tokens (the mask id, if the vocabulary has one, is never
  drawn).

Token ids 0..K−1 are data tokens. The mask id is explicit (a tokenizer's ``mask_id``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from genspace.core.random import Generator, rand

__all__ = ["AbsorbingProcess", "UniformProcess", "get_token_process"]


def _keep_mask(x0: torch.Tensor, alpha: torch.Tensor, generator: Generator) -> torch.Tensor:
    """(B, L) bool: True where the token is kept; ``alpha`` broadcasts to (B, L) (e.g. (B, 1))."""
    u = rand(x0.shape, generator=generator, dtype=torch.float64, device=x0.device)
    return u < alpha.to(torch.float64)


@dataclass(frozen=True)
class AbsorbingProcess:
    """Masked diffusion: each token becomes ``mask_id`` with probability 1 − α(t).

    Args:
        vocab_size: K, the number of data tokens (ids 0..K−1).
        mask_id: the absorbing token's id (usually K).
    """

    vocab_size: int
    mask_id: int

    def __post_init__(self) -> None:
        if self.vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {self.vocab_size}")
        if 0 <= self.mask_id < self.vocab_size:
            raise ValueError(f"mask_id {self.mask_id} collides with a data token (ids 0..{self.vocab_size - 1})")

    kind = "absorbing"

    def sample(self, x0: torch.Tensor, alpha: torch.Tensor, *, generator: Generator = None, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x_t ~ q(x_t | x_0) for (B, L) tokens; ``alpha`` broadcastable to (B, L).

        ``keep`` (B, L) bool marks positions never noised (a prompt: LLaDA SFT).
        """
        kept = _keep_mask(x0, alpha, generator)
        if keep is not None:
            kept = kept | keep
        return torch.where(kept, x0, torch.full_like(x0, self.mask_id))

    def marginal(self, x0: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """q(x_t | x_0) as probabilities (B, L, K + 1) over data ids and the mask (last column is mask)."""
        n = max(self.vocab_size, self.mask_id) + 1
        probs = torch.zeros(*x0.shape, n, dtype=torch.float64, device=x0.device)
        a = alpha.to(torch.float64).expand(x0.shape)
        probs.scatter_(-1, x0.unsqueeze(-1), a.unsqueeze(-1))
        probs[..., self.mask_id] += 1.0 - a
        return probs


@dataclass(frozen=True)
class UniformProcess:
    """Uniform noise: with probability 1 − α(t) a token is redrawn uniformly from the K data tokens."""

    vocab_size: int

    def __post_init__(self) -> None:
        if self.vocab_size < 2:
            raise ValueError(f"uniform noise needs vocab_size >= 2, got {self.vocab_size}")

    kind = "uniform"
    mask_id = None

    def sample(self, x0: torch.Tensor, alpha: torch.Tensor, *, generator: Generator = None, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        kept = _keep_mask(x0, alpha, generator)
        if keep is not None:
            kept = kept | keep
        u = rand(x0.shape, generator=generator, dtype=torch.float64, device=x0.device)
        noise = (u * self.vocab_size).long().clamp_max(self.vocab_size - 1)
        return torch.where(kept, x0, noise)

    def marginal(self, x0: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """q(x_t | x_0) as probabilities (B, L, K)."""
        a = alpha.to(torch.float64).expand(x0.shape).unsqueeze(-1)
        probs = (1.0 - a) / self.vocab_size * torch.ones(*x0.shape, self.vocab_size, dtype=torch.float64, device=x0.device)
        return probs.scatter_add(-1, x0.unsqueeze(-1), a)


def get_token_process(kind: str, vocab_size: int, mask_id: Optional[int] = None):
    """``absorbing`` (needs ``mask_id``) or ``uniform``."""
    if kind == "absorbing":
        if mask_id is None:
            raise ValueError("the absorbing process needs an explicit mask_id (the tokenizer's mask token)")
        return AbsorbingProcess(vocab_size, mask_id)
    if kind == "uniform":
        return UniformProcess(vocab_size)
    raise ValueError(f"unknown token process {kind!r}; choose 'absorbing' or 'uniform'")
